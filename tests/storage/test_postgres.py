"""What only the PostgreSQL engine does: several processes spending from one wallet, recovery run
by several instances at once, migrations under a lock, and PostgreSQL's failures turned into
``StorageUnavailable``.

Each test works in schemas of its own (``gw_test_<random>``), dropped at teardown. Without a
reachable server the tests skip, except with ``CI=true``, where they fail.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import secrets
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from gateway.errors import StorageUnavailable
from gateway.storage.base import ApiKey, Reservation, Store, UsageRecord, UsageStatus
from gateway.storage.postgres import store as postgres
from gateway.storage.postgres.sql import MIGRATIONS
from gateway.storage.postgres.store import PostgresStore

POSTGRES_URL = os.environ.get(
    "GATEWAY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
pytestmark = pytest.mark.postgres

Invariants = Callable[[Store], Awaitable[None]]
OpenStore = Callable[..., Awaitable[PostgresStore]]
_reachable: list[str | None] = []  # the reachability check, once per session


@pytest.fixture
async def pg_url() -> str:
    if not _reachable:
        try:
            conn = await asyncpg.connect(POSTGRES_URL, timeout=3)
            await conn.close()
            _reachable.append(None)
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            _reachable.append(f"{type(exc).__name__}: {exc}")
    if _reachable[0] is not None:
        message = f"PostgreSQL at {POSTGRES_URL} is unreachable ({_reachable[0]})"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return POSTGRES_URL


@pytest.fixture
async def admin(pg_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(pg_url, timeout=3)
    yield conn
    await conn.close()


@pytest.fixture
async def new_schema(admin: asyncpg.Connection) -> AsyncIterator[Callable[[], str]]:
    """``new_schema() -> name``: a schema name nobody uses (not created); dropped at teardown."""
    names: list[str] = []

    def make() -> str:
        names.append("gw_test_" + secrets.token_hex(6))
        return names[-1]

    yield make
    for name in names:
        await admin.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture
async def open_store(pg_url: str, new_schema: Callable[[], str]) -> AsyncIterator[OpenStore]:
    """``await open_store(schema, migrate=True, pool_size=10)``: closed at teardown."""
    opened: list[PostgresStore] = []

    async def make(schema: str, *, migrate: bool = True, pool_size: int = 10) -> PostgresStore:
        store = PostgresStore(pg_url, pool_size=pool_size, schema=schema)
        opened.append(store)
        await store.open(migrate=migrate)
        return store

    yield make
    for store in opened:
        await store.close()


@pytest.fixture
async def two(open_store: OpenStore, new_schema: Callable[[], str]) -> tuple[PostgresStore, ...]:
    """Two instances (two pools, as two gateway processes would have) on one schema."""
    schema = new_schema()
    return (await open_store(schema), await open_store(schema))


def usage_for(r: Reservation, **fields: object) -> UsageRecord:
    values: dict[str, object] = {
        "request_id": r.request_id,
        "key_id": r.key_id,
        "wallet_id": r.wallet_id,
        "model": "gpt-test",
        "backend": "a",
        "prompt_tokens": 10,
        "completion_tokens": 20,
        "status": UsageStatus.OK,
        "created_at": time.time(),
    }
    values.update(fields)
    return UsageRecord(**values)  # type: ignore[arg-type]


def new_key(wallet_id: str) -> ApiKey:
    secret = "sk-" + secrets.token_hex(16)
    return ApiKey(
        id="k_" + secrets.token_hex(8),
        wallet_id=wallet_id,
        name="key",
        key_hash=hashlib.sha256(secret.encode()).hexdigest(),
        prefix=secret[:8],
        created_at=time.time(),
    )


async def assert_books_match(store: Store, wallet_id: str, start: int) -> int:
    """Every charged usage record has its ledger entry and the reverse; nothing stays reserved.
    Returns what was charged in all."""
    wallet = await store.get_wallet(wallet_id)
    assert wallet is not None
    assert wallet.reserved == 0
    assert wallet.balance >= 0
    usage = await store.list_usage(wallet_id=wallet_id, limit=100_000)
    charges = {
        e.request_id: -e.amount
        for e in await store.ledger(wallet_id, limit=100_000)
        if e.kind == "charge"
    }
    assert charges == {u.request_id: u.cost for u in usage if u.cost > 0}
    charged = sum(u.cost for u in usage)
    assert wallet.balance == start - charged
    return charged


# -- several instances, one wallet ---------------------------------------------------------------


async def test_two_instances_never_overdraw_one_wallet(
    two: tuple[PostgresStore, PostgresStore], invariants: Invariants
) -> None:
    a, b = two
    start = 10_000
    wallet = await a.create_wallet("shared", start)
    key = await b.create_key(new_key(wallet.id))
    rng = random.Random(11)
    costs = [rng.randrange(0, 151) for _ in range(200)]
    lowest = start
    done = asyncio.Event()

    async def watch() -> None:  # samples the wallet through the whole run
        nonlocal lowest
        while not done.is_set():
            current = await a.get_wallet(wallet.id)
            assert current is not None
            lowest = min(lowest, current.balance, current.available)
            await asyncio.sleep(0.001)

    async def one_request(i: int, cost: int) -> UsageRecord | None:
        here, there = (a, b) if i % 2 else (b, a)
        r = await here.reserve(
            wallet_id=wallet.id,
            key_id=key.id,
            request_id=f"req_{i}_{secrets.token_hex(4)}",
            minimum=10,
            maximum=100,
            lease_s=300,
        )
        if r is None:
            return None
        await asyncio.sleep(rng.random() / 200)
        if cost > 100:
            r = await there.extend(r, minimum=1, maximum=20) or r
        return await (here if i % 3 else there).settle(r, usage_for(r), cost)

    watcher = asyncio.create_task(watch())
    results = await asyncio.gather(*(one_request(i, c) for i, c in enumerate(costs)))
    done.set()
    await watcher
    assert lowest >= 0
    settled = [u for u in results if u is not None]
    assert settled, "no request got a reservation"
    assert len(settled) < len(costs), "the wallet never ran dry: the test proves nothing"
    assert all(u.cost + u.shortfall == c for u, c in zip(results, costs, strict=True) if u)
    charged = await assert_books_match(b, wallet.id, start)
    assert charged == sum(u.cost for u in settled)
    spent = await a.get_key(key.id)
    assert spent is not None
    assert spent.spent == charged
    assert await a.release_expired(all_=True) == 0  # nothing left reserved
    await invariants(a)


_WORKER = textwrap.dedent(
    """
    import asyncio, random, secrets, sys, time
    from gateway.storage.base import UsageRecord
    from gateway.storage.postgres.store import PostgresStore

    async def main(url, schema, wallet_id, n, seed, start_at):
        store = PostgresStore(url, pool_size=8, schema=schema)
        await store.open(migrate=False)
        rng = random.Random(seed)

        async def one(i):
            r = await store.reserve(
                wallet_id=wallet_id, key_id=None, request_id=f"p{seed}_{i}",
                minimum=10, maximum=100, lease_s=300,
            )
            if r is None:
                return 0
            await asyncio.sleep(rng.random() / 100)
            usage = UsageRecord(
                request_id=r.request_id, key_id=None, wallet_id=wallet_id, model="m",
                backend="b", prompt_tokens=1, completion_tokens=1, status="ok",
                created_at=time.time(),
            )
            await store.settle(r, usage, rng.randrange(0, 151))
            return 1

        await asyncio.sleep(max(0.0, start_at - time.time()))
        settled = await asyncio.gather(*(one(i) for i in range(n)))
        await store.close()
        print(sum(settled))

    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]),
                     int(sys.argv[5]), float(sys.argv[6])))
    """
)


async def test_two_processes_never_overdraw_one_wallet(
    pg_url: str, open_store: OpenStore, new_schema: Callable[[], str], invariants: Invariants
) -> None:
    schema = new_schema()
    store = await open_store(schema)
    start = 15_000
    wallet = await store.create_wallet("shared", start)
    start_at = time.time() + 2.0  # both processes open their pools first, then start together
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _WORKER,
            pg_url,
            schema,
            wallet.id,
            "150",
            str(seed),
            str(start_at),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for seed in (1, 2)
    ]
    outputs = [await proc.communicate() for proc in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode()
    settled = sum(int(out) for out, _ in outputs)
    assert 0 < settled < 300, "the wallet should run dry part-way"
    await assert_books_match(store, wallet.id, start)
    assert len(await store.list_usage(wallet_id=wallet.id, limit=1_000)) == settled
    await invariants(store)


async def test_a_settle_that_waits_for_the_wallet_uses_its_latest_row(
    pg_url: str, open_store: OpenStore, new_schema: Callable[[], str], invariants: Invariants
) -> None:
    """Regression: the UPDATE inside settle first sees the wallet as of its snapshot, and
    PostgreSQL checks ``reserved <= balance`` on the row it would make of that version before
    it moves to the latest one; new values must come from the locked latest row."""
    schema = new_schema()
    store = await open_store(schema)
    wallet = await store.create_wallet("w", 1_000)
    r1 = await store.reserve(
        wallet_id=wallet.id, key_id=None, request_id="q1", minimum=600, maximum=600, lease_s=60
    )
    r2 = await store.reserve(
        wallet_id=wallet.id, key_id=None, request_id="q2", minimum=400, maximum=400, lease_s=60
    )
    assert r1 is not None
    assert r2 is not None
    other = await asyncpg.connect(pg_url, server_settings={"search_path": schema})
    try:
        # another instance releases r1 and holds the wallet's row lock while it commits
        tx = other.transaction()
        await tx.start()
        await other.execute("DELETE FROM reservations WHERE id = $1", r1.id)
        await other.execute("UPDATE wallets SET reserved = reserved - 600 WHERE id = $1", wallet.id)
        settling = asyncio.create_task(store.settle(r2, usage_for(r2), 1_000))
        await asyncio.sleep(0.3)  # the settle has taken its snapshot and waits for the lock
        assert not settling.done()
        await tx.commit()
        written = await settling
    finally:
        await other.close()
    assert (written.cost, written.shortfall) == (1_000, 0)  # r1's funds were free by then
    current = await store.get_wallet(wallet.id)
    assert current is not None
    assert (current.balance, current.reserved) == (0, 0)
    await invariants(store)


# -- recovery by several instances ---------------------------------------------------------------


async def test_concurrent_release_expired_releases_each_reservation_once(
    two: tuple[PostgresStore, PostgresStore],
    invariants: Invariants,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(postgres, "_RELEASE_BATCH", 25)  # several batches per call
    a, b = two
    wallets = [await a.create_wallet(f"w{i}", 100_000) for i in range(4)]

    async def hold(i: int, lease_s: float) -> Reservation:
        r = await (a, b)[i % 2].reserve(
            wallet_id=wallets[i % 4].id,
            key_id=None,
            request_id=f"req_{lease_s}_{i}",
            minimum=1,
            maximum=10 + i,
            lease_s=lease_s,
        )
        assert r is not None
        return r

    expired = await asyncio.gather(*(hold(i, 0.0) for i in range(300)))
    live = await asyncio.gather(*(hold(i, 3_600.0) for i in range(8)))
    counts = await asyncio.gather(*(s.release_expired() for s in (a, b, a, b, a, b)))
    assert sum(counts) == len(expired)
    for i, wallet in enumerate(wallets):
        current = await b.get_wallet(wallet.id)
        assert current is not None
        assert current.balance == 100_000
        assert current.reserved == sum(r.amount for r in live if r.wallet_id == wallet.id), i
    usage = await a.list_usage(limit=1_000)
    assert sorted(u.request_id for u in usage) == sorted(r.request_id for r in expired)
    assert {(u.status, u.cost, u.shortfall) for u in usage} == {("abandoned", 0, 0)}
    assert await b.release_expired(all_=True) == len(live)
    await invariants(a)


async def test_settle_racing_release_ends_each_reservation_once(
    two: tuple[PostgresStore, PostgresStore], invariants: Invariants
) -> None:
    a, b = two
    start = 1_000_000
    wallet = await a.create_wallet("w", start)
    held = [
        await a.reserve(
            wallet_id=wallet.id,
            key_id=None,
            request_id=f"req_{i}",
            minimum=1,
            maximum=50,
            lease_s=0.0,
        )
        for i in range(200)
    ]
    reservations = [r for r in held if r is not None]

    async def sweep() -> int:
        released = 0
        for _ in range(20):
            released += await b.release_expired()
            await asyncio.sleep(0)
        return released

    sweeps = [asyncio.create_task(sweep()) for _ in range(3)]
    written = await asyncio.gather(*(a.settle(r, usage_for(r), 10) for r in reservations))
    released = sum(await asyncio.gather(*sweeps))
    assert released, "no settle raced a release: the test proves nothing"
    # released first or not, each request is charged once, in full (the wallet has enough)
    assert all((u.cost, u.shortfall) == (10, 0) for u in written)
    usage = await a.list_usage(wallet_id=wallet.id, limit=1_000)
    assert len(usage) == len(reservations)
    assert {u.status for u in usage} == {"ok"}  # the real records replaced the abandoned ones
    assert await assert_books_match(a, wallet.id, start) == 10 * len(reservations)
    await invariants(a)


async def test_a_server_starting_releases_only_the_leases_that_ended(
    pg_url: str, new_schema: Callable[[], str], open_store: OpenStore
) -> None:
    """Several instances share the wallets: one starting releases what dead instances left
    (their leases ended), never what a live one holds."""
    schema = new_schema()
    live = await open_store(schema)
    wallet = await live.create_wallet("w", 1_000)
    held, dead = [
        await live.reserve(
            wallet_id=wallet.id, key_id=None, request_id=rid, minimum=1, maximum=100, lease_s=60
        )
        for rid in ("req_held", "req_dead")
    ]
    assert held is not None
    assert dead is not None
    assert await live.renew([dead.id], 0.0) == 1
    starting = PostgresStore(pg_url, schema=schema)
    try:
        assert await starting.serve(migrate=True, busy=lambda: False) == 1
        assert (await starting.get_wallet(wallet.id)).reserved == 100  # type: ignore[union-attr]
    finally:
        await starting.close()


async def test_leases_run_on_the_databases_clock(
    two: tuple[PostgresStore, PostgresStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Instance B's clock is an hour fast: by its clock, A's live lease ended long ago. The
    # database's clock decides, so B releases nothing that A still holds.
    a, b = two
    wallet = await a.create_wallet("w", 1_000)
    r = await a.reserve(
        wallet_id=wallet.id, key_id=None, request_id="req_1", minimum=1, maximum=100, lease_s=60
    )
    assert r is not None
    real = time.time
    monkeypatch.setattr(postgres.time, "time", lambda: real() + 3_600)
    assert await b.release_expired() == 0
    assert r.expires_at == pytest.approx(real() + 60, abs=5)  # the database's now, plus the lease
    skewed = await b.reserve(
        wallet_id=wallet.id, key_id=None, request_id="req_2", minimum=1, maximum=100, lease_s=60
    )
    assert skewed is not None
    assert skewed.expires_at == pytest.approx(real() + 60, abs=5)
    monkeypatch.undo()
    assert await a.renew([r.id, skewed.id], 0.0) == 2
    await asyncio.sleep(0.01)
    assert await a.release_expired() == 2


# -- migrations ----------------------------------------------------------------------------------


async def test_concurrent_migrations_are_safe(
    open_store: OpenStore, new_schema: Callable[[], str], admin: asyncpg.Connection
) -> None:
    schema = new_schema()  # does not exist yet: every instance tries to create it
    stores = await asyncio.gather(*(open_store(schema) for _ in range(4)))
    versions = await admin.fetch(f'SELECT version, name FROM "{schema}".schema_migrations')
    assert sorted(v["version"] for v in versions) == list(range(1, len(MIGRATIONS) + 1))
    wallet = await stores[0].create_wallet("seen by all", 5)
    for store in stores:
        assert await store.get_wallet(wallet.id) == wallet
    again = await open_store(schema)  # a current schema: nothing to do
    assert await again.get_wallet(wallet.id) == wallet


async def test_open_without_migrating_fails_clearly(
    pg_url: str, new_schema: Callable[[], str], admin: asyncpg.Connection
) -> None:
    missing, empty = new_schema(), new_schema()
    await admin.execute(f'CREATE SCHEMA "{empty}"')
    for schema in (missing, empty):
        store = PostgresStore(pg_url, schema=schema)
        with pytest.raises(StorageUnavailable, match="no gateway schema: run `gateway migrate`"):
            await store.open(migrate=False)
        with pytest.raises(StorageUnavailable, match="not open"):
            await store.ping()
    assert not await admin.fetchval(
        "SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = $1)", missing
    )
    assert not await admin.fetchval(
        "SELECT EXISTS (SELECT FROM pg_tables WHERE schemaname = $1)", empty
    )


async def test_outdated_and_newer_schemas_are_refused(
    open_store: OpenStore, new_schema: Callable[[], str], admin: asyncpg.Connection
) -> None:
    schema = new_schema()
    await (await open_store(schema)).close()
    await admin.execute(f'DELETE FROM "{schema}".schema_migrations')
    with pytest.raises(
        StorageUnavailable, match=r"schema version 0, this gateway needs \d+: run `gateway migrate`"
    ):
        await open_store(schema, migrate=False)
    await admin.execute(
        f"INSERT INTO \"{schema}\".schema_migrations VALUES ($1, 'future', 0)", len(MIGRATIONS) + 1
    )
    with pytest.raises(StorageUnavailable, match="newer than this gateway knows"):
        await open_store(schema)


def test_bad_settings_are_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="pool_size"):
        PostgresStore(POSTGRES_URL, pool_size=0)
    with pytest.raises(ValueError, match="schema"):
        PostgresStore(POSTGRES_URL, schema='x"; DROP TABLE wallets; --')


# -- failures become StorageUnavailable ----------------------------------------------------------


async def test_unreachable_server_is_storage_unavailable() -> None:
    store = PostgresStore("postgresql://postgres:secret@127.0.0.1:9/test", connect_timeout_s=2)
    with pytest.raises(StorageUnavailable, match="cannot connect") as caught:
        await store.open()
    assert "secret" not in str(caught.value)


async def test_a_lost_connection_is_storage_unavailable_then_recovers(
    open_store: OpenStore, new_schema: Callable[[], str], admin: asyncpg.Connection
) -> None:
    store = await open_store(new_schema(), pool_size=1)
    wallet = await store.create_wallet("w", 100)
    pid = await store._fetchval("SELECT pg_backend_pid()")  # private, test only
    # killed in the middle of a statement
    slow = asyncio.create_task(store._fetchval("SELECT pg_sleep(10)"))
    await asyncio.sleep(0.2)
    await admin.execute("SELECT pg_terminate_backend($1)", pid)
    with pytest.raises(StorageUnavailable, match=r"PostgreSQL at .* is unavailable"):
        await slow
    assert await store.get_wallet(wallet.id) == wallet  # the pool opened a new connection
    # killed while idle (a server restart): the pool replaces the closed connection
    pid = await store._fetchval("SELECT pg_backend_pid()")
    await admin.execute("SELECT pg_terminate_backend($1)", pid)
    await asyncio.sleep(0.2)
    assert await store.get_wallet(wallet.id) == wallet
    assert await store._fetchval("SELECT pg_backend_pid()") != pid


async def test_a_read_only_server_is_storage_unavailable(
    open_store: OpenStore, new_schema: Callable[[], str], invariants: Invariants
) -> None:
    store = await open_store(new_schema(), pool_size=1)
    wallet = await store.create_wallet("w", 100)
    # What a hot standby does: the pool's one connection refuses writes from now on.
    await store._fetchval("SET default_transaction_read_only = on")  # private, test only
    with pytest.raises(StorageUnavailable, match="read-only"):
        await store.credit(wallet.id, 10)
    with pytest.raises(StorageUnavailable, match="read-only"):
        await store.reserve(
            wallet_id=wallet.id, key_id=None, request_id="r", minimum=1, maximum=1, lease_s=1
        )
    assert await store.get_wallet(wallet.id) == wallet
    await store._fetchval("SET default_transaction_read_only = off")
    await invariants(store)


# -- usage listing at scale ----------------------------------------------------------------------


async def test_usage_listing_uses_indexes_newest_first(
    open_store: OpenStore, new_schema: Callable[[], str], admin: asyncpg.Connection
) -> None:
    schema = new_schema()
    await open_store(schema)
    await admin.execute(
        f"""INSERT INTO "{schema}".usage (request_id, key_id, wallet_id, model, prompt_tokens,
                completion_tokens, status, endpoint, created_at)
            SELECT 'req_' || i, 'k_' || (i % 700), 'w_' || (i % 500), 'm', 1, 1, 'ok',
                   'chat.completions', 1700000000 + i
            FROM generate_series(1, 100000) AS i"""
    )
    await admin.execute(f'ANALYZE "{schema}".usage')
    base = f'SELECT * FROM "{schema}".usage'
    for where, index in (
        ("", "usage_pkey"),
        (" WHERE wallet_id = 'w_7'", "usage_wallet"),
        (" WHERE key_id = 'k_7'", "usage_key"),
    ):
        plan = await admin.fetchval(
            f"EXPLAIN (FORMAT JSON) {base}{where} ORDER BY seq DESC LIMIT 100"
        )
        limit = json.loads(plan)[0]["Plan"]
        [scan] = limit["Plans"]  # no Sort, no Seq Scan: read newest first straight off an index
        assert (limit["Node Type"], scan["Node Type"]) == ("Limit", "Index Scan"), plan
        assert (scan["Index Name"], scan["Scan Direction"]) == (index, "Backward"), plan


# -- one turn per wallet within a process --------------------------------------------------------


async def test_wallet_turns_serialize_one_wallet_and_are_forgotten() -> None:
    """At most one statement per wallet in flight from one process; other wallets do not wait;
    a turn's lock is dropped once nobody wants it, also when a waiter is cancelled."""
    turns = postgres._WalletTurns()
    inside: dict[str, int] = {"a": 0, "b": 0}
    most: dict[str, int] = {"a": 0, "b": 0, "both": 0}

    async def use(wallet: str) -> None:
        async with turns.of(wallet):
            inside[wallet] += 1
            most[wallet] = max(most[wallet], inside[wallet])
            most["both"] = max(most["both"], inside["a"] + inside["b"])
            await asyncio.sleep(0.01)
            inside[wallet] -= 1

    await asyncio.gather(*(use(w) for w in "ab" * 5))
    assert most == {"a": 1, "b": 1, "both": 2}, "one turn per wallet, the two side by side"
    assert turns._locks == {}

    holder = asyncio.create_task(use("a"))
    await asyncio.sleep(0)
    waiter = asyncio.create_task(use("a"))
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.gather(holder, waiter, return_exceptions=True)
    assert turns._locks == {}
