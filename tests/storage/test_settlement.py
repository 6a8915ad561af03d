"""A settlement awaited by its request's own task (every engine's path under load) finishes
even when that task is cancelled while it waits (the gateway shutting down): charged once,
recorded once, released. One that storage keeps refusing is retried for ``RETRY_FOR_S``, then
given up."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from gateway.config import BackendConfig
from gateway.metrics import Metrics
from gateway.pricing import Prices
from gateway.proxy import settlement as settlement_module
from gateway.proxy.leases import Leases
from gateway.proxy.metering import Meter
from gateway.proxy.ratelimit import LocalLimiter
from gateway.proxy.routing import Route
from gateway.proxy.settlement import Settlement
from gateway.storage.base import ApiKey, Store, UsageStatus
from gateway.storage.sqlite.store import SQLiteStore
from gateway.tasks import TaskGroup
from gateway.tokens import TokenCounter

# micro-credits per 1M tokens: a prompt token costs 3 micro-credits
PRICES = Prices(input=3_000_000, output=6_000_000, cached_input=1_500_000)
ROUTE = Route(
    model="m",
    backend=BackendConfig(name="b", base_url="http://127.0.0.1:9/v1"),
    upstream_model="m",
    prices=PRICES,
    encoding="o200k_base",
    order=0,
)
PROMPT_TOKENS = 7


def _under_load(store: Store) -> Store:
    """On SQLite, writes go to the storage thread (as with many requests in flight)."""
    if isinstance(store, SQLiteStore):
        store.inline_when = lambda: False
    return store


async def _settlement(
    store: Store,
    tasks: TaskGroup,
    metrics: Metrics,
    leases: Leases,
    *,
    stream: bool = False,
    lease_s: float = 900,
) -> tuple[Settlement, str]:
    """A request's settlement, its reservation taken and an answer of PROMPT_TOKENS metered;
    and its wallet's id."""
    wallet = await store.create_wallet("w", balance=100_000_000)
    key = await store.create_key(
        ApiKey(id="key_1", wallet_id=wallet.id, name="k", key_hash="h", prefix="p", created_at=0)
    )
    reservation = await store.reserve(
        wallet_id=wallet.id,
        key_id=key.id,
        request_id="req_1",
        minimum=1,
        maximum=50_000_000,
        lease_s=lease_s,
    )
    assert reservation is not None
    settlement = Settlement(
        leases=leases,
        store=store,
        tasks=tasks,
        metrics=metrics,
        limiter=LocalLimiter(),
        reservation=reservation,
        key=key,
        model="m",
        endpoint="chat.completions",
        stream=stream,
        extend_step=256,
    )
    meter = Meter(TokenCounter("o200k_base"), PRICES, prompt_tokens=PROMPT_TOKENS)
    settlement.attach(ROUTE, meter)
    return settlement, wallet.id


async def _books(store: Store, wallet_id: str) -> tuple[int, int, list[int], list[tuple[str, int]]]:
    wallet = await store.get_wallet(wallet_id)
    assert wallet is not None
    entries = [e.amount for e in await store.ledger(wallet_id)]
    usage = [(u.status, u.cost) for u in await store.list_usage(wallet_id=wallet_id)]
    return wallet.balance, wallet.reserved, entries, usage


async def test_a_settlement_awaited_by_its_request(store: Store) -> None:
    tasks, metrics, leases = TaskGroup(), Metrics(), Leases()
    settlement, wallet_id = await _settlement(_under_load(store), tasks, metrics, leases)
    assert leases.ids() == [settlement.reservation_id]  # its lease kept while it runs
    await settlement.settle(UsageStatus.OK)
    cost = PROMPT_TOKENS * 3  # micro-credits
    assert leases.ids() == []
    assert metrics.active == 0
    assert await _books(store, wallet_id) == (
        100_000_000 - cost,
        0,
        [-cost, 100_000_000],
        [("ok", cost)],
    )


# (not the memory engine: it settles without waiting, so there is no meanwhile)
@pytest.mark.parametrize(
    "store", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
@pytest.mark.parametrize("turns", [0, 1, 3])
async def test_a_settlement_whose_request_is_cancelled_meanwhile_still_settles_once(
    store: Store, turns: int
) -> None:
    tasks, metrics, leases = TaskGroup(), Metrics(), Leases()
    settlement, wallet_id = await _settlement(_under_load(store), tasks, metrics, leases)
    request = asyncio.create_task(settlement.settle(UsageStatus.OK))
    for _ in range(1 + turns):  # it has started, and waits for storage
        await asyncio.sleep(0)
    assert not request.done()
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    deadline = time.monotonic() + 10
    while metrics.active:
        assert time.monotonic() < deadline, "the settlement never finished"
        await asyncio.sleep(0.01)
    await tasks.drain()
    cost = PROMPT_TOKENS * 3  # micro-credits
    assert metrics.active == 0, "finished once"
    assert leases.ids() == []
    assert await _books(store, wallet_id) == (
        100_000_000 - cost,
        0,
        [-cost, 100_000_000],
        [("ok", cost)],
    )
    await settlement.settle(UsageStatus.ERROR)  # a second call does nothing
    assert metrics.active == 0


async def test_a_settlement_storage_keeps_refusing_is_given_up_and_its_lease_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream's settlement that storage refuses, and keeps refusing for ``RETRY_FOR_S`` (an
    hour; here 0.6 s): the gateway says so (``settlement_given_up``, with what it could not
    charge), counts the failure, and stops renewing the reservation's lease, so that its money
    is released like an abandoned request's once the lease runs out. Storage refuses for real:
    another connection holds the SQLite file's write lock throughout."""
    monkeypatch.setattr(settlement_module, "RETRY_FOR_S", 0.6)
    db = tmp_path / "gateway.db"
    store = SQLiteStore(str(db), busy_timeout_s=0.05)
    await store.open()
    other = sqlite3.connect(db, isolation_level=None)
    try:
        tasks, metrics, leases = TaskGroup(), Metrics(), Leases()
        settlement, wallet_id = await _settlement(
            store, tasks, metrics, leases, stream=True, lease_s=1.0
        )

        def failures() -> float | None:
            return metrics.registry.get_sample_value("gateway_settlement_failures_total")

        assert failures() == 0
        other.execute("BEGIN IMMEDIATE")  # storage refuses every write from now on
        cost = PROMPT_TOKENS * 3  # micro-credits
        with capture_logs() as logs:
            started = time.monotonic()
            await settlement.settle(UsageStatus.OK)  # tried three times, refused each
            retried_from = time.monotonic()
            assert settlement.failed is not None
            assert settlement.failed.code == "storage_unavailable"
            assert failures() == 1
            assert leases.ids() == [settlement.reservation_id], "kept while it is retried"
            assert metrics.active == 0
            await tasks.drain()  # the retries, until they give up
            assert time.monotonic() - retried_from >= 0.6, "retried for RETRY_FOR_S"
            assert len(tasks) == 0
        events = [e for e in logs if e["event"].startswith("settlement_")]
        assert events == [
            {
                "event": "settlement_failed",
                "log_level": "error",
                "request_id": "req_1",
                "key_id": "key_1",
                "wallet_id": wallet_id,
                "cost_micro": cost,
                "error": settlement.failed.message,
            },
            {
                "event": "settlement_given_up",
                "log_level": "error",
                "request_id": "req_1",
                "cost_micro": cost,  # a stream's delivered tokens, never charged
            },
        ]
        assert leases.ids() == [], "no longer renewed"
        assert failures() == 1
        assert metrics.active == 0

        other.execute("ROLLBACK")  # storage is back: nothing was charged, the money still held
        assert await _books(store, wallet_id) == (100_000_000, 50_000_000, [100_000_000], [])
        # its lease runs out, unrenewed: the sweep releases it as any abandoned request's
        await asyncio.sleep(max(0.0, started + 1.0 - time.monotonic()) + 0.05)
        assert await store.release_expired() == 1
        assert await _books(store, wallet_id) == (100_000_000, 0, [100_000_000], [("abandoned", 0)])
        await settlement.settle(UsageStatus.OK)  # settled once: nothing more happens
        assert await _books(store, wallet_id) == (100_000_000, 0, [100_000_000], [("abandoned", 0)])
    finally:
        other.close()
        await store.close()
