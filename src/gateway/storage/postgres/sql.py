"""The PostgreSQL engine's SQL: its schema steps and the statements that move money, each one
round trip (:mod:`gateway.storage.postgres.store` runs them)."""

from __future__ import annotations

from gateway.money import MAX_MICRO
from gateway.storage.base import UsageStatus
from gateway.storage.rows import (
    KEY_COLUMNS,
    TRANSFER_COLUMNS,
    USAGE_COLUMNS,
    USAGE_FIELDS,
    WALLET_COLUMNS,
)

__all__ = [
    "ABANDONED",
    "CREATE_KEY",
    "CREATE_WALLET",
    "CREDIT",
    "EXTEND",
    "MIGRATIONS",
    "RELEASE_KEYS",
    "RELEASE_PICK",
    "RELEASE_WALLETS",
    "RENEW",
    "RESERVE",
    "SETTLE",
    "TRANSFER_MOVE",
]

#: The database's clock in seconds since the epoch: leases are decided by one clock, whatever
#: the instances' clocks say.
NOW = "EXTRACT(EPOCH FROM clock_timestamp())::float8"

# Ordered schema steps, each recorded in ``schema_migrations`` once applied. Append new steps;
# never edit a released one.
MIGRATIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "initial",
        (
            """CREATE TABLE wallets (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                balance BIGINT NOT NULL DEFAULT 0 CHECK (balance >= 0),
                reserved BIGINT NOT NULL DEFAULT 0 CHECK (reserved >= 0 AND reserved <= balance),
                created_at DOUBLE PRECISION NOT NULL
            )""",
            """CREATE TABLE ledger (
                id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                wallet_id TEXT NOT NULL REFERENCES wallets (id),
                kind TEXT NOT NULL CHECK (kind IN ('credit', 'charge', 'transfer')),
                amount BIGINT NOT NULL,
                balance_after BIGINT NOT NULL,
                request_id TEXT,
                idempotency_key TEXT,
                memo TEXT,
                ref TEXT,
                created_at DOUBLE PRECISION NOT NULL
            )""",
            """CREATE UNIQUE INDEX ledger_idempotency ON ledger (wallet_id, kind, idempotency_key)
                WHERE idempotency_key IS NOT NULL""",
            "CREATE INDEX ledger_wallet ON ledger (wallet_id, id)",
            """CREATE TABLE reservations (
                id TEXT PRIMARY KEY,
                wallet_id TEXT NOT NULL REFERENCES wallets (id),
                key_id TEXT,
                request_id TEXT NOT NULL,
                amount BIGINT NOT NULL CHECK (amount >= 0),
                created_at DOUBLE PRECISION NOT NULL,
                expires_at DOUBLE PRECISION NOT NULL
            )""",
            "CREATE INDEX reservations_expires ON reservations (expires_at)",
            # seq orders usage newest first, stably; no foreign key: an append-only log.
            """CREATE TABLE usage (
                seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                request_id TEXT NOT NULL UNIQUE,
                key_id TEXT,
                wallet_id TEXT NOT NULL,
                model TEXT NOT NULL,
                backend TEXT,
                prompt_tokens BIGINT NOT NULL,
                completion_tokens BIGINT NOT NULL,
                cached_tokens BIGINT NOT NULL DEFAULT 0,
                cost BIGINT NOT NULL DEFAULT 0,
                shortfall BIGINT NOT NULL DEFAULT 0,
                status TEXT NOT NULL,
                stream BOOLEAN NOT NULL DEFAULT FALSE,
                latency_ms BIGINT NOT NULL DEFAULT 0,
                endpoint TEXT NOT NULL,
                extra TEXT,
                created_at DOUBLE PRECISION NOT NULL
            )""",
            "CREATE INDEX usage_wallet ON usage (wallet_id, seq)",
            "CREATE INDEX usage_key ON usage (key_id, seq)",
            """CREATE TABLE keys (
                id TEXT PRIMARY KEY,
                wallet_id TEXT NOT NULL REFERENCES wallets (id),
                name TEXT NOT NULL,
                key_hash TEXT NOT NULL UNIQUE,
                prefix TEXT NOT NULL,
                models TEXT[],
                rpm BIGINT,
                tpm BIGINT,
                spend_limit BIGINT,
                spent BIGINT NOT NULL DEFAULT 0,
                expires_at DOUBLE PRECISION,
                created_at DOUBLE PRECISION NOT NULL,
                revoked_at DOUBLE PRECISION
            )""",
            "CREATE INDEX keys_wallet ON keys (wallet_id)",
            """CREATE TABLE transfers (
                id TEXT PRIMARY KEY,
                from_wallet TEXT NOT NULL REFERENCES wallets (id),
                to_wallet TEXT NOT NULL REFERENCES wallets (id),
                amount BIGINT NOT NULL CHECK (amount > 0),
                idempotency_key TEXT UNIQUE,
                created_at DOUBLE PRECISION NOT NULL
            )""",
        ),
    ),
    (
        # A key's spend limit is held like a wallet: what its reservations hold, beside spent.
        "key_holds",
        (
            "ALTER TABLE keys ADD COLUMN reserved BIGINT NOT NULL DEFAULT 0",
            """UPDATE keys SET reserved = s.amount
            FROM (
                SELECT key_id, SUM(amount) AS amount FROM reservations
                WHERE key_id IS NOT NULL GROUP BY key_id
            ) AS s
            WHERE keys.id = s.key_id AND keys.spend_limit IS NOT NULL""",
        ),
    ),
)

# A usage record replaces an ``abandoned`` one (the request outlived its lease) but nothing else.
ON_USAGE_CONFLICT = (
    "ON CONFLICT (request_id) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in USAGE_FIELDS[1:])
    + f" WHERE usage.status = '{UsageStatus.ABANDONED.value}'"
)

CREATE_WALLET = f"""
WITH w AS (
    INSERT INTO wallets ({WALLET_COLUMNS}) VALUES ($1, $2, $3, 0, $4) RETURNING {WALLET_COLUMNS}
), opening AS (
    INSERT INTO ledger (wallet_id, kind, amount, balance_after, memo, created_at)
    SELECT id, 'credit', balance, balance, 'opening balance', created_at FROM w WHERE balance > 0
)
SELECT {WALLET_COLUMNS} FROM w"""

# A replay (the key is in the ledger) updates nothing; two first uses racing both pass the
# NOT EXISTS, and the unique index refuses the second ledger row (and with it the statement).
CREDIT = f"""
WITH w AS (
    UPDATE wallets SET balance = balance + $2
    WHERE id = $1 AND balance <= {MAX_MICRO} - $2::bigint AND NOT EXISTS (
        SELECT FROM ledger WHERE wallet_id = $1 AND kind = 'credit' AND idempotency_key = $3
    ) RETURNING {WALLET_COLUMNS}
), entry AS (
    INSERT INTO ledger (wallet_id, kind, amount, balance_after, idempotency_key, memo, created_at)
    SELECT id, 'credit', $2, balance, $3, $4, $5 FROM w
)
SELECT {WALLET_COLUMNS} FROM w"""

TRANSFER_MOVE = f"""
WITH t AS (
    INSERT INTO transfers ({TRANSFER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)
    ON CONFLICT (idempotency_key) DO NOTHING RETURNING id
), src AS (
    UPDATE wallets SET balance = balance - $4 FROM t WHERE wallets.id = $2 RETURNING balance
), dst AS (
    UPDATE wallets SET balance = balance + $4 FROM t WHERE wallets.id = $3 RETURNING balance
), entries AS (
    INSERT INTO ledger (
        wallet_id, kind, amount, balance_after, idempotency_key, memo, ref, created_at
    )
    SELECT $2, 'transfer', -$4::bigint, src.balance, $6, $7, $1, $5 FROM src
    UNION ALL
    SELECT $3, 'transfer', $4, dst.balance, $6, $7, $1, $5 FROM dst
)
SELECT count(*) FROM t"""

# The hold is computed from the locked (latest) rows, and the new values are set from those rows
# too, never from the UPDATE's own view of them: under concurrency the UPDATE first sees the
# version of its snapshot, and PostgreSQL checks constraints on the row it would make of that
# version before it moves to the latest one (``wallets_check`` would fail on a row that is never
# written). A key with a spend limit is held in the same statement (locked after its wallet);
# the reservation row is written only when the hold was. The last column tells a key's limit
# that could not cover the minimum from a wallet that could not.
RESERVE = f"""
WITH w AS (
    SELECT id, reserved, balance - reserved AS free FROM wallets WHERE id = $2 FOR NO KEY UPDATE
), k AS (
    SELECT id, reserved, spend_limit - spent - reserved AS key_left FROM keys
    WHERE id = $3 AND spend_limit IS NOT NULL FOR NO KEY UPDATE
), pick AS (
    SELECT w.id, w.reserved, LEAST($5::bigint, w.free, COALESCE(k.key_left, $5::bigint)) AS amount
    FROM w LEFT JOIN k ON TRUE
), hold AS (
    UPDATE wallets SET reserved = pick.reserved + pick.amount FROM pick
    WHERE wallets.id = pick.id AND pick.amount >= $4::bigint RETURNING pick.amount
), key_hold AS (
    UPDATE keys SET reserved = k.reserved + hold.amount FROM k, hold WHERE keys.id = k.id
), r AS (
    INSERT INTO reservations (id, wallet_id, key_id, request_id, amount, created_at, expires_at)
    SELECT $1, $2, $3, $6, amount, $7, {NOW} + $8 FROM hold RETURNING amount, expires_at
)
SELECT (SELECT amount FROM r), (SELECT expires_at FROM r), (SELECT key_left FROM k)"""

EXTEND = """
WITH r AS (
    SELECT wallet_id, key_id, amount FROM reservations WHERE id = $1 FOR UPDATE
), w AS (
    SELECT w.id, w.reserved, w.balance - w.reserved AS free
    FROM wallets w JOIN r ON w.id = r.wallet_id FOR NO KEY UPDATE OF w
), k AS (
    SELECT k.id, k.reserved, k.spend_limit - k.spent - k.reserved AS key_left
    FROM keys k JOIN r ON k.id = r.key_id WHERE k.spend_limit IS NOT NULL FOR NO KEY UPDATE OF k
), pick AS (
    SELECT w.id, w.reserved, LEAST($3::bigint, w.free, COALESCE(k.key_left, $3::bigint)) AS amount
    FROM w LEFT JOIN k ON TRUE
), hold AS (
    UPDATE wallets SET reserved = pick.reserved + pick.amount FROM pick
    WHERE wallets.id = pick.id AND pick.amount >= $2::bigint RETURNING pick.amount
), key_hold AS (
    UPDATE keys SET reserved = k.reserved + hold.amount FROM k, hold WHERE keys.id = k.id
)
UPDATE reservations SET amount = r.amount + hold.amount
FROM hold, r WHERE reservations.id = $1 RETURNING reservations.amount"""

# Locks the reservation, then the wallet, then the key; charges at most what the wallet and the
# key's limit have free beside the reservation's hold (all they have free, for a reservation
# released meanwhile); writes the usage record first and moves money only if it was written
# (else nothing changes: a Conflict, or a repeated settle).
SETTLE = f"""
WITH r AS (
    SELECT amount FROM reservations WHERE id = $1 FOR UPDATE
), w AS (
    SELECT id, balance, reserved, COALESCE((SELECT amount FROM r), 0) AS held
    FROM wallets WHERE id = $4 FOR NO KEY UPDATE
), k AS (
    SELECT id, spent, reserved, spend_limit - spent - reserved AS key_left
    FROM keys WHERE id = $3 FOR NO KEY UPDATE
), c AS (
    SELECT w.held, GREATEST(0, LEAST(
        $12::bigint, w.balance - w.reserved + w.held, COALESCE(k.key_left + w.held, $12::bigint)
    )) AS charge
    FROM w LEFT JOIN k ON TRUE
), u AS (
    INSERT INTO usage ({USAGE_COLUMNS})
    SELECT $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, c.charge, $12 - c.charge, $13, $14, $15, $16
    FROM c
    {ON_USAGE_CONFLICT}
    RETURNING cost
), gone AS (
    DELETE FROM reservations WHERE id = $1 AND EXISTS (SELECT FROM u) RETURNING id
), paid AS (
    UPDATE wallets SET balance = w.balance - c.charge, reserved = w.reserved - c.held
    FROM w, c WHERE wallets.id = w.id AND EXISTS (SELECT FROM u)
    RETURNING wallets.id, wallets.balance, c.charge
), entry AS (
    INSERT INTO ledger (wallet_id, kind, amount, balance_after, request_id, created_at)
    SELECT id, 'charge', -charge, balance, $2, $17 FROM paid WHERE charge > 0
), spent AS (
    UPDATE keys SET spent = k.spent + c.charge, reserved = CASE
        WHEN keys.spend_limit IS NULL THEN k.reserved ELSE GREATEST(0, k.reserved - c.held) END
    FROM k, c WHERE keys.id = k.id AND EXISTS (SELECT FROM u)
    AND (c.charge > 0 OR (c.held > 0 AND keys.spend_limit IS NOT NULL))
)
SELECT EXISTS (SELECT FROM r) AS held, (SELECT cost FROM u) AS charge"""

RENEW = f"""
UPDATE reservations SET expires_at = {NOW} + $2
WHERE id = ANY($1::text[])"""

RELEASE_PICK = """
WITH picked AS (
    SELECT id FROM reservations {where} LIMIT {limit} FOR UPDATE SKIP LOCKED
)
DELETE FROM reservations USING picked WHERE reservations.id = picked.id
RETURNING reservations.wallet_id, reservations.key_id, reservations.request_id,
          reservations.amount"""

RELEASE_WALLETS = """
UPDATE wallets SET reserved = wallets.reserved - s.amount
FROM unnest($1::text[], $2::bigint[]) AS s (id, amount) WHERE wallets.id = s.id"""

RELEASE_KEYS = """
UPDATE keys SET reserved = GREATEST(0, keys.reserved - s.amount)
FROM unnest($1::text[], $2::bigint[]) AS s (id, amount)
WHERE keys.id = s.id AND keys.spend_limit IS NOT NULL"""

ABANDONED = f"""
INSERT INTO usage ({USAGE_COLUMNS})
SELECT request_id, key_id, wallet_id, 'unknown', NULL, 0, 0, '{UsageStatus.ABANDONED.value}', $4,
       0, 0, 0, FALSE, 0, 'chat.completions', NULL
FROM unnest($1::text[], $2::text[], $3::text[]) AS a (request_id, key_id, wallet_id)
ON CONFLICT (request_id) DO NOTHING"""

CREATE_KEY = f"""
INSERT INTO keys ({KEY_COLUMNS}) SELECT {", ".join(f"${i}" for i in range(1, 14))}
WHERE EXISTS (SELECT FROM wallets WHERE id = $2) RETURNING {KEY_COLUMNS}"""
