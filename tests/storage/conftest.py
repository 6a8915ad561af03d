"""One ``store`` fixture, parametrized over every engine, for the contract suite.

After each test the fixture checks the ledger invariants on every wallet (the sum of the ledger
is the balance, each ``balance_after`` is the running sum, ``0 <= reserved <= balance``), so every
mutating test asserts them without saying so.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

from gateway.storage.base import Store
from gateway.storage.memory import MemoryStore
from gateway.storage.postgres.store import PostgresStore
from gateway.storage.sqlite.store import SQLiteStore

POSTGRES_URL = os.environ.get(
    "GATEWAY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
ENGINES = ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]

_postgres_error: list[str | None] = []  # the reachability check, once per session


async def assert_invariants(store: Store) -> None:
    for wallet in await store.list_wallets():
        entries = await store.ledger(wallet.id, limit=1_000_000)
        assert sum(e.amount for e in entries) == wallet.balance, wallet
        running = 0
        for entry in reversed(entries):
            running += entry.amount
            assert entry.balance_after == running, entry
        assert 0 <= wallet.reserved <= wallet.balance, wallet


@pytest.fixture
def invariants() -> Callable[[Store], Awaitable[None]]:
    """``await invariants(store)`` checks the ledger invariants in the middle of a test."""
    return assert_invariants


@pytest.fixture(params=ENGINES)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    engine: str = request.param
    if engine == "memory":
        memory = MemoryStore()
        await memory.open()
        yield memory
        await assert_invariants(memory)
        await memory.close()
    elif engine == "sqlite":
        sqlite = SQLiteStore(str(tmp_path / "gateway.db"))
        await sqlite.open()
        try:
            yield sqlite
            await assert_invariants(sqlite)
        finally:
            await sqlite.close()
    else:
        async for postgres in _postgres_store():
            yield postgres


async def _postgres_store() -> AsyncIterator[Store]:
    """A ``PostgresStore`` in a schema of its own, dropped afterwards.

    ``PostgresStore(url, *, pool_size=10, schema=None)``: with ``schema`` set, every pooled
    connection uses that schema (``search_path``) and ``open(migrate=True)`` creates the tables
    there, in a schema the fixture has already created. Each test gets a fresh schema named
    ``gw_test_<random>``, so concurrent runs on the same server cannot collide; the fixture
    drops it with ``CASCADE`` at the end.

    Skips when the server is unreachable; with ``CI=true`` an unreachable server is a failure,
    not a skip. The URL can be overridden with ``GATEWAY_TEST_POSTGRES_URL``.
    """
    if not _postgres_error:
        try:
            conn = await asyncpg.connect(POSTGRES_URL, timeout=3)
            await conn.close()
            _postgres_error.append(None)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            _postgres_error.append(f"{type(exc).__name__}: {exc}")
    if _postgres_error[0] is not None:
        message = f"PostgreSQL at {POSTGRES_URL} is unreachable ({_postgres_error[0]})"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)

    schema = "gw_test_" + secrets.token_hex(6)
    admin = await asyncpg.connect(POSTGRES_URL, timeout=3)
    try:
        await admin.execute(f'CREATE SCHEMA "{schema}"')
        postgres = PostgresStore(POSTGRES_URL, pool_size=4, schema=schema)
        await postgres.open()
        try:
            yield postgres
            await assert_invariants(postgres)
        finally:
            await postgres.close()
    finally:
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()
