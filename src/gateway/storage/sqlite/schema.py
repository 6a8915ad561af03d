"""The SQLite engine's schema steps, and its one statement built from the column lists."""

from __future__ import annotations

from gateway.storage.rows import USAGE_EXTRA, USAGE_FIELDS

__all__ = ["MIGRATIONS", "UPSERT_PLAIN_USAGE", "UPSERT_USAGE"]

# Ordered schema steps: ``PRAGMA user_version`` is the number of steps applied. Append new steps;
# never edit a released one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE wallets (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            balance INTEGER NOT NULL DEFAULT 0 CHECK (balance >= 0),
            reserved INTEGER NOT NULL DEFAULT 0 CHECK (reserved >= 0 AND reserved <= balance),
            created_at REAL NOT NULL
        )""",
        """CREATE TABLE ledger (
            id INTEGER PRIMARY KEY,
            wallet_id TEXT NOT NULL REFERENCES wallets (id),
            kind TEXT NOT NULL CHECK (kind IN ('credit', 'charge', 'transfer')),
            amount INTEGER NOT NULL,
            balance_after INTEGER NOT NULL,
            request_id TEXT,
            idempotency_key TEXT,
            memo TEXT,
            ref TEXT,
            created_at REAL NOT NULL
        )""",
        """CREATE UNIQUE INDEX ledger_idempotency ON ledger (wallet_id, kind, idempotency_key)
            WHERE idempotency_key IS NOT NULL""",
        "CREATE INDEX ledger_wallet ON ledger (wallet_id, id)",
        """CREATE TABLE reservations (
            id TEXT PRIMARY KEY,
            wallet_id TEXT NOT NULL REFERENCES wallets (id),
            key_id TEXT,
            request_id TEXT NOT NULL,
            amount INTEGER NOT NULL CHECK (amount >= 0),
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL
        ) WITHOUT ROWID""",
        "CREATE INDEX reservations_expires ON reservations (expires_at)",
        # seq orders usage newest-first stably (timestamps tie and clocks step); no foreign key:
        # usage is an append-only log written on the hot path.
        """CREATE TABLE usage (
            seq INTEGER PRIMARY KEY,
            request_id TEXT NOT NULL UNIQUE,
            key_id TEXT,
            wallet_id TEXT NOT NULL,
            model TEXT NOT NULL,
            backend TEXT,
            prompt_tokens INTEGER NOT NULL,
            completion_tokens INTEGER NOT NULL,
            cached_tokens INTEGER NOT NULL DEFAULT 0,
            cost INTEGER NOT NULL DEFAULT 0,
            shortfall INTEGER NOT NULL DEFAULT 0,
            status TEXT NOT NULL,
            stream INTEGER NOT NULL DEFAULT 0,
            latency_ms INTEGER NOT NULL DEFAULT 0,
            endpoint TEXT NOT NULL,
            extra TEXT,
            created_at REAL NOT NULL
        )""",
        "CREATE INDEX usage_wallet ON usage (wallet_id, seq)",
        "CREATE INDEX usage_key ON usage (key_id, seq)",
        """CREATE TABLE keys (
            id TEXT PRIMARY KEY,
            wallet_id TEXT NOT NULL REFERENCES wallets (id),
            name TEXT NOT NULL,
            key_hash TEXT NOT NULL UNIQUE,
            prefix TEXT NOT NULL,
            models TEXT,
            rpm INTEGER,
            tpm INTEGER,
            spend_limit INTEGER,
            spent INTEGER NOT NULL DEFAULT 0,
            expires_at REAL,
            created_at REAL NOT NULL,
            revoked_at REAL
        )""",
        "CREATE INDEX keys_wallet ON keys (wallet_id)",
        """CREATE TABLE transfers (
            id TEXT PRIMARY KEY,
            from_wallet TEXT NOT NULL REFERENCES wallets (id),
            to_wallet TEXT NOT NULL REFERENCES wallets (id),
            amount INTEGER NOT NULL CHECK (amount > 0),
            idempotency_key TEXT UNIQUE,
            created_at REAL NOT NULL
        )""",
    ),
    (
        # A key's spend limit is held like a wallet: what its reservations hold, beside spent.
        "ALTER TABLE keys ADD COLUMN reserved INTEGER NOT NULL DEFAULT 0",
        """UPDATE keys SET reserved = (
            SELECT COALESCE(SUM(amount), 0) FROM reservations WHERE key_id = keys.id
        ) WHERE spend_limit IS NOT NULL""",
    ),
)


# A usage record replaces an ``abandoned`` one (the request outlived its lease) but nothing else:
# the cursor's rowcount is 0 when there was another. (Not RETURNING: SQLite gathers returned
# rows in a temporary table first, which cost 4-5 us a settlement.)
def _upsert_usage_sql(columns: list[str], nulls: list[str]) -> str:
    """Bind ``columns`` (the first is ``request_id``); ``nulls`` are left NULL."""
    updates = [*(f"{c} = excluded.{c}" for c in columns[1:]), *(f"{c} = NULL" for c in nulls)]
    return (
        f"INSERT INTO usage ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) "
        f"ON CONFLICT (request_id) DO UPDATE SET {', '.join(updates)} "
        "WHERE usage.status = 'abandoned'"
    )


_USAGE = list(USAGE_FIELDS)
UPSERT_USAGE = _upsert_usage_sql(_USAGE, [])
#: The same for a record without ``extra`` (most are): its 15 other columns bound, ``extra``
#: left NULL by the statement instead of bound to None. sqlite3 binds no None without first
#: looking for an adapter for it (two failed attribute lookups, ~3,800 instructions).
UPSERT_PLAIN_USAGE = _upsert_usage_sql(_USAGE[:USAGE_EXTRA], ["extra"])
