"""Durability: an answer the client received in full is in the ledger, even when the gateway is
SIGKILLed the instant the client has it — with ``[storage] sqlite_synchronous`` NORMAL (the
default: a committed transaction is in the WAL file, which outlives the process) and FULL (also
fsynced, for power cuts: that part no test on one machine can show).

The gateway settles a plain answer before sending it, and holds a stream's ``[DONE]`` until its
settlement is committed; so the kill lands after the commit, however soon it comes.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from e2e.helpers import HELLO, parse_sse
from gateway_proc import D, GatewayFactory
from upstream import UpstreamServer

pytestmark = pytest.mark.e2e

ROUTE = {"model": "m", "backend": "a", "input_price": "1", "output_price": "2"}


@pytest.mark.parametrize("synchronous", ["NORMAL", "FULL"])
def test_an_answer_received_in_full_survives_sigkill_right_after(
    gateway_factory: GatewayFactory,
    upstream_factory: Callable[[str], UpstreamServer],
    synchronous: str,
) -> None:
    upstream = upstream_factory("a")
    gateway = gateway_factory(
        backends=[{"name": "a", "base_url": upstream.url, "api_key_env": "UPSTREAM_A_KEY"}],
        routes=[ROUTE],
        storage={"sqlite_synchronous": synchronous},
    )
    with gateway.admin() as admin:
        wallet_id = admin.make_wallet("10")
        _key, secret = admin.make_key(wallet_id)
    received: list[str] = []
    for stream in (False, True, False, True):
        body = {"model": "m", "messages": HELLO, "stream": stream, "script": {"words": 7}}
        with (
            httpx.Client(base_url=gateway.url, timeout=30, trust_env=False) as http,
            http.stream(
                "POST",
                "/v1/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {secret}"},
            ) as response,
        ):
            assert response.status_code == 200
            raw = b"".join(response.iter_bytes())
            gateway.kill()  # SIGKILL the instant the last byte is here
        if stream:
            assert parse_sse(raw.decode())[-1] == "[DONE]"
        else:
            assert httpx.Response(200, content=raw).json()["choices"]
        received.append(response.headers["x-request-id"])
        gateway.start()

    with gateway.admin() as admin:
        records = {u["request_id"]: u for u in admin.usage(wallet_id=wallet_id)}
        for request_id in received:
            assert records[request_id]["status"] == "ok", records[request_id]
            assert D(records[request_id]["cost"]) == D("0.000024")  # 10 x 1 + 7 x 2
        charges = [e for e in admin.ledger(wallet_id) if e["kind"] == "charge"]
        assert sorted(e["request_id"] for e in charges) == sorted(received)
        wallet = admin.assert_books_balance(wallet_id)
        assert D(wallet["balance"]) == 10 - 4 * D("0.000024")
