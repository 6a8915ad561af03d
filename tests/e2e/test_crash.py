"""A gateway killed with SIGKILL mid-stream: after a restart on the same database, every charge
settled before the kill is still there, and the in-flight reservation is released and recorded
as ``abandoned`` (a request killed before ``ROW_AFTER_S`` leaves no row: nothing to release)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from decimal import Decimal

import openai
import pytest

from e2e.helpers import HELLO, chat
from gateway_proc import D, GatewayFactory
from upstream import UpstreamServer

pytestmark = pytest.mark.e2e


async def test_sigkill_mid_stream_then_restart(
    gateway_factory: GatewayFactory, upstream_factory: Callable[[str], UpstreamServer]
) -> None:
    upstream = upstream_factory("a")
    gateway = gateway_factory(
        backends=[{"name": "a", "base_url": upstream.url, "api_key_env": "UPSTREAM_A_KEY"}],
        routes=[{"model": "m", "backend": "a", "input_price": "1", "output_price": "2"}],
    )
    with gateway.admin() as admin:
        wallet_id = admin.make_wallet("10")
        _key, secret = admin.make_key(wallet_id)
    client = openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=secret, max_retries=0)
    async with client:
        _answer, settled_id = await chat(
            client, "m", script={"prompt_tokens": 100, "completion_tokens": 50}
        )
        with gateway.admin() as admin:
            before = admin.idle_wallet(wallet_id)
        assert before["balance"] == "9.9998"  # 100 * 1 + 50 * 2 micro-credits

        raw = await client.chat.completions.with_raw_response.create(
            model="m",
            messages=HELLO,  # type: ignore[arg-type]
            stream=True,
            extra_body={"script": {"words": 1000, "chunk_delay_s": 0.05}},
        )
        in_flight_id = raw.headers["x-request-id"]
        stream = raw.parse()
        received = 0
        async for chunk in stream:
            received += bool(chunk.choices and chunk.choices[0].delta.content)
            if received == 30:  # 1.5 s in: past ROW_AFTER_S, its reservation row is written
                break
        with gateway.admin() as admin:
            assert D(admin.wallet(wallet_id)["reserved"]) > 0, "the stream holds a reservation"

        gateway.kill()
        with contextlib.suppress(openai.APIError):
            await stream.close()

    gateway.start()
    with gateway.admin() as admin:
        wallet = admin.idle_wallet(wallet_id)
        assert D(wallet["reserved"]) == 0, "the in-flight reservation was released"
        assert wallet["balance"] == before["balance"], "settled charges survive; none added"
        assert D(wallet["available"]) == D(wallet["balance"])

        usage = {u["request_id"]: u for u in admin.usage(wallet_id=wallet_id)}
        assert usage[settled_id]["status"] == "ok"
        assert D(usage[settled_id]["cost"]) == Decimal("0.0002")
        assert usage[in_flight_id]["status"] == "abandoned"
        assert D(usage[in_flight_id]["cost"]) == 0
        charges = [e for e in admin.ledger(wallet_id) if e.get("request_id") == settled_id]
        assert [e["amount"] for e in charges] == ["-0.0002"]
        admin.assert_books_balance(wallet_id)

        # and the restarted gateway serves
        async with openai.AsyncOpenAI(
            base_url=f"{gateway.url}/v1", api_key=secret, max_retries=0
        ) as again:
            await chat(again, "m")
        admin.assert_books_balance(wallet_id)
