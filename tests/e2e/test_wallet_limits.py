"""Wallets cannot be overdrawn: whatever the concurrency, a stream that reaches what the wallet
can pay is cut off with an error event, and a client that goes away pays for what was generated
while the upstream request is closed at once.

The ``costly`` route prices a token at 0.001 credit, so small wallets run out in a few tokens.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest

from e2e.helpers import (
    HELLO,
    HELLO_TOKENS,
    assert_error,
    assert_error_event,
    chat,
    eventually,
    read_sse,
)
from gateway_proc import Admin, D, GatewayProcess
from upstream import UpstreamServer, answer_text

pytestmark = pytest.mark.e2e

MakeKey = Callable[..., tuple[str, str, str]]
Client = Callable[..., openai.AsyncOpenAI]
TOKEN = Decimal("0.001")  # the price of one token on "costly"


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def _refused(exc: openai.APIStatusError) -> str:
    """The outcome of a request the SDK raised an error status for."""
    if exc.status_code != 402:
        return f"status {exc.status_code}"
    assert_error(exc.response, 402, "insufficient_quota", "insufficient_quota")
    return "refused"


def _cut_off(exc: openai.APIError) -> str:
    """The outcome of a stream the SDK raised the error event of (else of a failure)."""
    if not isinstance(exc.body, dict):
        return f"failed: {exc!r}"
    assert_error_event({"error": exc.body}, "insufficient_quota", "insufficient_quota")
    return "cut off"


async def test_a_wallet_that_cannot_pay_gets_402(
    admin_api: Admin, upstream: UpstreamServer, wallet_and_key: MakeKey, openai_client: Client
) -> None:
    wallet_id, _key, secret = wallet_and_key(None)  # no opening balance
    client = openai_client(secret)
    with pytest.raises(openai.APIStatusError) as caught:
        await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)  # type: ignore[arg-type]
    assert_error(caught.value.response, 402, "insufficient_quota", "insufficient_quota")
    assert caught.value.type == "insufficient_quota"
    assert caught.value.code == "insufficient_quota"
    assert upstream.requests == [], "nothing reaches the upstream"

    admin_api.credit(wallet_id, "0.000005")  # 5 tokens on costly: not even the prompt
    with pytest.raises(openai.APIStatusError) as caught:
        await client.chat.completions.create(model="costly", messages=HELLO)  # type: ignore[arg-type]
    assert_error(caught.value.response, 402, "insufficient_quota", "insufficient_quota")
    assert upstream.requests == []
    assert D(admin_api.assert_books_balance(wallet_id)["balance"]) == Decimal("0.000005")


async def test_concurrent_requests_never_overdraw_and_the_ledger_adds_up(
    admin_api: Admin, upstream: UpstreamServer, wallet_and_key: MakeKey, openai_client: Client
) -> None:
    """60 requests at once, each able to cost 18 tokens (8 prompt + max_tokens 10) at 0.001:
    0.2 credit pays for 11 of them, so most must be refused or cut short, never overdrawn."""
    wallet_id, _key, secret = wallet_and_key("0.2")
    client = openai_client(secret)
    upstream.defaults = {
        "words": 10,
        "ignore_max_tokens": False,
        "prompt_tokens": HELLO_TOKENS,
        "delay_s": 0.05,
    }

    async def one(i: int) -> str:
        try:
            if i % 2:
                stream = await client.chat.completions.create(
                    model="costly",
                    messages=HELLO,  # type: ignore[arg-type]
                    max_tokens=10,
                    stream=True,
                )
                [chunk async for chunk in stream]
            else:
                await client.chat.completions.create(
                    model="costly",
                    messages=HELLO,  # type: ignore[arg-type]
                    max_tokens=10,
                )
        except openai.APIStatusError as exc:
            return _refused(exc)
        except openai.APIError as exc:
            return _cut_off(exc)
        return "ok"

    outcomes = await asyncio.gather(*(one(i) for i in range(60)))

    assert set(outcomes) <= {"ok", "refused", "cut off"}, outcomes
    assert "ok" in outcomes
    assert "refused" in outcomes
    wallet = admin_api.assert_books_balance(wallet_id)
    balance = D(wallet["balance"])
    assert balance >= 0
    usage = admin_api.usage(wallet_id=wallet_id)
    charged = sum((D(u["cost"]) for u in usage), Decimal(0))
    assert balance == Decimal("0.2") - charged
    assert all(D(u["shortfall"]) == 0 for u in usage), "every request was covered up front"
    assert sum(1 for u in usage if u["status"] == "ok") >= outcomes.count("ok")


async def test_concurrent_unbounded_streams_are_cut_off_never_overdrawn(
    admin_api: Admin, upstream: UpstreamServer, wallet_and_key: MakeKey, openai_client: Client
) -> None:
    """50 streams at once with no max_tokens on a wallet worth about four of them; the upstream
    ignores every bound and reports no usage, so the gateway counts and cuts off."""
    wallet_id, _key, secret = wallet_and_key("0.15")
    client = openai_client(secret)
    upstream.defaults = {"words": 30, "usage": False, "chunk_delay_s": 0.002}

    async def one() -> str:
        try:
            stream = await client.chat.completions.create(
                model="costly",
                messages=HELLO,  # type: ignore[arg-type]
                stream=True,
            )
            [chunk async for chunk in stream]
        except openai.APIStatusError as exc:
            return _refused(exc)
        except openai.APIError as exc:
            return _cut_off(exc)
        return "ok"

    outcomes = await asyncio.gather(*(one() for _ in range(50)))

    assert set(outcomes) <= {"ok", "refused", "cut off"}, outcomes
    wallet = admin_api.assert_books_balance(wallet_id)
    usage = admin_api.usage(wallet_id=wallet_id)
    charged = sum((D(u["cost"]) for u in usage), Decimal(0))
    assert D(wallet["balance"]) == Decimal("0.15") - charged >= 0
    assert all(D(u["shortfall"]) == 0 for u in usage), "the gateway's own count stays covered"
    assert [u["status"] for u in usage].count("cut_off") == outcomes.count("cut off"), usage
    for record in usage:  # each charge is exactly its tokens
        tokens = record["prompt_tokens"] + record["completion_tokens"]
        assert D(record["cost"]) == tokens * TOKEN, record


async def test_a_cost_over_what_the_wallet_had_is_recorded_as_shortfall(
    admin_api: Admin, upstream: UpstreamServer, wallet_and_key: MakeKey, openai_client: Client
) -> None:
    """The gateway estimates 8 prompt tokens; the upstream bills 100. The wallet (0.02 credit,
    20 tokens on costly) pays what it has; the rest is the usage record's shortfall."""
    wallet_id, _key, secret = wallet_and_key("0.02")
    _answer, request_id = await chat(
        openai_client(secret),
        "costly",
        max_tokens=2,
        script={"prompt_tokens": 100, "words": 2, "ignore_max_tokens": False},
    )
    record = admin_api.usage_record(request_id)
    assert (record["prompt_tokens"], record["completion_tokens"]) == (100, 2)
    assert D(record["cost"]) == Decimal("0.02"), "charged what the wallet had"
    assert D(record["shortfall"]) == Decimal("0.082"), "(100 + 2) * 0.001 - 0.02"
    wallet = admin_api.assert_books_balance(wallet_id)
    assert wallet["balance"] == "0"


async def test_a_stream_is_cut_off_at_what_the_wallet_can_pay(
    admin_api: Admin,
    http: httpx.AsyncClient,
    upstream: UpstreamServer,
    wallet_and_key: MakeKey,
) -> None:
    """0.03 credit pays for 30 tokens: 8 of prompt and 22 of answer. The upstream ignores the
    bound and would send 100 words; the gateway ends the stream with an error event."""
    wallet_id, _key, secret = wallet_and_key("0.03")
    body = {
        "model": "costly",
        "messages": HELLO,
        "stream": True,
        "script": {"words": 100, "usage": False, "chunk_delay_s": 0.001},
    }
    async with http.stream(
        "POST", "/v1/chat/completions", json=body, headers=bearer(secret)
    ) as response:
        assert response.status_code == 200
        request_id = response.headers["x-request-id"]
        events = await read_sse(response)

    chunks = [e for e in events if isinstance(e, dict) and "choices" in e]
    errors = [e for e in events if isinstance(e, dict) and "error" in e]
    assert len(errors) == 1, events[-3:]
    assert events.index(errors[0]) >= len(events) - 2, "the error event ends the stream"
    error = errors[0]["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert error["type"] == "insufficient_quota"
    delivered = "".join(
        (choice.get("delta") or {}).get("content") or ""
        for chunk in chunks
        for choice in chunk["choices"]
    )
    words = delivered.split()
    assert 1 <= len(words) <= 30 - HELLO_TOKENS
    assert delivered == answer_text(len(words))

    record = admin_api.usage_record(request_id)
    assert record["completion_tokens"] == len(words), "the tokens delivered are charged"
    assert D(record["cost"]) == (HELLO_TOKENS + len(words)) * TOKEN
    wallet = admin_api.assert_books_balance(wallet_id)
    assert D(wallet["balance"]) == Decimal("0.03") - D(record["cost"])
    assert D(wallet["balance"]) >= 0
    await eventually(lambda: upstream.streams[-1].closed_at, lambda t: t is not None)
    assert not upstream.streams[-1].finished, "the upstream request was closed"


async def test_the_sdk_sees_the_cut_off_as_an_error(
    admin_api: Admin, upstream: UpstreamServer, wallet_and_key: MakeKey, openai_client: Client
) -> None:
    """0.02 credit pays for 20 tokens: 8 of prompt and 12 of answer; the SDK raises the error
    event that ends the stream, and what it was delivered is what is charged."""
    wallet_id, _key, secret = wallet_and_key("0.02")
    client = openai_client(secret)
    raw = await client.chat.completions.with_raw_response.create(
        model="costly",
        messages=HELLO,  # type: ignore[arg-type]
        stream=True,
        extra_body={"script": {"words": 100}},
    )
    request_id = raw.headers["x-request-id"]
    stream = raw.parse()
    received: list[Any] = []

    async def consume() -> None:
        async for chunk in stream:
            received.append(chunk)

    with pytest.raises(openai.APIError) as caught:
        await consume()
    assert_error_event({"error": caught.value.body}, "insufficient_quota", "insufficient_quota")
    assert received, "some of the answer was delivered before the cut-off"
    words = "".join(
        choice.delta.content or "" for chunk in received for choice in chunk.choices
    ).split()
    assert 1 <= len(words) <= 20 - HELLO_TOKENS

    record = admin_api.usage_record(request_id)
    assert record["status"] == "cut_off", record
    assert (record["prompt_tokens"], record["completion_tokens"]) == (HELLO_TOKENS, len(words))
    assert D(record["cost"]) == (HELLO_TOKENS + len(words)) * TOKEN, record
    wallet = admin_api.assert_books_balance(wallet_id)
    assert D(wallet["balance"]) == Decimal("0.02") - D(record["cost"]) >= 0


async def test_a_client_that_disconnects_pays_for_what_was_generated(
    gateway: GatewayProcess,
    admin_api: Admin,
    upstream: UpstreamServer,
    wallet_and_key: MakeKey,
    openai_client: Client,
) -> None:
    wallet_id, _key, secret = wallet_and_key("10")
    client = openai_client(secret)
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=HELLO,  # type: ignore[arg-type]
        stream=True,
        extra_body={"script": {"words": 400, "chunk_delay_s": 0.02}},
    )
    request_id = raw.headers["x-request-id"]
    stream = raw.parse()
    received = 0
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            received += 1
        if received == 5:
            break
    await stream.close()

    # the gateway reads on, relaying nothing, for up to [metering] drain_s (5 s by default)
    # for the backend's usage; the stream lasts 8 s, so it closes the upstream request then
    record = await eventually(
        lambda: upstream.streams[-1],
        lambda s: not s.open,
        within=5 + 5,
        what="the upstream stream to close",
    )
    assert record.disconnected, "the gateway closed the upstream request"
    assert record.chunks_sent < 400
    assert D(admin_api.idle_wallet(wallet_id)["reserved"]) == 0, "nothing stays reserved"

    usage = admin_api.usage_record(request_id)
    assert usage["status"] == "client_disconnected"
    assert received <= usage["completion_tokens"] <= record.chunks_sent
    admin_api.assert_charged(
        gateway,
        wallet_id,
        request_id,
        model="gpt-4o-mini",
        prompt=HELLO_TOKENS,
        completion=usage["completion_tokens"],
        status="client_disconnected",
    )
    admin_api.assert_books_balance(wallet_id)


async def test_a_client_that_disconnects_before_the_first_token(
    gateway: GatewayProcess, admin_api: Admin, upstream: UpstreamServer, wallet_and_key: MakeKey
) -> None:
    """The upstream is still thinking when the client leaves: the upstream request is closed
    at once, and as nothing was delivered the request costs nothing, not even its prompt
    (docs/money.md, "A client that leaves"); nothing stays reserved."""
    wallet_id, _key, secret = wallet_and_key("10")
    body = {"model": "gpt-4o-mini", "messages": HELLO, "script": {"delay_s": 3}}
    async with httpx.AsyncClient(base_url=gateway.url, trust_env=False) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post("/v1/chat/completions", json=body, headers=bearer(secret), timeout=0.5)
    received = await eventually(
        lambda: upstream.requests, lambda r: len(r) == 1 and r[0].closed_at is not None
    )
    assert received[0].cancelled, "the upstream request was closed before it was answered"
    wallet = admin_api.assert_books_balance(wallet_id)
    [usage] = admin_api.usage(wallet_id=wallet_id)
    assert usage["status"] == "client_disconnected", usage
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (0, 0), usage
    assert (D(usage["cost"]), D(usage["shortfall"])) == (0, 0), usage
    assert D(wallet["balance"]) == Decimal(10)
    assert [e["kind"] for e in admin_api.ledger(wallet_id)] == ["credit"], "no charge entry"
