"""Every token delivered is paid for: the ways around the meter an adversarial client (or a
backend of another dialect) found, each closed and tried through the running gateway, on
SQLite and on PostgreSQL where storage is involved.

The route prices a token at 0.001 credit (input and output), so costs read as token counts.
"""

from __future__ import annotations

from collections.abc import Callable
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
