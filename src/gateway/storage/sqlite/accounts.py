"""The SQLite engine's transactions over wallets and keys (creating, crediting, moving money,
revoking), as functions of the connection: :class:`~gateway.storage.sqlite.store.SQLiteStore`
sends them to its writer. A transaction that changes what a wallet has free tells the holds
(:mod:`~gateway.storage.sqlite.holds`), which decide reservations against it."""

from __future__ import annotations

import dataclasses
import sqlite3

from gateway.errors import Conflict, NotFound
from gateway.money import MAX_MICRO
from gateway.storage.base import ApiKey, Transfer, Wallet
from gateway.storage.rows import (
    KEY_COLUMNS,
    TRANSFER_COLUMNS,
    WALLET_COLUMNS,
    key_from_row,
    key_params,
    placeholders,
)
from gateway.storage.rules import cannot_pay, past_the_largest_balance
from gateway.storage.sqlite.holds import Holds
from gateway.storage.sqlite.statements import add_entry, one

__all__ = ["create_key", "create_wallet", "credit", "revoke_key", "transfer"]


def create_wallet(
    conn: sqlite3.Connection, *, wallet_id: str, name: str, balance: int, now: float
) -> Wallet:
    row = one(
        conn,
        f"INSERT INTO wallets ({WALLET_COLUMNS}) VALUES (?, ?, ?, 0, ?) RETURNING {WALLET_COLUMNS}",
        (wallet_id, name, balance, now),
    )
    if balance > 0:
        add_entry(conn, wallet_id, "credit", balance, balance, memo="opening balance")
    return Wallet(*row)


def credit(
    conn: sqlite3.Connection,
    *,
    holds: Holds,
    wallet_id: str,
    amount: int,
    idempotency_key: str | None,
    memo: str | None,
) -> tuple[Wallet, bool]:
    if idempotency_key is not None:
        seen = conn.execute(
            "SELECT 1 FROM ledger WHERE wallet_id = ? AND kind = 'credit' AND idempotency_key = ?",
            (wallet_id, idempotency_key),
        ).fetchall()
        if seen:
            sql = f"SELECT {WALLET_COLUMNS} FROM wallets WHERE id = ?"
            return Wallet(*one(conn, sql, (wallet_id,))), False
    rows = conn.execute(
        f"UPDATE wallets SET balance = balance + ? WHERE id = ? AND balance <= ? - ? "
        f"RETURNING {WALLET_COLUMNS}",
        (amount, wallet_id, MAX_MICRO, amount),
    ).fetchall()
    if not rows:
        if conn.execute("SELECT 1 FROM wallets WHERE id = ?", (wallet_id,)).fetchall():
            raise past_the_largest_balance(wallet_id)
        raise NotFound(f"no wallet {wallet_id!r}", param="wallet_id")
    wallet = Wallet(*rows[0])
    add_entry(conn, wallet_id, "credit", amount, wallet.balance, key=idempotency_key, memo=memo)
    holds.seen(wallet_id, wallet.balance - wallet.reserved)
    return wallet, True


def transfer(
    conn: sqlite3.Connection, *, holds: Holds, transfer: Transfer, memo: str | None
) -> tuple[Transfer, bool]:
    source, target, amount = transfer.from_wallet, transfer.to_wallet, transfer.amount
    key = transfer.idempotency_key
    if key is not None:
        seen = conn.execute(
            f"SELECT {TRANSFER_COLUMNS} FROM transfers WHERE idempotency_key = ?", (key,)
        ).fetchall()
        if seen:
            return Transfer(*seen[0]), False
    found = {
        wallet_id: (balance, free)
        for wallet_id, balance, free in conn.execute(
            "SELECT id, balance, balance - reserved FROM wallets WHERE id IN (?, ?)",
            (source, target),
        ).fetchall()
    }
    for wallet_id, param in ((source, "from_wallet"), (target, "to_wallet")):
        if wallet_id not in found:
            raise NotFound(f"no wallet {wallet_id!r}", param=param)
    available = found[source][1] - holds.unwritten(source)
    if available < amount:
        raise cannot_pay(source, amount, available)
    if found[target][0] > MAX_MICRO - amount:
        raise past_the_largest_balance(target)
    debited = conn.execute(
        "UPDATE wallets SET balance = balance - ? WHERE id = ? AND balance - reserved >= ? "
        "RETURNING balance",
        (amount, source, amount),
    ).fetchall()
    if not debited:
        raise cannot_pay(source, amount, found[source][1])
    holds.seen(source, None)
    holds.seen(target, None)
    credited = one(
        conn,
        "UPDATE wallets SET balance = balance + ? WHERE id = ? RETURNING balance",
        (amount, target),
    )
    conn.execute(
        f"INSERT INTO transfers ({TRANSFER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
        dataclasses.astuple(transfer),
    )
    for wallet_id, signed, after in (
        (source, -amount, debited[0][0]),
        (target, amount, credited[0]),
    ):
        add_entry(conn, wallet_id, "transfer", signed, after, key=key, memo=memo, ref=transfer.id)
    return transfer, True


def create_key(conn: sqlite3.Connection, *, key: ApiKey) -> ApiKey:
    if not conn.execute("SELECT 1 FROM wallets WHERE id = ?", (key.wallet_id,)).fetchall():
        raise NotFound(f"no wallet {key.wallet_id!r}", param="wallet_id")
    params = key_params(key, models_as_json=True)
    try:
        row = one(
            conn,
            f"INSERT INTO keys ({KEY_COLUMNS}) VALUES ({placeholders(len(params))})"
            f" RETURNING {KEY_COLUMNS}",
            params,
        )
    except sqlite3.IntegrityError as exc:
        raise Conflict("a key with this id or secret already exists") from exc
    return key_from_row(row)


def revoke_key(conn: sqlite3.Connection, *, key_id: str, now: float) -> ApiKey | None:
    rows = conn.execute(
        "UPDATE keys SET revoked_at = COALESCE(revoked_at, ?) "
        f"WHERE id = ? RETURNING {KEY_COLUMNS}",
        (now, key_id),
    ).fetchall()
    return key_from_row(rows[0]) if rows else None
