"""The SQLite engine's one connection, and how writes reach it.

All work on the connection runs on aiosqlite's worker thread, one callable per operation
(:func:`call_in_worker`), never as a series of awaits:

- a read is one callable;
- a write is one callable that runs from ``BEGIN IMMEDIATE`` to ``COMMIT``, so two coroutines'
  transactions cannot interleave, and a coroutine cancelled while it waits cannot leave a
  transaction open: its write still runs to the end, all or nothing;
- writes that queue up while the worker is busy are committed together (group commit), each in
  its own savepoint so that one refused write (``InsufficientQuota``...) rolls back alone: one
  hop to the worker and one back per batch, however many writes it holds. With
  ``synchronous=FULL`` that is one fsync for many requests;
- when the worker is idle (and, in the gateway, one request is in flight: under load group
  commit is worth more), a write that a request waits for runs on the event loop itself, with
  the open batch (:meth:`Writer._inline`): waking an idle thread and being woken back cost
  about 80 µs, more than the transaction. Only with ``synchronous`` NORMAL or OFF (a commit
  then writes the WAL without waiting for the disk), and only if the write lock is free at
  once (the loop never waits for another process). ``_conn_lock`` keeps the two threads from
  using the connection at the same time;
- other processes on the same file are serialised by ``BEGIN IMMEDIATE`` and ``busy_timeout``.

sqlite3 errors that mean the database cannot be used (full, read-only, I/O, locked, corrupt)
become :class:`~gateway.errors.StorageUnavailable` at one boundary (:func:`storage_errors`),
after the transaction was rolled back.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any, TypeVar, cast

import aiosqlite

from gateway import tasks
from gateway.errors import StorageUnavailable
from gateway.storage.sqlite.holds import Holds

__all__ = ["BUGS", "Lost", "Op", "Writer", "call_in_worker", "retrieve", "storage_errors"]

T = TypeVar("T")

_MAX_BATCH = 64  # writes per group commit
# sqlite3 errors that mean a bug, not an unavailable database: they are not StorageUnavailable
BUGS = (
    sqlite3.IntegrityError,
    sqlite3.ProgrammingError,
    sqlite3.InterfaceError,
    sqlite3.NotSupportedError,
)


class Writer:
    """Reads and writes on one aiosqlite connection (see the module's docstring)."""

    def __init__(
        self,
        db: aiosqlite.Connection,
        holds: Holds,
        *,
        busy_timeout_s: float,
        inline_ok: bool,
        inline_when: Callable[[], bool],
    ) -> None:
        self.db = db
        self._holds = holds
        self._busy_ms = int(busy_timeout_s * 1000)
        #: The connection's busy timeout now (it was opened with ``_busy_ms``): 0 while the
        #: loop writes (it must never wait for another process), ``_busy_ms`` in the worker.
        #: Changed only when the other thread takes over, under ``_conn_lock``.
        self._conn_busy_ms = self._busy_ms
        self._inline_ok = inline_ok
        self._inline_when = inline_when
        #: Writes waiting for the worker's next transaction; the loop adds to it, the worker
        #: closes it when it starts on it (both under ``_batch_lock``).
        self._open_batch: _Batch | None = None
        self._unrun = 0  # batches sent to the worker and not run yet (the open one included)
        self._last_batch: _Batch | None = None  # the worker runs batches in the order sent
        self._batch_lock = threading.Lock()
        #: Held by whichever thread uses the connection: the worker, or the loop (inline).
        self._conn_lock = threading.Lock()
        #: The last write failed for want of storage (disk full, I/O).
        self.unwritable = False

    async def close(self) -> None:
        await self.sent()  # rows written behind, not waited for
        with storage_errors("cannot close the SQLite database"):
            await self.db.close()
        self._open_batch = None

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with storage_errors("storage unavailable"):
            return await call_in_worker(self.db, partial(self.locked, fn))

    def locked(self, fn: Callable[[sqlite3.Connection], T], conn: sqlite3.Connection) -> T:
        """In the worker: ``fn`` with the connection to itself."""
        with self._conn_lock:
            self._wait_when_busy(conn)
            return fn(conn)

    async def write(self, fn: Callable[[sqlite3.Connection], T], lost: Lost | None = None) -> T:
        """Run ``fn`` as one transaction; return once it is committed.

        Group commit: the write joins the open batch, or opens one and sends it to the worker.
        The worker closes a batch when it starts on it and runs its writes, each in its own
        savepoint, under one ``COMMIT``: one hop to the worker and one back per batch, however
        many writes it holds. A write that joined a batch runs, whole, even if its caller is
        cancelled meanwhile.
        """
        done = self.write_now(fn, lost)
        if done is not None:
            return cast(T, self.outcome(done))
        op = Op(fn, lost)
        batch = self.submit(op)
        assert batch.task is not None
        try:
            await asyncio.shield(batch.task)
        except asyncio.CancelledError:
            raise  # the batch runs all the same, this write with it
        except BaseException as exc:
            if not op.done:  # the batch never ran (the connection closed first)
                op.done, op.error = True, exc
        return cast(T, self.outcome(op))

    def may_write_now(self) -> bool:
        """Whether a write may run on the loop (then :meth:`write_now` tries)."""
        return self._inline_ok and self._inline_when()

    def write_now(
        self, fn: Callable[[sqlite3.Connection], T], lost: Lost | None = None
    ) -> Op | None:
        """Run ``fn`` as one transaction on the loop, now, if a write may run there (the
        worker idle, the write lock free): its finished op, for :meth:`outcome`. None: it did
        not run; :meth:`write` it."""
        op = Op(fn, lost)
        if self.may_write_now() and self._inline(op):
            return op
        return None

    def outcome(self, op: Op) -> Any:
        """A finished write's result, or its error raised (``StorageUnavailable`` for the
        database's own errors)."""
        if not op.done:
            raise RuntimeError("a queued storage write did not run")
        error = op.error
        if error is None:
            self.unwritable = False
            return op.result
        try:
            with storage_errors("storage unavailable"):
                raise error
        except StorageUnavailable:
            self.unwritable = True
            raise

    def submit(self, op: Op) -> _Batch:
        """Add ``op`` to the open batch, or open one and send it to the worker."""
        db = self.db
        with self._batch_lock:
            batch = self._open_batch
            opened = batch is None or len(batch.ops) >= _MAX_BATCH
            if opened:
                batch = self._open_batch = _Batch()
                self._unrun += 1
            assert batch is not None
            batch.ops.append(op)
        if opened:
            batch.task = tasks.start(
                call_in_worker(db, partial(self._drain, batch)), name="sqlite-batch"
            )
            batch.task.add_done_callback(retrieve)  # written-behind ops have no awaiter
            self._last_batch = batch
        return batch

    async def sent(self) -> None:
        """Return once every write submitted so far has run (or failed)."""
        batch = self._last_batch
        if batch is not None and batch.task is not None and not batch.task.done():
            with contextlib.suppress(Exception):  # its writes' errors are their callers'
                await asyncio.shield(batch.task)

    def _drain(self, batch: _Batch, conn: sqlite3.Connection) -> None:
        """In the worker: close ``batch`` to newcomers, then run it as one transaction (unless
        the loop ran it already, inline)."""
        with self._conn_lock:
            with self._batch_lock:
                if batch.ran:
                    return
                batch.ran = True
                self._unrun -= 1
                if self._open_batch is batch:
                    self._open_batch = None
            self._wait_when_busy(conn)
            _run_batch(conn, batch.ops, self._holds)

    def _wait_when_busy(self, conn: sqlite3.Connection) -> None:
        """In the worker, under ``_conn_lock``: wait for another process's lock, up to the
        busy timeout (the loop set it to 0 if it wrote since)."""
        if self._conn_busy_ms != self._busy_ms:
            conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
            self._conn_busy_ms = self._busy_ms

    def _begin_at_once(self, conn: sqlite3.Connection) -> bool:
        """On the loop, under ``_conn_lock``: ``BEGIN IMMEDIATE`` unless another connection
        holds the write lock: False then, at once (the loop never waits for another process).
        """
        if self._conn_busy_ms:
            conn.execute("PRAGMA busy_timeout = 0")
            self._conn_busy_ms = 0
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error:
            return False
        return True

    def _inline(self, op: Op) -> bool:
        """Run ``op`` now, on the loop, if the worker is idle: with the open batch (written-
        behind rows queued before it), in one transaction. False: the worker must run it."""
        db = self.db
        if not self._conn_lock.acquire(blocking=False):
            return False
        try:
            with self._batch_lock:
                batch = self._open_batch
                # Writes run in the order they were queued: not if an earlier batch waits.
                if self._unrun > (batch is not None):
                    return False
                if batch is not None:
                    if len(batch.ops) >= _MAX_BATCH:
                        return False
                    batch.ran = True  # the worker's drain of it will find nothing to do
                    self._unrun -= 1
                    self._open_batch = None
            conn = db._conn
            if not self._begin_at_once(conn):
                if batch is not None:  # give it back to the worker (only the loop opens one)
                    with self._batch_lock:
                        batch.ran = False
                        self._unrun += 1
                        self._open_batch = batch
                return False
            ops = [*batch.ops, op] if batch is not None else [op]
            _run_batch(conn, ops, self._holds, begun=True)
            return True
        finally:
            self._conn_lock.release()


# -- the boundary to aiosqlite and sqlite3 ---------------------------------------------------


async def call_in_worker(db: aiosqlite.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """Run ``fn(sqlite3_connection)`` on the connection's worker thread: one hop, whole.

    PRIVATE API of aiosqlite (checked with 0.20 to 0.22): ``Connection._execute`` queues a
    callable on the thread that owns the sqlite3 connection and awaits its result, and
    ``Connection._conn`` is that sqlite3 connection. aiosqlite has no public way to run a
    callable there; this function is the only place that relies on its internals.
    """
    raw = db._conn
    return cast(T, await db._execute(fn, raw))  # type: ignore[no-untyped-call]


@contextlib.contextmanager
def storage_errors(context: str) -> Iterator[None]:
    """sqlite3 errors that mean "cannot read or write now" (disk full, read-only, I/O, locked,
    corrupt) become ``StorageUnavailable``. Integrity and programming errors are bugs and pass."""
    try:
        yield
    except BUGS:
        raise
    except sqlite3.Error as exc:
        raise StorageUnavailable(f"{context}: {exc}") from exc


#: Told, in the worker, that a write was not committed (and why).
Lost = Callable[[BaseException], None]


class Op:
    """A write waiting for the worker: its callable, then its outcome."""

    __slots__ = ("done", "error", "fn", "lost", "result")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any], lost: Lost | None = None) -> None:
        self.fn = fn
        #: Called in the worker if the write ends up not committed (written-behind writes).
        self.lost = lost
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = False


class _Batch:
    """Writes committed together, and the task that hands them to the worker."""

    __slots__ = ("ops", "ran", "task")

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.task: asyncio.Future[None] | None = None
        self.ran = False  # taken by the worker, or run inline by the loop


def _run_batch(
    conn: sqlite3.Connection, ops: list[Op], holds: Holds, *, begun: bool = False
) -> None:
    """Run ``ops`` in one transaction, each in a savepoint: an op that raises is rolled back
    alone (a lone op needs no savepoint: the transaction is rolled back). If the transaction
    itself fails (BEGIN, COMMIT, or an error after which SQLite rolled everything back, like a
    full disk), every op fails with that error and nothing is written. ``holds`` journals what
    the ops did to reservations held on the loop, applied on commit."""
    savepoints = len(ops) > 1
    try:
        if not begun:
            conn.execute("BEGIN IMMEDIATE")
        for op in ops:
            if savepoints:
                conn.execute("SAVEPOINT op")
            holds.begin_write()
            try:
                op.result = op.fn(conn)
            except Exception as exc:
                op.error = exc
                holds.drop_write()
                if not conn.in_transaction:
                    raise
                conn.execute("ROLLBACK TO op" if savepoints else "ROLLBACK")
            if savepoints:
                conn.execute("RELEASE op")
        if conn.in_transaction:  # not after a lone op's rollback
            conn.execute("COMMIT")
        holds.commit()
    except BaseException as exc:
        holds.rollback()
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        for op in ops:
            if op.error is None:
                op.error, op.result = exc, None
    finally:
        for op in ops:
            op.done = True
            if op.error is not None and op.lost is not None:
                op.lost(op.error)


def retrieve(task: asyncio.Future[None]) -> None:
    """A batch's outcome is in its ops; a batch that never ran (the connection closed first)
    must not be reported as an exception nobody retrieved."""
    if not task.cancelled():
        task.exception()
