"""What reaches the upstream, and what comes back: the body goes up unchanged except ``model``,
the bound on generated tokens and ``stream_options``; the client's key never leaves the gateway;
hop-by-hop headers are dropped; answers are relayed as the upstream sent them."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from e2e.helpers import HELLO, HELLO_TOKENS, parse_sse, read_sse
from gateway_proc import Admin, D, GatewayFactory
from upstream import UpstreamServer

pytestmark = pytest.mark.e2e

MakeKey = Callable[..., tuple[str, str, str]]
REWRITTEN = {"model", "max_tokens", "max_completion_tokens", "stream_options"}


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def unchanged_part(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in REWRITTEN}


def generation_bound(body: dict[str, Any]) -> int:
    bounds = [body[k] for k in ("max_tokens", "max_completion_tokens") if k in body]
    assert bounds, f"the upstream got no bound on generated tokens: {body}"
    assert all(isinstance(b, int) for b in bounds), body
    return min(bounds)


async def test_body_fields_reach_the_upstream_unchanged(
    http: httpx.AsyncClient, upstream: UpstreamServer, wallet_and_key: MakeKey
) -> None:
    _wallet, _key, secret = wallet_and_key("10")
    body = {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Answer in JSON."},
            {"role": "user", "content": [{"type": "text", "text": "hello"}]},
        ],
        "temperature": 0.25,
        "top_p": 0.5,
        "seed": 7,
        "n": 1,
        "stop": ["\n\n"],
        "presence_penalty": 0.1,
        "frequency_penalty": -0.1,
        "logit_bias": {"15339": -100},
        "logprobs": True,
        "top_logprobs": 2,
        "user": "end-user-42",
        "response_format": {"type": "json_object"},
        "parallel_tool_calls": False,
        "metadata": {"team": "search"},
        "future_field": {"nested": [1, "two", None, {"three": 3.5}]},
        "script": {"words": 2},
    }
    response = await http.post("/v1/chat/completions", json=body, headers=bearer(secret))
    assert response.status_code == 200, response.text

    sent = upstream.last.body
    assert sent["model"] == "up-model", "model is rewritten to the route's upstream_model"
    assert unchanged_part(sent) == unchanged_part(body)


async def test_streams_get_include_usage_whatever_the_client_said(
    http: httpx.AsyncClient, upstream: UpstreamServer, wallet_and_key: MakeKey
) -> None:
    _wallet, _key, secret = wallet_and_key("10")
    for options in (None, {"include_usage": False}, {"include_usage": True}):
        body: dict[str, Any] = {"model": "gpt-4o-mini", "messages": HELLO, "stream": True}
        if options is not None:
            body["stream_options"] = options
        async with http.stream(
            "POST", "/v1/chat/completions", json=body, headers=bearer(secret)
        ) as response:
            assert response.status_code == 200
            events = await read_sse(response)
        assert upstream.last.body["stream_options"]["include_usage"] is True
        assert upstream.last.body["stream"] is True
        usage_events = [e for e in events if isinstance(e, dict) and e.get("usage")]
        assert len(usage_events) == (1 if options == {"include_usage": True} else 0), events
        assert events[-1] == "[DONE]"


async def test_the_upstream_sees_the_backend_key_and_no_hop_by_hop_headers(
    http: httpx.AsyncClient, upstream: UpstreamServer, wallet_and_key: MakeKey
) -> None:
    _wallet, _key, secret = wallet_and_key("10")
    headers = {
        **bearer(secret),
        "Connection": "keep-alive, X-Hop",
        "X-Hop": "only-for-the-next-hop",
        "Keep-Alive": "timeout=5",
        "Proxy-Authorization": "Basic c2VjcmV0OnNlY3JldA==",
        "TE": "trailers",
        "Trailer": "X-Checksum",
    }
    response = await http.post(
        "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": HELLO},
        headers=headers,
    )
    assert response.status_code == 200, response.text

    received = upstream.last.headers
    assert received["Authorization"] == "Bearer sk-upstream-a"
    for name in ("Keep-Alive", "Proxy-Authorization", "TE", "Trailer", "X-Hop"):
        assert name not in received, f"hop-by-hop header {name} reached the upstream"
    everything = json.dumps(list(received.items())) + upstream.last.raw.decode()
    assert secret not in everything, "the client's key reached the upstream"


async def test_the_generation_bound_is_what_the_wallet_can_pay(
    admin_api: Admin,
    http: httpx.AsyncClient,
    upstream: UpstreamServer,
    wallet_and_key: MakeKey,
) -> None:
    """On "costly" one token costs 0.001 credit: 0.05 credit pays for 50 tokens, of which the
    prompt takes 8, so the upstream may generate at most 42 whatever the client asked."""
    affordable = 50 - HELLO_TOKENS
    script = {"words": 100, "ignore_max_tokens": False, "prompt_tokens": HELLO_TOKENS}
    for asked in ({"max_tokens": 1000}, {"max_completion_tokens": 1000}, {}):
        wallet_id, _key, secret = wallet_and_key("0.05")
        body = {"model": "costly", "messages": HELLO, "script": script, **asked}
        response = await http.post("/v1/chat/completions", json=body, headers=bearer(secret))
        assert response.status_code == 200, response.text

        bound = generation_bound(upstream.last.body)
        assert 1 <= bound <= affordable, (asked, upstream.last.body)
        answer = response.json()
        assert answer["choices"][0]["finish_reason"] == "length"
        assert admin_api.balance(wallet_id) == D("0.05") - D("0.001") * (HELLO_TOKENS + bound)
        admin_api.assert_books_balance(wallet_id)


async def test_a_smaller_client_bound_is_kept(
    http: httpx.AsyncClient, upstream: UpstreamServer, wallet_and_key: MakeKey
) -> None:
    _wallet, _key, secret = wallet_and_key("10")
    for field in ("max_tokens", "max_completion_tokens"):
        body = {"model": "gpt-4o-mini", "messages": HELLO, field: 3}
        response = await http.post("/v1/chat/completions", json=body, headers=bearer(secret))
        assert response.status_code == 200, response.text
        assert upstream.last.body[field] == 3
        assert generation_bound(upstream.last.body) == 3


def _normalised(payload: Any) -> Any:
    if isinstance(payload, dict):
        return {k: v for k, v in payload.items() if k not in ("id", "created")}
    return payload


async def test_answers_are_relayed_as_the_upstream_sent_them(
    http: httpx.AsyncClient, upstream: UpstreamServer, wallet_and_key: MakeKey
) -> None:
    """The same request straight to the upstream and through the gateway: the same answer
    (apart from the upstream's fresh id and timestamp), event by event for streams."""
    _wallet, _key, secret = wallet_and_key("10")
    script = {"words": 6, "prompt_tokens": 11}
    direct_body = {"model": "up-model", "messages": HELLO, "script": script}
    via_body = {"model": "gpt-4o-mini", "messages": HELLO, "script": script}
    async with httpx.AsyncClient(base_url=upstream.url, trust_env=False) as direct:
        expected = (await direct.post("/chat/completions", json=direct_body)).json()
        response = await http.post("/v1/chat/completions", json=via_body, headers=bearer(secret))
        assert _normalised(response.json()) == _normalised(expected)
        assert response.json()["id"].startswith("chatcmpl-a-")

        stream = {"stream": True, "stream_options": {"include_usage": True}}
        expected_events = parse_sse(
            (await direct.post("/chat/completions", json={**direct_body, **stream})).text
        )
    async with http.stream(
        "POST", "/v1/chat/completions", json={**via_body, **stream}, headers=bearer(secret)
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = await read_sse(response)
    assert [_normalised(e) for e in events] == [_normalised(e) for e in expected_events]


async def test_every_client_response_carries_a_request_id(
    http: httpx.AsyncClient, upstream: UpstreamServer, wallet_and_key: MakeKey
) -> None:
    _wallet, _key, secret = wallet_and_key("10")
    auth = bearer(secret)
    chat = {"model": "gpt-4o-mini", "messages": HELLO}
    responses = [
        await http.post("/v1/chat/completions", json=chat, headers=auth),
        await http.post("/v1/chat/completions", json={**chat, "stream": True}, headers=auth),
        await http.post(
            "/v1/completions", json={"model": "gpt-4o-mini", "prompt": "hi"}, headers=auth
        ),
        await http.post(
            "/v1/embeddings", json={"model": "gpt-4o-mini", "input": "hi"}, headers=auth
        ),
        await http.get("/v1/models", headers=auth),
        await http.get("/v1/models/gpt-4o-mini", headers=auth),
        await http.get("/v1/wallet", headers=auth),
        await http.post("/v1/chat/completions", json=chat),  # 401
        await http.post("/v1/chat/completions", json={**chat, "model": "nope"}, headers=auth),
        await http.post("/v1/chat/completions", content=b"{oops", headers=auth),  # 400
    ]
    ids = [r.headers.get("x-request-id") for r in responses]
    missing = [
        (r.request.url.path, r.status_code) for r in responses if not r.headers.get("x-request-id")
    ]
    assert not missing, f"responses without x-request-id: {missing}"
    assert len(set(ids)) == len(ids), "request ids are unique"


async def test_a_cookie_a_backend_sets_is_neither_relayed_nor_sent_back(
    gateway_factory: GatewayFactory, upstream_factory: Callable[[str], UpstreamServer]
) -> None:
    """One app's answer carries a backend's cookie; the next request, another app's, must not
    take it to the backend. (The backend by host name: aiohttp's own cookie jar ignores IP
    addresses, so 127.0.0.1 would pass without the gateway's rule.)"""
    upstream = upstream_factory("a")
    upstream.set_cookie = "session=app-one; Path=/"
    gateway = gateway_factory(
        backends=[{"name": "a", "base_url": f"http://localhost:{upstream.port}/v1"}],
        routes=[{"model": "m", "backend": "a", "input_price": "1", "output_price": "1"}],
    )
    with gateway.admin() as admin:
        secrets = [admin.make_key(admin.make_wallet("10"))[1] for _ in range(2)]
    for secret in secrets:
        async with openai.AsyncOpenAI(
            base_url=f"{gateway.url}/v1", api_key=secret, max_retries=0
        ) as client:
            raw = await client.chat.completions.with_raw_response.create(
                model="m",
                messages=HELLO,  # type: ignore[arg-type]
                extra_body={"script": {"words": 2}},
            )
            assert "set-cookie" not in raw.headers
    assert [r.headers.get("Cookie") for r in upstream.requests_to("/chat/completions")] == [
        None,
        None,
    ]
