"""The statements the SQLite engine's transactions share: running one, the schema's steps, the
ledger's entries, the holds on wallets and keys, the usage upsert. Each runs inside a
transaction, on whichever thread holds the connection."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

from gateway.storage.base import UsageRecord
from gateway.storage.rows import USAGE_EXTRA, usage_params
from gateway.storage.sqlite.schema import MIGRATIONS, UPSERT_PLAIN_USAGE, UPSERT_USAGE

__all__ = [
    "CHARGE",
    "Row",
    "add_entry",
    "apply_migrations",
    "hold",
    "hold_key",
    "in_transaction",
    "key_left",
    "one",
    "probe_write",
    "upsert_usage",
    "usage_values",
]

T = TypeVar("T")
Row = tuple[Any, ...]


def in_transaction(fn: Callable[[sqlite3.Connection], T], conn: sqlite3.Connection) -> T:
    """Run ``fn`` between ``BEGIN IMMEDIATE`` and ``COMMIT``; roll back on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise
    return result


def probe_write(conn: sqlite3.Connection) -> None:
    """A write that changes nothing: the schema version, rewritten as it is (one page through
    the WAL; on a full disk it fails like any other write)."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    conn.execute(f"PRAGMA user_version = {version}")


def apply_migrations(conn: sqlite3.Connection) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]  # again, under the write lock
    for step in MIGRATIONS[version:]:
        for statement in step:
            conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")


def one(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> Row:
    rows = conn.execute(sql, params).fetchall()
    if len(rows) != 1:
        raise RuntimeError(f"expected one row, got {len(rows)}: {sql}")
    return cast(Row, rows[0])


#: A request's charge: ``add_entry`` with no key, memo or ref, those columns left NULL by the
#: statement rather than bound to None (see ``UPSERT_PLAIN_USAGE``).
CHARGE = (
    "INSERT INTO ledger (wallet_id, kind, amount, balance_after, request_id, created_at) "
    "VALUES (?, 'charge', ?, ?, ?, ?)"
)


def upsert_usage(conn: sqlite3.Connection, params: list[Any]) -> bool:
    """Write a usage record (:func:`usage_values`); False: another one of the request's was
    there."""
    if params[USAGE_EXTRA] is None:
        return bool(conn.execute(UPSERT_PLAIN_USAGE, params[:USAGE_EXTRA]).rowcount)
    return bool(conn.execute(UPSERT_USAGE, params).rowcount)


def add_entry(
    conn: sqlite3.Connection,
    wallet_id: str,
    kind: str,
    amount: int,
    balance_after: int,
    *,
    request_id: str | None = None,
    key: str | None = None,
    memo: str | None = None,
    ref: str | None = None,
) -> None:
    conn.execute(
        "INSERT INTO ledger (wallet_id, kind, amount, balance_after, request_id, "
        "idempotency_key, memo, ref, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (wallet_id, kind, amount, balance_after, request_id, key, memo, ref, time.time()),
    )


def hold(conn: sqlite3.Connection, wallet_id: str, amount: int) -> None:
    cur = conn.execute(
        "UPDATE wallets SET reserved = reserved + ? WHERE id = ? AND balance - reserved >= ?",
        (amount, wallet_id, amount),
    )
    if cur.rowcount != 1:  # impossible under the write lock; roll back rather than overdraw
        raise RuntimeError(f"wallet {wallet_id!r} changed inside a transaction")


def key_left(conn: sqlite3.Connection, key_id: str) -> int | None:
    """What the key's spend limit leaves beyond its spend and written holds; None: no limit
    (or no key)."""
    rows = conn.execute(
        "SELECT spend_limit - spent - reserved FROM keys WHERE id = ?", (key_id,)
    ).fetchall()
    return rows[0][0] if rows else None


def hold_key(conn: sqlite3.Connection, key_id: str | None, amount: int) -> int:
    """Add ``amount`` to the holds of a key with a spend limit; what the limit leaves then."""
    return int(
        one(
            conn,
            "UPDATE keys SET reserved = reserved + ? WHERE id = ? "
            "RETURNING spend_limit - spent - reserved",
            (amount, key_id),
        )[0]
    )


def usage_values(usage: UsageRecord) -> list[Any]:
    """A usage record's values as SQLite binds them (``stream`` an integer)."""
    return usage_params(usage, stream=int)
