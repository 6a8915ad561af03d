"""What only the SQLite engine does: a file that outlives the process, schema versions, and
sqlite3's failures (read-only, full) turned into ``StorageUnavailable`` with nothing half-written.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path

import pytest

from gateway.errors import NotFound, StorageUnavailable
from gateway.storage.base import Reservation, Store, UsageRecord, UsageStatus
from gateway.storage.sqlite import store as sqlite_engine
from gateway.storage.sqlite import writer as sqlite_writer
from gateway.storage.sqlite.holds import Holds
from gateway.storage.sqlite.schema import MIGRATIONS
from gateway.storage.sqlite.store import SQLiteStore
from gateway.storage.sqlite.writer import call_in_worker

Invariants = Callable[[Store], Awaitable[None]]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "gateway.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[SQLiteStore]:
    sqlite = SQLiteStore(str(db_path))
    await sqlite.open()
    try:
        yield sqlite
    finally:
        await sqlite.close()


def _user_version(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _touch(path: Path) -> None:
    path.touch()


def _size(path: Path) -> int | None:
    return path.stat().st_size if path.exists() else None


def _set_user_version(path: Path, version: int) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute(f"PRAGMA user_version = {version}")
    finally:
        conn.close()


def _usage(request_id: str, wallet_id: str, *, padding: int = 0) -> UsageRecord:
    return UsageRecord(
        request_id=request_id,
        key_id=None,
        wallet_id=wallet_id,
        model="gpt-test",
        backend="a",
        prompt_tokens=1,
        completion_tokens=1,
        status=UsageStatus.OK,
        created_at=time.time(),
        extra={"padding": "x" * padding} if padding else {},
    )


def test_bad_settings_are_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="synchronous"):
        SQLiteStore("x.db", synchronous="SOMETIMES")
    with pytest.raises(ValueError, match="busy_timeout"):
        SQLiteStore("x.db", busy_timeout_s=-1)


async def test_data_survives_close_and_reopen(
    store: SQLiteStore, db_path: Path, invariants: Invariants
) -> None:
    wallet = await store.create_wallet("kept", 1_000)
    r = await store.reserve(
        wallet_id=wallet.id, key_id=None, request_id="req-1", minimum=1, maximum=100, lease_s=60
    )
    assert r is not None
    await store.settle(r, _usage("req-1", wallet.id), 40)
    await store.close()

    again = SQLiteStore(str(db_path), synchronous="full")
    await again.open(migrate=False)
    try:
        assert await again.get_wallet(wallet.id) == (await again.list_wallets())[0]
        current = await again.get_wallet(wallet.id)
        assert current is not None
        assert (current.balance, current.reserved) == (960, 0)
        assert [e.amount for e in await again.ledger(wallet.id)] == [-40, 1_000]
        assert [u.request_id for u in await again.list_usage()] == ["req-1"]
        await invariants(again)
    finally:
        await again.close()


async def test_a_served_file_is_locked_to_its_server_which_releases_every_reservation(
    db_path: Path, tmp_path: Path
) -> None:
    """A server takes the file to itself (another server on it, by whatever path, fails to
    start; the CLI's ``open`` does not lock), so a reservation left in it belongs to a request
    that died with the previous server: ``serve`` releases it, lease or not."""
    link = tmp_path / "elsewhere" / "ledger.db"
    link.parent.mkdir()
    link.symlink_to(db_path)
    first, second, cli = SQLiteStore(str(db_path)), SQLiteStore(str(link)), SQLiteStore(str(link))
    try:
        assert await first.serve(migrate=True, busy=lambda: False) == 0
        wallet = await first.create_wallet("w", 100)
        held = await first.reserve(
            wallet_id=wallet.id, key_id=None, request_id="q1", minimum=1, maximum=30, lease_s=3600
        )
        assert held is not None
        assert await first.extend(held, minimum=10, maximum=10)  # its row is written now

        with pytest.raises(StorageUnavailable, match="another gateway process is serving"):
            await second.serve(migrate=True, busy=lambda: False)
        await cli.open()
        assert _books(db_path, wallet.id) == (100, 40, 1, 100)
        await cli.close()

        await first.close()  # (the process dies: its request with it)
        assert await second.serve(migrate=True, busy=lambda: False) == 1
        assert _books(db_path, wallet.id) == (100, 0, 0, 100)
        [abandoned] = await second.list_usage(wallet_id=wallet.id)
        assert (abandoned.request_id, abandoned.status) == ("q1", "abandoned")
    finally:
        for store in (first, second, cli):
            await store.close()


async def test_schema_version_is_recorded(store: SQLiteStore, db_path: Path) -> None:
    assert _user_version(db_path) == len(MIGRATIONS)


async def test_open_without_migrating_an_empty_file_fails_clearly(db_path: Path) -> None:
    _touch(db_path)
    store = SQLiteStore(str(db_path))
    with pytest.raises(StorageUnavailable, match=r"schema version 0, this gateway needs \d+"):
        await store.open(migrate=False)
    with pytest.raises(StorageUnavailable, match="not open"):
        await store.ping()
    assert _size(db_path) == 0  # nothing was written


async def test_open_without_migrating_a_missing_file_creates_nothing(db_path: Path) -> None:
    store = SQLiteStore(str(db_path))
    with pytest.raises(StorageUnavailable, match="cannot open"):
        await store.open(migrate=False)
    assert _size(db_path) is None


async def test_a_newer_schema_is_refused(store: SQLiteStore, db_path: Path) -> None:
    await store.close()
    _set_user_version(db_path, len(MIGRATIONS) + 1)
    newer = SQLiteStore(str(db_path))
    with pytest.raises(StorageUnavailable, match="newer than this gateway"):
        await newer.open()


async def test_migrate_brings_an_old_file_up_to_date(db_path: Path) -> None:
    sqlite3.connect(db_path).close()
    store = SQLiteStore(str(db_path))
    await store.open()  # migrate=True is the default
    try:
        await store.create_wallet("w")
    finally:
        await store.close()
    assert _user_version(db_path) == len(MIGRATIONS)


async def test_read_only_database_refuses_writes_but_reads(
    store: SQLiteStore, db_path: Path
) -> None:
    wallet = await store.create_wallet("w", 1_000)
    await store.close()

    # mode=ro makes SQLite itself refuse writes (chmod does not stop root)
    readonly = SQLiteStore(f"file:{db_path}?mode=ro")
    await readonly.open(migrate=False)
    try:
        assert await readonly.get_wallet(wallet.id) == wallet
        await readonly.ping()
        with pytest.raises(StorageUnavailable, match="readonly"):
            await readonly.credit(wallet.id, 10)
        with pytest.raises(StorageUnavailable, match="readonly"):
            await readonly.reserve(
                wallet_id=wallet.id, key_id=None, request_id="r", minimum=1, maximum=1, lease_s=1
            )
        assert await readonly.get_wallet(wallet.id) == wallet
        assert len(await readonly.ledger(wallet.id)) == 1
    finally:
        await readonly.close()
    # migrate=True is fine too while the schema is current: it writes nothing
    readonly = SQLiteStore(f"file:{db_path}?mode=ro")
    await readonly.open()
    await readonly.close()


async def test_a_full_disk_rolls_back_whole_transactions(
    store: SQLiteStore, invariants: Invariants
) -> None:
    wallet = await store.create_wallet("w", 10**12)
    # Private access, test only: cap the file at its current size, as a full disk would.
    await call_in_worker(
        store._open().db,
        lambda conn: conn.execute(
            f"PRAGMA max_page_count = {conn.execute('PRAGMA page_count').fetchone()[0] + 2}"
        ),
    )
    error: StorageUnavailable | None = None
    for i in range(1_000):
        r = await store.reserve(
            wallet_id=wallet.id, key_id=None, request_id=f"q{i}", minimum=1, maximum=10, lease_s=60
        )
        assert r is not None
        held = await store.get_wallet(wallet.id)
        entries = await store.ledger(wallet.id, limit=100_000)
        try:  # the ledger entry fits, the large usage record does not: all must roll back
            await store.settle(r, _usage(f"q{i}", wallet.id, padding=3_000), 7)
        except StorageUnavailable as exc:
            error = exc
            break
    assert error is not None, "the database never filled up"
    assert "full" in str(error)
    assert await store.get_wallet(wallet.id) == held  # the hold is still there, no charge
    assert await store.ledger(wallet.id, limit=100_000) == entries
    assert [u.request_id for u in await store.list_usage(limit=100_000)] == [
        f"q{n}" for n in reversed(range(i))
    ]
    await store.ping()  # still serves reads
    await invariants(store)


async def test_after_a_failed_write_a_reservation_waits_for_its_row(
    store: SQLiteStore, invariants: Invariants
) -> None:
    """Once a write failed for want of storage, ``reserve`` returns only once the reservation's
    row is written (so no request goes upstream on a hold storage may not keep), and refuses
    when it cannot be; the first write that succeeds again ends that."""
    wallet = await store.create_wallet("w", 10**6)

    async def query_only(on: bool) -> None:  # every write then fails, as on a full disk
        await call_in_worker(
            store._open().db, lambda conn: conn.execute(f"PRAGMA query_only = {int(on)}")
        )

    def reserve(request_id: str) -> Awaitable[Reservation | None]:
        return store.reserve(
            wallet_id=wallet.id, key_id=None, request_id=request_id, minimum=1, maximum=10,
            lease_s=60,
        )  # fmt: skip

    first = await reserve("q1")
    assert first is not None
    assert first.id in store._rowless
    await query_only(True)
    with pytest.raises(StorageUnavailable):
        await store.settle(first, _usage("q1", wallet.id), 7)
    with pytest.raises(StorageUnavailable):  # its row cannot be written: refused
        await reserve("q2")
    await query_only(False)
    second = await reserve("q3")
    assert second is not None
    assert second.id not in store._rowless
    written = await store.get_wallet(wallet.id)
    assert written is not None
    assert written.reserved >= second.amount
    third = await reserve("q4")  # storage took a write: back to rows written behind
    assert third is not None
    assert third.id in store._rowless
    for reservation, rid in ((first, "q1"), (second, "q3"), (third, "q4")):
        await store.settle(reservation, _usage(rid, wallet.id), 7)
    await invariants(store)


async def test_queued_writes_commit_together_and_fail_alone(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes: list[int] = []
    run_batch = sqlite_writer._run_batch

    def spy(
        conn: sqlite3.Connection, ops: list[sqlite_writer.Op], holds: Holds, **kw: bool
    ) -> None:
        sizes.append(len(ops))
        run_batch(conn, ops, holds, **kw)

    monkeypatch.setattr(sqlite_writer, "_run_batch", spy)
    wallet = await store.create_wallet("w")
    targets = [wallet.id if i % 3 else "w_missing" for i in range(30)]
    writer = store._open()  # private, test only: keep the worker busy while writes queue
    busy = asyncio.ensure_future(
        call_in_worker(writer.db, partial(writer.locked, lambda conn: time.sleep(0.05)))
    )
    await asyncio.sleep(0.01)  # the worker is in it, holding the connection
    results = await asyncio.gather(
        *(store.credit(target, 10) for target in targets), return_exceptions=True
    )
    await busy
    assert sizes[-1] == 30  # one transaction for all, one savepoint each
    assert [isinstance(r, NotFound) for r in results] == [t == "w_missing" for t in targets]
    current = await store.get_wallet(wallet.id)
    assert current is not None
    assert current.balance == 10 * targets.count(wallet.id)
    assert len(await store.ledger(wallet.id)) == targets.count(wallet.id)


async def test_a_lone_write_that_fails_leaves_nothing_behind(store: SQLiteStore) -> None:
    """A write alone in its transaction runs without a savepoint: if it raises, the whole
    transaction is rolled back, and the next write starts clean."""

    def half_then_fail(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO wallets (id, name, created_at) VALUES ('w_half', 'h', 0)")
        raise NotFound("no such thing")

    with pytest.raises(NotFound):
        await store._write(half_then_fail)
    assert await store.get_wallet("w_half") is None
    assert not store._open().db._conn.in_transaction
    wallet = await store.create_wallet("after")
    assert await store.get_wallet(wallet.id) == wallet


async def test_a_locked_database_is_unavailable_until_released(db_path: Path) -> None:
    store = SQLiteStore(str(db_path), busy_timeout_s=0.05)
    await store.open()
    try:
        wallet = await store.create_wallet("w")
        other = sqlite3.connect(db_path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            with pytest.raises(StorageUnavailable, match="locked"):
                await store.credit(wallet.id, 5)
            assert await store.get_wallet(wallet.id) == wallet  # reads go on (WAL)
            other.execute("ROLLBACK")
        finally:
            other.close()
        credited, _ = await store.credit(wallet.id, 5)
        assert credited.balance == 5
    finally:
        await store.close()


async def test_two_stores_on_one_file_never_overdraw(
    store: SQLiteStore, db_path: Path, invariants: Invariants
) -> None:
    wallet = await store.create_wallet("shared", 5_000)
    second = SQLiteStore(str(db_path))  # another connection and thread, like another process
    await second.open()
    try:

        async def one(instance: SQLiteStore, n: int) -> int:
            r = await instance.reserve(
                wallet_id=wallet.id, key_id=None, request_id=f"q{n}", minimum=50, maximum=100,
                lease_s=60,
            )  # fmt: skip
            if r is None:
                return 0
            return (await instance.settle(r, _usage(f"q{n}", wallet.id), 80)).cost

        costs = await asyncio.gather(*(one((store, second)[n % 2], n) for n in range(200)))
        current = await second.get_wallet(wallet.id)
        assert current is not None
        assert (current.balance, current.reserved) == (5_000 - sum(costs), 0)
        assert current.balance >= 0
        await invariants(second)
    finally:
        await second.close()


async def test_listings_read_indexes_in_order(store: SQLiteStore) -> None:
    """Usage and ledger listings stay fast with millions of rows: no full scan, no sort."""
    wallet = await store.create_wallet("w", 100)
    statements: list[str] = []
    await call_in_worker(store._open().db, lambda conn: conn.set_trace_callback(statements.append))
    await store.list_usage(wallet_id=wallet.id, limit=10)
    await store.list_usage(key_id="k_1", limit=10)
    await store.list_usage(wallet_id=wallet.id, key_id="k_1", limit=10)
    await store.list_usage(limit=10)
    await store.ledger(wallet.id, limit=10)
    await call_in_worker(store._open().db, lambda conn: conn.set_trace_callback(None))
    statements = [sql for sql in statements if sql.startswith("SELECT")]  # not the busy timeout
    assert len(statements) == 5
    for sql in statements:
        plan = await call_in_worker(
            store._open().db,
            lambda conn, sql=sql: conn.execute("EXPLAIN QUERY PLAN " + sql).fetchall(),
        )
        details = " | ".join(row[-1] for row in plan)
        assert "TEMP B-TREE" not in details, (sql, details)
        assert "USING INDEX" in details or details == "SCAN usage", (sql, details)


# -- reservations decided on the loop, rows written behind (storage/holds.py) -----------------
async def _settled(store: SQLiteStore, wallet_id: str, request_id: str, cost: int) -> UsageRecord:
    reservation = await store.reserve(
        wallet_id=wallet_id, key_id=None, request_id=request_id, minimum=1, maximum=cost,
        lease_s=60,
    )  # fmt: skip
    assert reservation is not None
    return await store.settle(reservation, _usage(request_id, wallet_id), cost)


def _books(db_path: Path, wallet_id: str) -> tuple[int, int, int, int]:
    """(balance, reserved, reservation rows, sum of ledger amounts) straight from the file."""
    with sqlite3.connect(db_path) as conn:
        balance, reserved = conn.execute(
            "SELECT balance, reserved FROM wallets WHERE id = ?", (wallet_id,)
        ).fetchone()
        rows = conn.execute("SELECT COUNT(*) FROM reservations").fetchone()[0]
        ledger = conn.execute(
            "SELECT COALESCE(SUM(amount), 0) FROM ledger WHERE wallet_id = ?", (wallet_id,)
        ).fetchone()[0]
    return balance, reserved, rows, ledger


async def test_a_quick_request_never_has_a_reservation_row_a_slow_one_gets_one(
    store: SQLiteStore, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_engine, "ROW_AFTER_S", 0.05)
    wallet = await store.create_wallet("w", 1_000)
    quick = await store.reserve(
        wallet_id=wallet.id, key_id=None, request_id="q1", minimum=1, maximum=100, lease_s=60
    )
    assert quick is not None
    seen = await store.get_wallet(wallet.id)
    assert seen is not None
    assert seen.reserved == 100  # held, though no row says so
    assert _books(db_path, wallet.id) == (1_000, 0, 0, 1_000)
    await store.settle(quick, _usage("q1", wallet.id), 40)
    assert _books(db_path, wallet.id) == (960, 0, 0, 960)

    slow = await store.reserve(
        wallet_id=wallet.id, key_id=None, request_id="q2", minimum=1, maximum=300, lease_s=60
    )
    assert slow is not None
    await asyncio.sleep(0.2)  # still running after ROW_AFTER_S: its row is written
    assert _books(db_path, wallet.id) == (960, 300, 1, 960)
    seen = await store.get_wallet(wallet.id)
    assert seen is not None
    assert seen.reserved == 300  # counted once
    await store.settle(slow, _usage("q2", wallet.id), 120)
    assert _books(db_path, wallet.id) == (840, 0, 0, 840)


async def test_an_extended_reservation_gets_its_row_first(
    store: SQLiteStore, db_path: Path
) -> None:
    wallet = await store.create_wallet("w", 1_000)
    r = await store.reserve(
        wallet_id=wallet.id, key_id=None, request_id="q", minimum=1, maximum=100, lease_s=60
    )
    assert r is not None
    grown = await store.extend(r, minimum=50, maximum=50)
    assert grown is not None
    assert grown.amount == 150
    assert _books(db_path, wallet.id) == (1_000, 150, 1, 1_000)
    await store.settle(grown, _usage("q", wallet.id), 150)
    assert _books(db_path, wallet.id) == (850, 0, 0, 850)


async def test_concurrent_holds_never_take_more_than_the_wallet_has(
    store: SQLiteStore, db_path: Path
) -> None:
    wallet = await store.create_wallet("w", 1_000)
    reservations = await asyncio.gather(
        *(
            store.reserve(
                wallet_id=wallet.id,
                key_id=None,
                request_id=f"q{i}",
                minimum=60,
                maximum=100,
                lease_s=60,
            )
            for i in range(15)
        )
    )
    granted = [r for r in reservations if r is not None]
    assert sum(r.amount for r in granted) <= 1_000
    assert all(r.amount >= 60 for r in granted)
    assert len(granted) == 10  # ten of 100 each, then nothing of at least 60 is left
    await asyncio.gather(
        *(store.settle(r, _usage(r.request_id, wallet.id), r.amount) for r in granted)
    )
    assert _books(db_path, wallet.id) == (0, 0, 0, 0)


async def test_a_credit_made_by_another_process_is_seen_when_the_wallet_looks_short(
    store: SQLiteStore, db_path: Path
) -> None:
    wallet = await store.create_wallet("w", 100)
    await _settled(store, wallet.id, "q1", 100)  # this process now knows the wallet is empty
    with sqlite3.connect(db_path) as other:  # the CLI, say
        other.execute("UPDATE wallets SET balance = balance + 500 WHERE id = ?", (wallet.id,))
    usage = await _settled(store, wallet.id, "q2", 200)
    assert (usage.cost, usage.shortfall) == (200, 0)


async def test_money_moved_out_by_another_process_before_the_row_is_written_is_never_overdrawn(
    store: SQLiteStore, db_path: Path
) -> None:
    wallet = await store.create_wallet("w", 1_000)
    await _settled(store, wallet.id, "q0", 1)  # known: 999

    def cli_transfer_then_wait(conn: sqlite3.Connection) -> None:
        with sqlite3.connect(db_path, isolation_level=None) as other:
            other.execute("UPDATE wallets SET balance = balance - 900 WHERE id = ?", (wallet.id,))
        time.sleep(0.05)

    busy = asyncio.ensure_future(call_in_worker(store._open().db, cli_transfer_then_wait))
    await asyncio.sleep(0.01)  # the worker is in it
    reservation = await store.reserve(
        wallet_id=wallet.id, key_id=None, request_id="q1", minimum=1, maximum=500, lease_s=60
    )
    assert reservation is not None
    assert reservation.amount == 500  # decided on what was known
    await busy
    usage = await store.settle(reservation, _usage("q1", wallet.id), 500)
    assert (usage.cost, usage.shortfall) == (99, 401)  # what was left, and the rest recorded
    assert _books(db_path, wallet.id)[:3] == (0, 0, 0)


async def test_a_reservation_row_that_cannot_be_written_is_charged_from_the_wallet(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_engine, "ROW_AFTER_S", 0)  # the row is due at once
    store = SQLiteStore(str(db_path), busy_timeout_s=0.05)
    await store.open()
    try:
        wallet = await store.create_wallet("w", 1_000)
        await _settled(store, wallet.id, "q0", 1)  # known: 999, so the next hold is decided here
        other = sqlite3.connect(db_path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            reservation = await store.reserve(
                wallet_id=wallet.id, key_id=None, request_id="q1", minimum=1, maximum=300,
                lease_s=60,
            )  # fmt: skip
            assert reservation is not None
            with pytest.raises(StorageUnavailable):
                await store.credit(wallet.id, 1)  # a write queued after the row's: both fail
            seen = await store.get_wallet(wallet.id)
            assert seen is not None
            assert seen.reserved == 0  # the hold whose row failed was released
            other.execute("ROLLBACK")
        finally:
            other.close()
        usage = await store.settle(reservation, _usage("q1", wallet.id), 250)
        assert (usage.cost, usage.shortfall) == (250, 0)  # charged all the same
        assert _books(db_path, wallet.id) == (749, 0, 0, 749)
    finally:
        await store.close()


async def test_a_waited_for_write_runs_on_the_loop_only_when_that_is_safe(db_path: Path) -> None:
    """Idle worker, NORMAL: on the loop (no thread hop). FULL, or the write lock held by
    another process: in the worker, which may wait for the lock; the loop never does."""
    here = threading.get_ident()

    def where(conn: sqlite3.Connection) -> int:
        conn.execute("PRAGMA user_version")
        return threading.get_ident()

    for synchronous, inline in (("NORMAL", True), ("FULL", False)):
        store = SQLiteStore(str(db_path), synchronous=synchronous, busy_timeout_s=2)
        await store.open()
        try:
            assert (await store._write(where) == here) is inline
            other = sqlite3.connect(db_path, isolation_level=None)
            try:
                other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
                loop = asyncio.get_running_loop()
                loop.call_later(0.2, other.execute, "ROLLBACK")  # the loop is free to do this
                assert await store._write(where) != here
            finally:
                other.close()
        finally:
            await store.close()


async def test_a_settlement_with_the_writer_idle_is_committed_without_a_turn_of_the_loop(
    store: SQLiteStore, db_path: Path
) -> None:
    """With the writer idle the settlement is committed before its coroutine first suspends;
    when a write may not run on the loop (``inline_when``, as with other requests in flight)
    the worker commits it."""
    wallet = await store.create_wallet("w", 1_000)

    async def reserve(request_id: str) -> Reservation:
        reservation = await store.reserve(
            wallet_id=wallet.id, key_id=None, request_id=request_id,
            minimum=1, maximum=300, lease_s=60,
        )  # fmt: skip
        assert reservation is not None
        return reservation

    first = await reserve("q1")
    settling = store.settle(first, _usage("q1", wallet.id), 120)
    with pytest.raises(StopIteration) as finished:
        settling.send(None)  # runs to its end at once: no await on the worker
    written: UsageRecord = finished.value.value
    assert (written.cost, written.shortfall) == (120, 0)
    assert _books(db_path, wallet.id) == (880, 0, 0, 880)  # on disk, read by another connection

    second = await reserve("q2")
    store.inline_when = lambda: False
    settling = asyncio.ensure_future(store.settle(second, _usage("q2", wallet.id), 50))
    await asyncio.sleep(0)
    assert not settling.done()  # waiting for the worker
    assert (await settling).cost == 50
    assert _books(db_path, wallet.id) == (830, 0, 0, 830)


async def test_the_page_cache_is_sized_for_a_big_ledger(store: SQLiteStore) -> None:
    size = await call_in_worker(
        store._open().db, lambda conn: conn.execute("PRAGMA cache_size").fetchone()[0]
    )
    assert size == -sqlite_engine.CACHE_KIB  # KiB, where SQLite's default is 2 MiB (-2000)


# -- WAL checkpoints (storage/checkpoints.py) ---------------------------------------------------
# In WAL mode the database file grows only when a checkpoint copies pages into it (_size).
async def _some_writes(store: SQLiteStore) -> None:
    """About 100 WAL frames: far from SQLite's own checkpoint mark (1,000)."""
    for n in range(20):
        await store.create_wallet(f"w{n}", 10)


async def test_by_default_a_few_writes_stay_in_the_wal(db_path: Path) -> None:
    store = SQLiteStore(str(db_path))
    await store.open()
    try:
        before = _size(db_path)
        await _some_writes(store)
        await asyncio.sleep(0.3)
        assert _size(db_path) == before
    finally:
        await store.close()


async def test_checkpoints_behind_copy_the_wal_into_the_file(db_path: Path) -> None:
    store = SQLiteStore(str(db_path))
    await store.open()
    try:
        before = _size(db_path)  # the header page: the schema is still in the WAL
        await store.checkpoint_behind(every_s=0.05)
        await _some_writes(store)
        deadline = time.monotonic() + 10
        while _size(db_path) == before:
            assert time.monotonic() < deadline, "no checkpoint in 10 s"
            await asyncio.sleep(0.05)
        wallet = await store.create_wallet("after", 1)  # writes go on beside them
        assert await store.get_wallet(wallet.id) == wallet
    finally:
        await store.close()
    reopened = sqlite3.connect(db_path)
    try:
        assert reopened.execute("SELECT COUNT(*) FROM wallets").fetchone()[0] == 21
    finally:
        reopened.close()
