"""WAL checkpoints in the background, beside the writes.

SQLite copies the WAL back into the database file in the commit that takes the WAL past
``wal_autocheckpoint`` pages (1,000), and with ``synchronous = NORMAL`` syncs both files there:
work done in the storage thread's group commit under load, or on the event loop for a lone
request. The server also checkpoints every ``every_s`` from a connection and a thread of their
own (``PASSIVE``: it never waits for, nor blocks, the writing connection), so that the commit
at the mark finds most pages copied already. The mark stays where it is: a checkpoint beside
writes that never pause cannot let the WAL start over, only the writer's own can, and a later
mark (tried: 4,000 pages) made the one-connection p99 worse (7.5 -> 9-15 ms).

Measured with ``bench/run.sh --only 1,3`` against the same code without it, runs interleaved
with the bare relay: chat at 64 connections +10% (gateway runs 1,184-1,310 requests/s against
1,007-1,245); one connection p50 and p99 unchanged within the noise.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3

import structlog

from gateway import tasks

__all__ = ["Checkpointer"]

log = structlog.get_logger("gateway.storage")


class Checkpointer:
    """``PASSIVE`` checkpoints of one database, every ``every_s``, on a connection of its own
    used from one thread at a time (asyncio's default executor)."""

    def __init__(self, target: str, *, uri: bool, every_s: float) -> None:
        self._target = target
        self._uri = uri
        self._every_s = every_s
        self._conn: sqlite3.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._running: asyncio.Future[None] | None = None  # the last checkpoint

    async def start(self) -> None:
        self._conn = await asyncio.to_thread(
            sqlite3.connect, self._target, uri=self._uri, check_same_thread=False
        )
        self._task = tasks.start(self._every(), name="sqlite-checkpoints")

    async def _every(self) -> None:
        conn = self._conn
        assert conn is not None, "started"
        failing = False
        while True:
            await asyncio.sleep(self._every_s)
            # shielded: cancelled (closing), the thread still runs; close() waits for it
            running = self._running = tasks.start(
                asyncio.to_thread(_checkpoint, conn), name="sqlite-checkpoint"
            )
            running.add_done_callback(_retrieved)
            try:
                await asyncio.shield(running)
            except sqlite3.Error as exc:  # the disk is full or gone: the writes say so too
                if not failing:
                    log.warning("wal_checkpoint_failed", error=str(exc))
                failing = True
            else:
                failing = False

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._running is not None:  # it may still be running in its thread
            with contextlib.suppress(Exception):
                await self._running
        conn, self._conn = self._conn, None
        if conn is not None:
            await asyncio.to_thread(conn.close)


def _checkpoint(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


def _retrieved(running: asyncio.Future[None]) -> None:
    """A checkpoint's error reaches ``_every``, unless ``close`` cancelled it meanwhile: then
    it is dropped, not reported as an exception nobody retrieved."""
    if not running.cancelled():
        running.exception()
