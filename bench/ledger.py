"""Scenario 5's ledger: fill the gateway's own SQLite schema with wallets and usage rows in bulk.

The gateway creates its schema when it starts; the bench starts it once on an empty file, stops
it, and then this module reads the tables' columns (``PRAGMA table_info``) and inserts rows with
plausible values for every column it recognises and for every ``NOT NULL`` column without a
default, so that the fill keeps working while the schema evolves. Indexes are dropped during the
insert and created again after it (that is much faster than keeping them up to date row by row).

One wallet in a hundred-thousand-row share of the usage (``heavy``) gives the admin usage query
a wallet with a long history; the others get about ten rows each, at random.
"""

from __future__ import annotations

import hashlib
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["LedgerInfo", "build", "schema_hash"]

BASE_TIME = 1_700_000_000.0
BALANCE = 1_000_000_000_000  # micro-credits: a million credits each

Value = Callable[[int, Any], Any]  # (row number, wallet id) -> column value


@dataclass(frozen=True)
class LedgerInfo:
    wallets: int
    usage_rows: int
    heavy_wallet: str  # the wallet with the long history
    heavy_rows: int
    typical_wallet: str
    seconds: float


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    notnull: bool
    default: str | None
    pk: int


def schema_hash(db: Path) -> str:
    """A short hash of the schema (tables, indexes, triggers) of ``db``."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY type, name"
        ).fetchall()
    text = "\n".join(f"{t}|{n}|{s}" for t, n, s in rows)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _columns(conn: sqlite3.Connection, table: str) -> list[Column]:
    return [
        Column(name, (ctype or "").upper(), bool(notnull), default, pk)
        for _, name, ctype, notnull, default, pk in conn.execute(f'PRAGMA table_info("{table}")')
    ]


def _unique_columns(conn: sqlite3.Connection, table: str) -> set[str]:
    unique: set[str] = set()
    for _, name, is_unique, *_ in conn.execute(f'PRAGMA index_list("{table}")'):
        if not is_unique:
            continue
        cols = [row[2] for row in conn.execute(f'PRAGMA index_info("{name}")')]
        if len(cols) == 1:
            unique.add(cols[0])
    return unique


def _is_int(col: Column) -> bool:
    return "INT" in col.type or "BOOL" in col.type


def _is_real(col: Column) -> bool:
    return any(t in col.type for t in ("REAL", "FLOA", "DOUB", "NUMERIC", "DECIMAL"))


def _timestamp(col: Column, step: float) -> Value:
    if _is_int(col):
        return lambda i, w: int(BASE_TIME + i * step)
    if _is_real(col) or not col.type:
        return lambda i, w: BASE_TIME + i * step
    return lambda i, w: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(BASE_TIME + i * step))


def _value_for(
    table: str, col: Column, unique: set[str], step: float, usage_table: str
) -> Value | None:
    """How to fill ``col``; ``None`` leaves it out of the INSERT (its default or NULL)."""
    name = col.name.lower()
    single_int_pk = col.pk == 1 and _is_int(col)
    if single_int_pk:
        return None  # rowid alias: SQLite numbers it
    tag = "wal" if table == "wallets" else table[:3]
    known: dict[str, Value] = {
        "id": lambda i, w: f"{tag}_bench_{i:09d}",
        "wallet_id": lambda i, w: w,
        "request_id": lambda i, w: f"req_bench_{i:09d}",
        "name": lambda i, w: f"bench wallet {i}",
        "balance": lambda i, w: BALANCE,
        "reserved": lambda i, w: 0,
        "model": lambda i, w: "bench-model",
        "backend": lambda i, w: "nginx",
        "status": lambda i, w: "ok",
        "endpoint": lambda i, w: "chat.completions",
        "prompt_tokens": lambda i, w: 57 + i % 50,
        "completion_tokens": lambda i, w: 100 + i % 200,
        "cached_tokens": lambda i, w: 0,
        "cost": lambda i, w: 70 + i % 130,
        "shortfall": lambda i, w: 0,
        "stream": lambda i, w: i % 2,
        "latency_ms": lambda i, w: 100 + i % 900,
        "extra": lambda i, w: "{}",
        "kind": lambda i, w: "credit",
        "amount": lambda i, w: BALANCE,
        "balance_after": lambda i, w: BALANCE,
        "currency": lambda i, w: "USD",
    }
    if name == "id" and col.pk == 0 and not col.notnull and name not in unique:
        return None
    if name == "request_id" and table != usage_table and not col.notnull:
        return None  # a credit has no request
    if name in known:
        base = known[name]
    elif name.endswith("_at") or name in ("ts", "time", "timestamp", "created"):
        if not col.notnull and name != "created_at":
            return None  # revoked_at, expires_at...: NULL is the plausible value
        base = _timestamp(col, step)
    elif not col.notnull or col.default is not None:
        return None
    elif _is_int(col):
        base = lambda i, w: 0  # noqa: E731
    elif _is_real(col):
        base = lambda i, w: 0.0  # noqa: E731
    elif "BLOB" in col.type:
        base = lambda i, w: b""  # noqa: E731
    else:
        base = lambda i, w: "x"  # noqa: E731
    if col.name in unique and name not in ("id", "request_id"):
        inner = base
        if _is_int(col):
            return lambda i, w: i
        return lambda i, w: f"{inner(i, w)}-{i}"
    return base


def _insert(
    conn: sqlite3.Connection,
    table: str,
    usage_table: str,
    rows: Iterator[tuple[int, Any]],
    step: float,
    progress: Callable[[str], None],
    total: int,
) -> None:
    cols = _columns(conn, table)
    unique = _unique_columns(conn, table)
    fill: list[tuple[str, Value]] = []
    for col in cols:
        value = _value_for(table, col, unique, step, usage_table)
        if value is not None:
            fill.append((col.name, value))
    names = ", ".join(f'"{n}"' for n, _ in fill)
    marks = ", ".join("?" for _ in fill)
    sql = f'INSERT INTO "{table}" ({names}) VALUES ({marks})'
    getters = [v for _, v in fill]
    batch: list[tuple[Any, ...]] = []
    done = 0
    for i, wallet in rows:
        batch.append(tuple(g(i, wallet) for g in getters))
        if len(batch) >= 200_000:
            conn.executemany(sql, batch)
            done += len(batch)
            batch.clear()
            if done % 1_000_000 == 0:
                progress(f"{table}: {done:,}/{total:,}")
    if batch:
        conn.executemany(sql, batch)


def _find_table(conn: sqlite3.Connection, *candidates: str) -> str | None:
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    for candidate in candidates:
        if candidate in names:
            return candidate
    return None


def build(
    db: Path,
    *,
    wallets: int,
    usage_rows: int,
    heavy_rows: int,
    progress: Callable[[str], None],
    seed: int = 5,
) -> LedgerInfo:
    """Fill ``db`` (a copy of the gateway's empty schema) in place."""
    started = time.monotonic()
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        for pragma in (
            "journal_mode=OFF",
            "synchronous=OFF",
            "locking_mode=EXCLUSIVE",
            "temp_store=MEMORY",
            "cache_size=-1000000",
        ):
            conn.execute(f"PRAGMA {pragma}")
        wallet_table = _find_table(conn, "wallets", "wallet")
        usage_table = _find_table(conn, "usage", "usage_records", "usages")
        if wallet_table is None or usage_table is None:
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master")]
            raise RuntimeError(f"no wallets/usage table in the gateway's schema: {tables}")
        ledger_table = _find_table(conn, "ledger", "ledger_entries", "entries")
        tables = [t for t in (wallet_table, usage_table, ledger_table) if t]
        marks = ",".join("?" for _ in tables)
        indexes = conn.execute(
            f"SELECT name, sql FROM sqlite_master WHERE type='index' AND sql IS NOT NULL "
            f"AND tbl_name IN ({marks})",
            tables,
        ).fetchall()
        conn.execute("BEGIN")
        for name, _ in indexes:
            conn.execute(f'DROP INDEX "{name}"')

        wallet_id = _wallet_ids(conn, wallet_table)

        def wallet_rows() -> Iterator[tuple[int, Any]]:
            for i in range(wallets):
                yield i, wallet_id(i)

        _insert(conn, wallet_table, usage_table, wallet_rows(), 1.0, progress, wallets)
        if ledger_table is not None:  # the opening credit of each wallet
            _insert(conn, ledger_table, usage_table, wallet_rows(), 1.0, progress, wallets)

        rng = random.Random(seed)
        every = max(1, usage_rows // max(1, heavy_rows))

        def usage() -> Iterator[tuple[int, Any]]:
            for i in range(usage_rows):
                if i % every == 0:
                    yield i, wallet_id(0)
                else:
                    yield i, wallet_id(rng.randrange(1, wallets))

        _insert(conn, usage_table, usage_table, usage(), 0.25, progress, usage_rows)
        for name, sql in indexes:
            progress(f"index {name}")
            conn.execute(sql)
        conn.execute("COMMIT")
    finally:
        conn.close()
    return LedgerInfo(
        wallets=wallets,
        usage_rows=usage_rows,
        heavy_wallet=str(wallet_id(0)),
        heavy_rows=len(range(0, usage_rows, every)),
        typical_wallet=str(wallet_id(wallets // 2)),
        seconds=time.monotonic() - started,
    )


def _wallet_ids(conn: sqlite3.Connection, table: str) -> Callable[[int], Any]:
    """The id the i-th bench wallet will have: our text id, or rowid i+1 for integer keys."""
    for col in _columns(conn, table):
        if col.pk == 1:
            if _is_int(col):
                return lambda i: i + 1
            return lambda i: f"wal_bench_{i:09d}"
    return lambda i: f"wal_bench_{i:09d}"
