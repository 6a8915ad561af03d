"""Every error status of the contract, in OpenAI's shape ``{"error": {"message", "type",
"param", "code"}}`` with its type and code, an ``x-request-id``, and nothing charged."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest

from e2e.helpers import HELLO, assert_error, eventually
from gateway_proc import Admin, D, GatewayProcess
from upstream import UpstreamServer

pytestmark = pytest.mark.e2e

MakeKey = Callable[..., tuple[str, str, str]]
CHAT = {"model": "gpt-4o-mini", "messages": HELLO}


class Caller:
    """A fresh wallet with 10 credits and a key on it, and a raw client for the gateway."""

    def __init__(self, http: httpx.AsyncClient, admin: Admin, wallet_id: str, secret: str):
        self.http, self.admin, self.wallet_id, self.secret = http, admin, wallet_id, secret
        self.auth = {"Authorization": f"Bearer {secret}"}

    async def post(self, path: str = "/v1/chat/completions", **kwargs: Any) -> httpx.Response:
        headers = {**self.auth, **kwargs.pop("headers", {})}
        return await self.http.post(path, headers=headers, **kwargs)

    def assert_nothing_charged(self) -> None:
        wallet = self.admin.assert_books_balance(self.wallet_id)
        assert D(wallet["balance"]) == Decimal(10), wallet
        assert all(D(u["cost"]) == 0 for u in self.admin.usage(wallet_id=self.wallet_id))


@pytest.fixture
def caller(http: httpx.AsyncClient, admin_api: Admin, wallet_and_key: MakeKey) -> Caller:
    wallet_id, _key, secret = wallet_and_key("10")
    return Caller(http, admin_api, wallet_id, secret)


# -- 400 ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "content",
    [
        b'{"model": "gpt-4o-mini", "messages": [',  # malformed JSON
        b"not json at all",
        b"[1, 2, 3]",  # JSON, but not an object
        b'{"messages": [{"role": "user", "content": "hello"}]}',  # no model
        b'{"model": "gpt-4o-mini", "messages": "hello"}',  # messages not a list
        b'{"model": "gpt-4o-mini"}',  # no messages
        b'{"model": 42, "messages": []}',  # model not a string
        b'{"model": "gpt-4o-mini", "messages": [], "max_tokens": "ten"}',
        b'{"model": "gpt-4o-mini", "messages": [], "max_tokens": -1}',
        b'{"model": "gpt-4o-mini", "messages": [], "stream": "yes"}',
    ],
    ids=[
        "malformed",
        "not-json",
        "array",
        "no-model",
        "messages-string",
        "no-messages",
        "model-number",
        "max-tokens-string",
        "max-tokens-negative",
        "stream-string",
    ],
)
async def test_400_for_bad_bodies(caller: Caller, upstream: UpstreamServer, content: bytes) -> None:
    response = await caller.post(content=content, headers={"Content-Type": "application/json"})
    assert_error(response, 400, "invalid_request_error")
    assert upstream.requests == []
    caller.assert_nothing_charged()


async def test_400_for_bad_bodies_on_the_other_endpoints(
    caller: Caller, upstream: UpstreamServer
) -> None:
    for path in ("/v1/completions", "/v1/embeddings"):
        response = await caller.post(path, content=b"{oops")
        assert_error(response, 400, "invalid_request_error")
        response = await caller.post(path, json={"prompt": "x", "input": "x"})  # no model
        assert_error(response, 400, "invalid_request_error")
    assert upstream.requests == []


# -- 401 ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer sk-not-a-key"},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer test-admin-token"},  # the admin token is not an app key
    ],
    ids=["missing", "unknown", "empty", "basic", "admin-token"],
)
async def test_401_without_a_valid_key(
    http: httpx.AsyncClient, upstream: UpstreamServer, headers: dict[str, str]
) -> None:
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
        response = await http.post(path, json=CHAT, headers=headers)
        assert_error(response, 401, "invalid_request_error", "invalid_api_key")
    for path in ("/v1/models", "/v1/models/gpt-4o-mini", "/v1/wallet"):
        response = await http.get(path, headers=headers)
        assert_error(response, 401, "invalid_request_error", "invalid_api_key")
    assert upstream.requests == []


# -- 402 ---------------------------------------------------------------------------------------
async def test_402_when_the_wallet_cannot_pay(
    http: httpx.AsyncClient, upstream: UpstreamServer, wallet_and_key: MakeKey
) -> None:
    _wallet, _key, secret = wallet_and_key("0.000001")
    for path, body in (
        ("/v1/chat/completions", {**CHAT, "model": "costly"}),
        ("/v1/chat/completions", {**CHAT, "model": "costly", "stream": True}),
        ("/v1/completions", {"model": "costly", "prompt": "hello"}),
        ("/v1/embeddings", {"model": "costly", "input": "hello"}),
    ):
        response = await http.post(path, json=body, headers={"Authorization": f"Bearer {secret}"})
        assert_error(response, 402, "insufficient_quota", "insufficient_quota")
    assert upstream.requests == []


# -- 403 ---------------------------------------------------------------------------------------
async def test_403_for_a_model_the_key_may_not_use(
    http: httpx.AsyncClient, admin_api: Admin, upstream: UpstreamServer
) -> None:
    wallet_id = admin_api.make_wallet("10")
    _key, secret = admin_api.make_key(wallet_id, models=["gpt-4o"])
    response = await http.post(
        "/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {secret}"}
    )
    assert_error(response, 403, "permission_error")
    assert upstream.requests == []
    assert D(admin_api.assert_books_balance(wallet_id)["balance"]) == 10


# -- 404 ---------------------------------------------------------------------------------------
async def test_404_for_an_unknown_model(caller: Caller, upstream: UpstreamServer) -> None:
    for path, body in (
        ("/v1/chat/completions", {**CHAT, "model": "no-such-model"}),
        ("/v1/chat/completions", {**CHAT, "model": "no-such-model", "stream": True}),
        ("/v1/completions", {"model": "no-such-model", "prompt": "hello"}),
        ("/v1/embeddings", {"model": "no-such-model", "input": "hello"}),
    ):
        response = await caller.post(path, json=body)
        assert_error(response, 404, "invalid_request_error", "model_not_found")
    response = await caller.http.get("/v1/models/no-such-model", headers=caller.auth)
    assert_error(response, 404, "invalid_request_error", "model_not_found")
    assert upstream.requests == []
    caller.assert_nothing_charged()


# -- 405 ---------------------------------------------------------------------------------------
async def test_405_for_another_method_on_a_metered_endpoint(
    caller: Caller, upstream: UpstreamServer
) -> None:
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"):
        response = await caller.http.get(path, headers=caller.auth)
        assert_error(response, 405, "invalid_request_error")
        assert response.headers["allow"] == "POST"
    # a trailing slash is the same endpoint
    response = await caller.post("/v1/chat/completions/", json=CHAT)
    assert response.status_code == 200, response.text
    assert len(upstream.requests) == 1


async def test_a_client_that_leaves_mid_body_is_no_error(
    gateway: GatewayProcess, caller: Caller, upstream: UpstreamServer
) -> None:
    mark = gateway.output_mark()  # the shared gateway's log holds every earlier test's lines
    host, port = gateway.url.removeprefix("http://").split(":")
    _reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {caller.secret}\r\nContent-Length: 1000\r\n\r\n".encode()
        + b'{"model": "gpt-4o-mini", "mess'
    )
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.close()
    await writer.wait_closed()
    response = await caller.post(json=CHAT)  # still serving
    assert response.status_code == 200, response.text
    # the next request's log line is out: so is anything the client that left made it log
    logged = await eventually(
        lambda: gateway.output_since(mark),
        lambda out: response.headers["x-request-id"] in out,
        what="the next request's log line",
    )
    assert '"request_completed"' in logged, logged
    assert "internal_error" not in logged, logged
    assert len(upstream.requests) == 1


# -- 413 ---------------------------------------------------------------------------------------
async def test_413_for_a_body_over_max_body_bytes(
    gateway: GatewayProcess, caller: Caller, upstream: UpstreamServer
) -> None:
    limit = int(gateway.config["server"]["max_body_bytes"])
    big = "hello " * (limit // 6 + 100)
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": big}]}
    response = await caller.post(json=body)
    assert_error(response, 413, "invalid_request_error")

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "'
        for _ in range(limit // 1024 + 8):
            yield b"x" * 1024
        yield b'"}]}'

    response = await caller.post(content=chunked(), headers={"Content-Type": "application/json"})
    assert_error(response, 413, "invalid_request_error")
    assert upstream.requests == []
    caller.assert_nothing_charged()


async def test_a_body_just_under_the_limit_is_served(
    gateway: GatewayProcess, caller: Caller, upstream: UpstreamServer
) -> None:
    text = "x" * (int(gateway.config["server"]["max_body_bytes"]) - 200)
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}
    response = await caller.post(json=body)
    assert response.status_code == 200, response.text


# -- 429 ---------------------------------------------------------------------------------------
async def test_429_for_the_keys_rate_limit(
    http: httpx.AsyncClient, admin_api: Admin, upstream: UpstreamServer
) -> None:
    wallet_id = admin_api.make_wallet("10")
    _key, secret = admin_api.make_key(wallet_id, rpm=1)
    auth = {"Authorization": f"Bearer {secret}"}
    assert (await http.post("/v1/chat/completions", json=CHAT, headers=auth)).status_code == 200
    response = await http.post("/v1/chat/completions", json=CHAT, headers=auth)
    assert_error(response, 429, "rate_limit_error", "rate_limit_exceeded")
    assert int(response.headers["Retry-After"]) >= 1
    assert len(upstream.requests) == 1


# -- 502 / 504 ---------------------------------------------------------------------------------
async def test_502_when_every_route_failed(caller: Caller, upstream: UpstreamServer) -> None:
    failing = {**CHAT, "script": {"status": 500}}
    for body in (failing, {**failing, "stream": True}):
        assert_error(await caller.post(json=body), 502, "api_error")
    assert len(upstream.requests) == 2
    for body in ({**CHAT, "model": "dead-model"}, {**CHAT, "model": "dead-model", "stream": True}):
        assert_error(await caller.post(json=body), 502, "api_error")
    caller.assert_nothing_charged()


async def test_504_when_every_route_timed_out(caller: Caller, upstream: UpstreamServer) -> None:
    slow = {**CHAT, "model": "slow-model", "script": {"delay_s": 3}}  # timeout_s is 1
    for body in (slow, {**slow, "stream": True}):
        assert_error(await caller.post(json=body), 504, "api_error")
    caller.assert_nothing_charged()


async def test_the_openai_sdk_reads_the_errors(
    openai_client: Callable[..., Any], caller: Caller, upstream: UpstreamServer
) -> None:
    client = openai_client(caller.secret)
    with pytest.raises(openai.NotFoundError) as not_found:
        await client.chat.completions.create(model="no-such-model", messages=HELLO)
    assert not_found.value.code == "model_not_found"
    assert not_found.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as bad:
        await client.chat.completions.create(model="gpt-4o-mini", messages="hello")
    assert bad.value.type == "invalid_request_error"
    assert bad.value.response.headers.get("x-request-id")
