"""Every token delivered is paid for: the ways around the meter an adversarial client (or a
backend of another dialect) found, each closed and tried through the running gateway, on
SQLite and on PostgreSQL where storage is involved.

The route prices a token at 0.001 credit (input and output), so costs read as token counts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from e2e.helpers import HELLO, HELLO_TOKENS, POSTGRES_URL, parse_sse
from gateway_proc import ADMIN_TOKEN, D, GatewayFactory, GatewayProcess
from upstream import UpstreamServer, answer_text

pytestmark = pytest.mark.e2e

ROUTE: dict[str, Any] = {
    "model": "m",
    "backend": "a",
    "input_price": "1000",
    "output_price": "1000",
    "tokenizer": "o200k_base",
}
TOKEN = D("0.001")

Start = Callable[..., tuple[GatewayProcess, UpstreamServer]]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The ``[storage]`` of a gateway on this engine (PostgreSQL: a schema of the test's own,
    dropped after the gateway stopped)."""
    if request.param == "sqlite":
        return {}
    schema: str = request.getfixturevalue("pg_schema")
    return {"url": POSTGRES_URL, "schema": schema}


@pytest.fixture
def start(
    engine: dict[str, Any],
    gateway_factory: GatewayFactory,
    upstream_factory: Callable[[str], UpstreamServer],
) -> Start:
    """``start(storage={...}, **sections) -> (gateway, upstream)``: a gateway of the test's own
    on the engine, serving model ``m`` from a scripted upstream."""

    def make(
        storage: dict[str, Any] | None = None,
        backend: dict[str, Any] | None = None,
        **sections: Any,
    ) -> tuple[GatewayProcess, UpstreamServer]:
        upstream = upstream_factory("a")
        gateway = gateway_factory(
            backends=[{"name": "a", "base_url": upstream.url, **(backend or {})}],
            routes=[ROUTE],
            storage={**engine, **(storage or {})},
            **sections,
        )
        return gateway, upstream

    return make


def _client(gateway: GatewayProcess, secret: str = ADMIN_TOKEN) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=gateway.url,
        headers={"Authorization": f"Bearer {secret}"},
        timeout=60.0,
        trust_env=False,
    )


def _account(gateway: GatewayProcess, balance: str = "10", **key: object) -> tuple[str, str]:
    """A wallet with ``balance`` and a key on it: (wallet id, secret)."""
    with gateway.admin() as admin:
        wallet_id = admin.make_wallet(balance)
        _key_id, secret = admin.make_key(wallet_id, **key)
    return wallet_id, secret


# -- 1. a stream outlives its lease ------------------------------------------------------------
async def test_a_stream_longer_than_its_lease_is_charged(start: Start) -> None:
    # The reservation covers the stream's whole bound, so it is never extended; the stream
    # lasts three leases. The instance serving it keeps its lease: nothing releases it, and
    # the settlement finds it and charges.
    gateway, _upstream = start(storage={"reservation_lease_s": 1.5, "sweep_interval_s": 1})
    wallet_id, secret = _account(gateway)
    words = 10
    async with _client(gateway, secret) as client:
        response = await client.post(
            "/v1/chat/completions",
            json={
                "model": "m",
                "messages": HELLO,
                "stream": True,
                "max_tokens": words,
                "script": {"words": words, "chunk_delay_s": 0.5, "usage": False},
            },
        )
        assert response.status_code == 200, response.text
        events = parse_sse(response.text)
        request_id = response.headers["x-request-id"]
    assert events[-1] == "[DONE]"
    with gateway.admin() as admin:
        record = admin.usage_record(request_id)
        assert (record["status"], record["completion_tokens"]) == ("ok", words), record
        assert D(record["cost"]) == (HELLO_TOKENS + words) * TOKEN, record
        assert D(record["shortfall"]) == 0, record
        admin.assert_books_balance(wallet_id)
    assert "expired_reservations_released" not in gateway.output()
    assert answer_text(words)  # the scripted words are one token each


# -- one gateway on SQLite for the cases that storage does not decide -----------------------------
@pytest.fixture(scope="module")
def relay(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[GatewayProcess, UpstreamServer]]:
    """A gateway serving ``m`` (chat, completions, Responses translated to chat) from one
    scripted upstream that ignores every bound unless a script says otherwise."""
    factory = GatewayFactory(tmp_path_factory.mktemp("paid-for"))
    with UpstreamServer("a") as upstream:
        try:
            yield (
                factory(backends=[{"name": "a", "base_url": upstream.url}], routes=[ROUTE]),
                upstream,
            )
        finally:
            factory.close()


@pytest.fixture
def served(relay: tuple[GatewayProcess, UpstreamServer]) -> tuple[GatewayProcess, UpstreamServer]:
    relay[1].reset()
    return relay


async def _post(
    gateway: GatewayProcess, secret: str, path: str, body: dict[str, Any]
) -> httpx.Response:
    async with _client(gateway, secret) as client:
        return await client.post(path, json=body)


def _record(gateway: GatewayProcess, response: httpx.Response) -> dict[str, Any]:
    with gateway.admin() as admin:
        return admin.usage_record(response.headers["x-request-id"])


def _books(gateway: GatewayProcess, wallet_id: str) -> dict[str, Any]:
    with gateway.admin() as admin:
        return admin.assert_books_balance(wallet_id)


# -- 2. every request goes upstream bounded; what is not paid is not delivered --------------------
async def test_a_plain_answer_past_what_the_wallet_pays_is_cut(
    served: tuple[GatewayProcess, UpstreamServer],
) -> None:
    # No max_tokens; the wallet pays for the prompt (8 tokens) and 92 more; the backend ignores
    # the bound it is sent and writes 20,000 words.
    gateway, upstream = served
    wallet_id, secret = _account(gateway, "0.1")
    response = await _post(
        gateway,
        secret,
        "/v1/chat/completions",
        {"model": "m", "messages": HELLO, "script": {"words": 20_000, "usage": False}},
    )
    assert response.status_code == 200, response.text
    assert upstream.last.body["max_tokens"] == 92, "the bound the reservation pays for"
    answer = response.json()
    [choice] = answer["choices"]
    assert choice["finish_reason"] == "length"
    assert choice["message"]["content"] == answer_text(92)
    assert answer["usage"]["completion_tokens"] == 92
    record = _record(gateway, response)
    assert (record["completion_tokens"], D(record["cost"]), D(record["shortfall"])) == (
        92,
        D("0.1"),
        0,
    )
    assert D(_books(gateway, wallet_id)["balance"]) == 0


async def test_a_stream_past_what_the_wallet_pays_is_cut_off(
    served: tuple[GatewayProcess, UpstreamServer],
) -> None:
    gateway, upstream = served
    wallet_id, secret = _account(gateway, "0.1")
    response = await _post(
        gateway,
        secret,
        "/v1/chat/completions",
        {"model": "m", "messages": HELLO, "stream": True, "script": {"words": 20_000}},
    )
    assert upstream.last.body["max_tokens"] == 92
    events = parse_sse(response.text)
    text = "".join(
        (e["choices"][0]["delta"].get("content") or "")
        for e in events
        if isinstance(e, dict) and e.get("choices")
    )
    assert events[-1]["error"]["type"] == "insufficient_quota"
    assert text == answer_text(92)
    record = _record(gateway, response)
    assert (record["status"], record["completion_tokens"], D(record["shortfall"])) == (
        "cut_off",
        92,
        0,
    )
    assert D(_books(gateway, wallet_id)["balance"]) == 0


async def test_every_bound_field_the_client_sent_is_lowered(
    served: tuple[GatewayProcess, UpstreamServer],
) -> None:
    # vLLM reads max_completion_tokens before max_tokens, llama.cpp n_predict before max_tokens:
    # whichever the backend reads, it is told what the reservation pays for.
    gateway, upstream = served
    _wallet_id, secret = _account(gateway, "0.1")  # pays for 92 completion tokens
    response = await _post(
        gateway,
        secret,
        "/v1/chat/completions",
        {
            "model": "m",
            "messages": HELLO,
            "max_tokens": 50,
            "max_completion_tokens": 10_000,
            "n_predict": -1,
            "max_new_tokens": 5_000,
            "min_tokens": 70,
            "script": {"words": 3},
        },
    )
    assert response.status_code == 200, response.text
    sent = upstream.last.body
    assert (sent["max_tokens"], sent["max_completion_tokens"]) == (50, 50)
    assert (sent["n_predict"], sent["max_new_tokens"], sent["min_tokens"]) == (50, 50, 50)
    # nothing to lower: left as sent, and the bound the backend reads set when none was
    response = await _post(
        gateway,
        secret,
        "/v1/chat/completions",
        {"model": "m", "messages": HELLO, "n_predict": 7, "script": {"words": 3}},
    )
    assert (upstream.last.body["n_predict"], upstream.last.body["max_tokens"]) == (7, 7)
    assert "max_completion_tokens" not in upstream.last.body  # some servers refuse two


# -- 3. reasoning in any field the backend uses is metered ----------------------------------------
@pytest.mark.parametrize("field", ["reasoning", "reasoning_content"])
@pytest.mark.parametrize("stream", [False, True])
async def test_reasoning_is_metered_in_vllms_field_and_the_older_one(
    served: tuple[GatewayProcess, UpstreamServer], field: str, stream: bool
) -> None:
    gateway, _upstream = served
    wallet_id, secret = _account(gateway, "1")
    body = {
        "model": "m",
        "messages": HELLO,
        "stream": stream,
        "max_tokens": 10,  # ignored by the backend: it reasons 300 words, then answers 5
        "script": {"words": 5, "reasoning": {"words": 300, "field": field}, "usage": False},
    }
    response = await _post(gateway, secret, "/v1/chat/completions", body)
    assert response.status_code == 200, response.text
    record = _record(gateway, response)
    # what was relayed is charged: the reservation grew from the wallet to pay for it
    assert record["completion_tokens"] == 305, record
    assert D(record["cost"]) == (HELLO_TOKENS + 305) * TOKEN
    _books(gateway, wallet_id)


async def test_a_reasoning_stream_the_wallet_cannot_pay_is_cut_off_in_its_reasoning(
    served: tuple[GatewayProcess, UpstreamServer],
) -> None:
    gateway, _upstream = served
    wallet_id, secret = _account(gateway, "0.1")
    body = {
        "model": "m",
        "messages": HELLO,
        "stream": True,
        "script": {"words": 5, "reasoning": {"words": 20_000}, "usage": False},
    }
    response = await _post(gateway, secret, "/v1/chat/completions", body)
    events = parse_sse(response.text)
    reasoned = sum(
        1
        for e in events
        if isinstance(e, dict) and e.get("choices") and "reasoning" in e["choices"][0]["delta"]
    )
    assert reasoned == 92
    assert events[-1]["error"]["type"] == "insufficient_quota"
    assert D(_books(gateway, wallet_id)["balance"]) == 0


async def test_hidden_reasoning_is_charged_as_the_backend_reports_it(
    served: tuple[GatewayProcess, UpstreamServer],
) -> None:
    gateway, upstream = served
    _wallet_id, secret = _account(gateway, "100")
    body = {
        "model": "m",
        "messages": HELLO,
        "max_completion_tokens": 25_000,
        "script": {"words": 5, "reasoning": {"words": 20_000, "field": None}},
    }
    response = await _post(gateway, secret, "/v1/chat/completions", body)
    assert response.json()["choices"][0]["message"]["content"] == answer_text(5)
    assert _record(gateway, response)["completion_tokens"] == 20_005
    assert upstream.last.body["max_completion_tokens"] == 25_000
    # a backend reporting past the bound it was sent is believed only as far as it was paid
    body["max_completion_tokens"] = 1_000
    response = await _post(gateway, secret, "/v1/chat/completions", body)
    assert _record(gateway, response)["completion_tokens"] == 1_000


# -- 4. best_of candidates, and several prompts, are reserved and charged -----------------------
async def test_best_of_candidates_are_reserved_for_and_charged(
    served: tuple[GatewayProcess, UpstreamServer],
) -> None:
    gateway, upstream = served
    _wallet_id, secret = _account(gateway, "1")
    body = {
        "model": "m",
        "prompt": "hello",
        "max_tokens": 10,
        "best_of": 3,
        # the backend generates three candidates of 10 tokens and bills them all
        "script": {"words": 10, "completion_tokens": 30, "ignore_max_tokens": False},
    }
    response = await _post(gateway, secret, "/v1/completions", body)
    assert response.status_code == 200, response.text
    assert (upstream.last.body["max_tokens"], upstream.last.body["best_of"]) == (10, 3)
    assert _record(gateway, response)["completion_tokens"] == 30
    refused = await _post(gateway, secret, "/v1/completions", {**body, "n": 4})
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "best_of"


async def test_each_prompt_of_a_completions_request_is_reserved_for(
    served: tuple[GatewayProcess, UpstreamServer],
) -> None:
    gateway, upstream = served
    _wallet_id, secret = _account(gateway, "0.05")  # pays for 50 tokens in all
    body = {"model": "m", "prompt": ["a", "b"], "script": {"words": 3}}
    response = await _post(gateway, secret, "/v1/completions", body)
    assert response.status_code == 200, response.text
    # two prompts (1 token each): what is left pays for 24 tokens each
    assert upstream.last.body["max_tokens"] == 24


# -- 5. a key's spend limit bounds the request, not only its admission --------------------------
@pytest.mark.parametrize("stream", [False, True])
async def test_a_keys_spend_limit_is_never_passed_within_a_request(
    start: Start, stream: bool
) -> None:
    gateway, _upstream = start()
    wallet_id, secret = _account(gateway, "100", spend_limit="5")
    body = {"model": "m", "messages": HELLO, "stream": stream, "script": {"words": 20_000}}
    spent = D("0")
    for _ in range(3):  # the first two spend the limit (capped each), the third is refused
        response = await _post(gateway, secret, "/v1/chat/completions", body)
        if response.status_code == 403:
            break
        assert response.status_code == 200, response.text
        spent += D(_record(gateway, response)["cost"])
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "spend_limit_reached"
    assert spent == D("5")
    with gateway.admin() as admin:
        [key] = admin.http.get("/admin/keys").json()["data"]
        assert D(key["spent"]) == 5
        assert D(admin.assert_books_balance(wallet_id)["balance"]) == 95


# -- 10. a Responses request translated to chat answers with one output --------------------------
async def test_a_translated_responses_request_refuses_several_choices(
    served: tuple[GatewayProcess, UpstreamServer],
) -> None:
    gateway, upstream = served
    _wallet_id, secret = _account(gateway, "1")
    response = await _post(
        gateway, secret, "/v1/responses", {"model": "m", "input": "hello", "n": 3}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "n"
    assert not upstream.requests
    # a bound field meant for chat that rides along is lowered too
    response = await _post(
        gateway,
        secret,
        "/v1/responses",
        {"model": "m", "input": "hello", "max_output_tokens": 20, "max_completion_tokens": 9000},
    )
    assert response.status_code == 200, response.text
    assert upstream.last.body["max_completion_tokens"] == 20
