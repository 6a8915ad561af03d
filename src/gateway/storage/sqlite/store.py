"""The SQLite engine: one file, one connection, WAL.

How work reaches the connection (one worker thread, group commit, writes on the loop when it
is idle, errors at one boundary) is :mod:`gateway.storage.sqlite.writer`; what is written is
here. One process serves a file (its lock file, taken by :meth:`SQLiteStore.serve`), so
reservations are decided in memory and their rows written behind
(:mod:`gateway.storage.sqlite.holds`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from gateway.errors import Conflict, InvalidRequest, StorageUnavailable
from gateway.ids import unique_id
from gateway.storage.base import (
    ApiKey,
    LedgerEntry,
    Reservation,
    Store,
    Transfer,
    UsageRecord,
    UsageStatus,
    Wallet,
)
from gateway.storage.rows import (
    ENTRY_COLUMNS,
    KEY_COLUMNS,
    USAGE_COLUMNS,
    USAGE_COST,
    USAGE_FIELDS,
    USAGE_SHORTFALL,
    WALLET_COLUMNS,
    key_from_row,
    placeholders,
    usage_from_row,
)
from gateway.storage.rules import (
    abandoned,
    check_bounds,
    check_settle,
    key_limit_reached,
    new_transfer,
)
from gateway.storage.sqlite import accounts
from gateway.storage.sqlite.checkpoints import Checkpointer
from gateway.storage.sqlite.holds import Holds, Short, key_account
from gateway.storage.sqlite.schema import MIGRATIONS
from gateway.storage.sqlite.statements import (
    CHARGE,
    apply_migrations,
    hold,
    hold_key,
    in_transaction,
    key_left,
    one,
    probe_write,
    upsert_usage,
    usage_values,
)
from gateway.storage.sqlite.writer import (
    BUGS,
    Lost,
    Op,
    Writer,
    call_in_worker,
    storage_errors,
)

__all__ = ["SQLiteStore"]

T = TypeVar("T")

_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")
#: A request still running this long gets its reservation row (for crash recovery, and for
#: other processes to see the hold); a quicker one never needs one.
ROW_AFTER_S = 1.0
#: SQLite's page cache (its default is 2 MiB). A settlement touches some eight B-trees; on a big
#: ledger (1M wallets, 10M usage rows) their upper pages no longer stay in 2 MiB, and the bench
#: measured chat at 0.82x the empty ledger's requests/s, 0.93x to 1.09x with 64 MiB. Pages are
#: taken as used: a small ledger never fills it.
CACHE_KIB = 64 * 1024
_MIN_SQLITE = (3, 35, 0)  # RETURNING
#: How often a server copies the WAL into the database (storage/sqlite/checkpoints.py).
CHECKPOINT_EVERY_S = 1.0
#: Ids bound in one ``IN (...)`` (SQLite allows 32,766 variables a statement).
_IN_BATCH = 500


class SQLiteStore(Store):
    """``path`` is a file name, ``:memory:``, or a ``file:`` URI (e.g. ``file:a.db?mode=ro``)."""

    def __init__(self, path: str, *, synchronous: str = "NORMAL", busy_timeout_s: float = 5.0):
        if synchronous.upper() not in _SYNCHRONOUS:
            raise ValueError(
                f"synchronous must be one of {', '.join(_SYNCHRONOUS)}, not {synchronous!r}"
            )
        if busy_timeout_s < 0:
            raise ValueError("busy_timeout_s must not be negative")
        self.path = path
        self.synchronous = synchronous.upper()
        self.busy_timeout_s = busy_timeout_s
        self._writer: Writer | None = None
        #: Reservations decided on the loop, their rows written behind (storage/holds.py).
        self._holds = Holds()
        #: Reservations without a row yet, and the timer that writes it (None once their
        #: settlement is under way); loop only.
        self._rowless: dict[str, tuple[asyncio.TimerHandle | None, Reservation]] = {}
        #: Whether to run a write inline now (the gateway says: when it serves one request).
        self.inline_when: Callable[[], bool] = lambda: True
        self._existing_uri = Path(path).absolute().as_uri() + "?mode=rw"
        self._opened: tuple[str, bool] = (path, False)  # what open() connected to, uri or not
        self._checkpointer: Checkpointer | None = None
        self._lock_fd: int | None = None  # <file>.lock, while a server holds the file

    # -- lifecycle -------------------------------------------------------------------------
    async def open(self, *, migrate: bool = True) -> None:
        if self._writer is not None:
            return
        if sqlite3.sqlite_version_info < _MIN_SQLITE:
            raise StorageUnavailable(
                f"SQLite {sqlite3.sqlite_version} is too old: need 3.35 or later"
            )
        target, uri = self.path, self.path.startswith("file:")
        if not migrate and not uri and self.path != ":memory:":
            target, uri = self._existing_uri, True  # never create a file
        with storage_errors(f"cannot open SQLite database {self.path!r}"):
            # Probe first: when aiosqlite's connect fails it stops its worker thread without
            # waiting for it, and the thread may then die on a closed event loop.
            await asyncio.to_thread(lambda: sqlite3.connect(target, uri=uri).close())
            # check_same_thread off: the loop may use the connection too (sqlite_writer.py)
            db = await aiosqlite.connect(
                target, uri=uri, isolation_level=None, check_same_thread=False
            )
        try:
            with storage_errors(f"cannot open SQLite database {self.path!r}"):
                await call_in_worker(db, partial(self._setup, migrate=migrate))
        except BaseException:
            await db.close()
            raise
        self._opened = (target, uri)
        self._writer = Writer(
            db,
            self._holds,
            busy_timeout_s=self.busy_timeout_s,
            inline_ok=self.synchronous in ("OFF", "NORMAL"),
            inline_when=lambda: self.inline_when(),
        )

    def _setup(self, conn: sqlite3.Connection, *, migrate: bool) -> None:
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
        conn.execute("PRAGMA foreign_keys = ON")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise StorageUnavailable(
                f"the database {self.path!r} has schema version {version}, newer than this "
                f"gateway knows ({len(MIGRATIONS)}): upgrade the gateway"
            )
        if version < len(MIGRATIONS) and not migrate:
            raise StorageUnavailable(
                f"the database {self.path!r} has schema version {version}, this gateway needs "
                f"{len(MIGRATIONS)}: open it once with migrations enabled"
            )
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        if version < len(MIGRATIONS):
            in_transaction(apply_migrations, conn)

    async def serve(self, *, migrate: bool, busy: Callable[[], bool]) -> int:
        """Lock the file to this process (another gateway on it fails to start: a file is
        served by one process, so what is still reserved belongs to requests that died with
        the previous one, and every reservation is released), open it, write on the loop only
        while the server is not ``busy`` (under load group commit is worth more), and
        checkpoint the WAL in the background."""
        self._lock_file()
        try:
            await self.open(migrate=migrate)
            self.inline_when = lambda: not busy()
            await self.checkpoint_behind(every_s=CHECKPOINT_EVERY_S)
            return await self.release_expired(all_=True)
        except BaseException:
            await self.close()
            raise

    def _lock_file(self) -> None:
        """Take ``<file>.lock`` (the file the path names, whichever link or relative path
        reaches it), held until :meth:`close`."""
        if self.path == ":memory:" or self.path.startswith("file:"):
            return
        path = Path(self.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(f"{path.resolve()}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StorageUnavailable(
                f"another gateway process is serving {path.resolve()}: a SQLite ledger is "
                "served by one process (use PostgreSQL for several)"
            ) from None
        self._lock_fd = fd

    async def checkpoint_behind(self, every_s: float) -> None:
        """Checkpoint the WAL every ``every_s`` from a connection of its own, beside the writes
        (:mod:`gateway.storage.sqlite.checkpoints`). The server does this; a short CLI command
        leaves it to SQLite. Nothing to do for ``:memory:``."""
        if self._checkpointer is not None or self.path == ":memory:":
            return
        target, uri = self._opened
        checkpointer = Checkpointer(target, uri=uri, every_s=every_s)
        with storage_errors(f"cannot open SQLite database {self.path!r}"):
            await checkpointer.start()
        self._checkpointer = checkpointer

    async def close(self) -> None:
        checkpointer, self._checkpointer = self._checkpointer, None
        if checkpointer is not None:
            await checkpointer.close()
        for timer, _ in self._rowless.values():  # requests still running die with the process
            if timer is not None:
                timer.cancel()
        self._rowless.clear()
        writer, self._writer = self._writer, None
        try:
            if writer is not None:
                await writer.close()
        finally:
            fd, self._lock_fd = self._lock_fd, None
            if fd is not None:
                os.close(fd)

    async def ping(self) -> None:
        await self._read(lambda conn: conn.execute("SELECT 1").fetchall())
        if self._open().unwritable:  # reads work on a full disk: only a write tells it is back
            await self._write(probe_write)

    def _open(self) -> Writer:
        writer = self._writer
        if writer is None:
            raise StorageUnavailable("storage is not open")
        return writer

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._open().read(fn)

    async def _write(self, fn: Callable[[sqlite3.Connection], T], lost: Lost | None = None) -> T:
        return await self._open().write(fn, lost)

    # -- wallets and money -----------------------------------------------------------------
    async def create_wallet(self, name: str, balance: int = 0) -> Wallet:
        if balance < 0:
            raise InvalidRequest("an opening balance must not be negative", param="balance")
        wallet_id = "w_" + secrets.token_hex(8)
        return await self._write(
            partial(
                accounts.create_wallet,
                wallet_id=wallet_id,
                name=name,
                balance=balance,
                now=time.time(),
            )
        )

    async def get_wallet(self, wallet_id: str) -> Wallet | None:
        wallets = await self._read(
            lambda conn: self._wallets(
                conn, f"SELECT {WALLET_COLUMNS} FROM wallets WHERE id = ?", (wallet_id,)
            )
        )
        return wallets[0] if wallets else None

    async def list_wallets(self) -> list[Wallet]:
        return await self._read(
            lambda conn: self._wallets(
                conn, f"SELECT {WALLET_COLUMNS} FROM wallets ORDER BY created_at, id", ()
            )
        )

    def _wallets(self, conn: sqlite3.Connection, sql: str, args: Sequence[Any]) -> list[Wallet]:
        """In the worker: wallets as read, with what the loop holds of them and has not
        written yet (in the worker, so that no commit moves a hold between the two)."""
        out = []
        for row in conn.execute(sql, args).fetchall():
            wallet = Wallet(*row)
            held = self._holds.held(wallet.id)
            if held:
                wallet = dataclasses.replace(wallet, reserved=wallet.reserved + held)
            out.append(wallet)
        return out

    async def credit(
        self,
        wallet_id: str,
        amount: int,
        *,
        idempotency_key: str | None = None,
        memo: str | None = None,
    ) -> tuple[Wallet, bool]:
        if amount <= 0:
            raise InvalidRequest("a credit must be greater than zero", param="amount")
        return await self._write(
            partial(
                accounts.credit,
                holds=self._holds,
                wallet_id=wallet_id,
                amount=amount,
                idempotency_key=idempotency_key,
                memo=memo,
            )
        )

    async def transfer(
        self,
        from_wallet: str,
        to_wallet: str,
        amount: int,
        *,
        idempotency_key: str | None = None,
        memo: str | None = None,
    ) -> tuple[Transfer, bool]:
        transfer = new_transfer(from_wallet, to_wallet, amount, idempotency_key)
        return await self._write(
            partial(accounts.transfer, holds=self._holds, transfer=transfer, memo=memo)
        )

    async def ledger(self, wallet_id: str, limit: int = 100) -> list[LedgerEntry]:
        rows = await self._read(
            lambda conn: conn.execute(
                f"SELECT {ENTRY_COLUMNS} FROM ledger WHERE wallet_id = ? ORDER BY id DESC LIMIT ?",
                (wallet_id, max(0, limit)),
            ).fetchall()
        )
        return [LedgerEntry(*row) for row in rows]

    # -- reservations ----------------------------------------------------------------------
    async def reserve(
        self,
        *,
        wallet_id: str,
        key_id: str | None,
        request_id: str,
        minimum: int,
        maximum: int,
        lease_s: float,
    ) -> Reservation | None:
        """Decided here, against what this process knows of the wallet and the key. The
        reservation row is written only for a request still running after ``ROW_AFTER_S`` (or
        extended): a quicker one is settled without ever having one."""
        check_bounds(minimum, maximum)
        holds = self._holds
        rid = unique_id("r_")
        amount = holds.take(rid, wallet_id, key_id, minimum, maximum)
        if isinstance(amount, Short):  # read the figures (another process may credit), again
            if not await self._read_available(wallet_id, key_id):
                return None
            amount = holds.take(rid, wallet_id, key_id, minimum, maximum)
            if amount is Short.KEY:
                assert key_id is not None
                raise key_limit_reached(holds.key_left(key_id))
            if isinstance(amount, Short):
                return None
        now = time.time()
        reservation = Reservation(rid, wallet_id, key_id, request_id, amount, now, now + lease_s)
        if self._open().unwritable:
            # The last write failed for want of storage: this row is written now and waited
            # for, so that no request goes upstream while its reservation cannot be written.
            op = self._row_op(reservation)
            if op is not None:
                await self._write(op.fn, op.lost)
        else:
            timer = asyncio.get_running_loop().call_later(
                ROW_AFTER_S, self._write_row_now, reservation
            )
            self._rowless[rid] = (timer, reservation)
        return reservation

    def _write_row_now(self, reservation: Reservation) -> None:
        """Write the reservation's row, behind (not waited for), if it has none: its request
        is still running after ``ROW_AFTER_S``, it grows, or its lease is being released."""
        entry = self._rowless.pop(reservation.id, None)
        if entry is not None:
            if entry[0] is not None:
                entry[0].cancel()
            reservation = entry[1]  # as last renewed
        op = self._row_op(reservation)
        if op is not None:
            with contextlib.suppress(StorageUnavailable):  # closed: nothing to write to
                self._open().submit(op)

    def _stop_row_timer(self, reservation: Reservation) -> None:
        """Its settlement is under way: no row for it, unless that fails (then the sweeper's
        release writes and releases it, like any expired reservation)."""
        entry = self._rowless.get(reservation.id)
        if entry is not None and entry[0] is not None:
            entry[0].cancel()
            self._rowless[reservation.id] = (None, entry[1])

    def _row_op(self, reservation: Reservation) -> Op | None:
        """The write of a reservation's row, if it has none yet and is not settled."""
        holds = self._holds
        claimed = holds.claim_row(reservation.id)
        if claimed is None:
            return None
        wallet_id, amount = claimed.wallet, claimed.amount
        r = reservation

        def tx(conn: sqlite3.Connection) -> None:
            balance, reserved = one(
                conn, "SELECT balance, reserved FROM wallets WHERE id = ?", (wallet_id,)
            )
            # Never more than the wallet has once the other holds are written: another process
            # (the CLI) may have moved money out since the hold was decided.
            others = holds.unwritten(wallet_id) - amount
            row = max(0, min(amount, balance - reserved - others))
            conn.execute(
                "INSERT INTO reservations "
                "(id, wallet_id, key_id, request_id, amount, created_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (r.id, wallet_id, r.key_id, r.request_id, row, r.created_at, r.expires_at),
            )
            hold(conn, wallet_id, row)
            holds.wrote(claimed)
            holds.seen(wallet_id, balance - reserved - row)
            if claimed.key is not None:
                holds.seen(claimed.key, hold_key(conn, r.key_id, row))

        writer = self._open()

        def lost(error: BaseException) -> None:  # in the worker
            holds.lost(r.id, claimed)
            if isinstance(error, sqlite3.Error) and not isinstance(error, BUGS):
                writer.unwritable = True

        return Op(tx, lost)

    async def _read_available(self, wallet_id: str, key_id: str | None) -> bool:
        """Read the wallet's ``balance - reserved``, and what the key's spend limit leaves,
        into the holds; False: no such wallet."""

        def read(conn: sqlite3.Connection) -> bool:
            rows = conn.execute(
                "SELECT balance - reserved FROM wallets WHERE id = ?", (wallet_id,)
            ).fetchall()
            if not rows:
                return False
            self._holds.read(wallet_id, rows[0][0])
            if key_id is not None:
                self._holds.read(key_account(key_id), key_left(conn, key_id))
            return True

        return await self._read(read)

    async def extend(
        self, reservation: Reservation, *, minimum: int, maximum: int
    ) -> Reservation | None:
        check_bounds(minimum, maximum)
        wallet_id, key_id = reservation.wallet_id, reservation.key_id
        self._write_row_now(reservation)  # the row first (queued before), then its growth
        holds = self._holds

        def tx(conn: sqlite3.Connection) -> int | None:
            avail = conn.execute(
                "SELECT balance - reserved FROM wallets WHERE id = ?", (wallet_id,)
            ).fetchall()
            if not avail:
                return None
            available = avail[0][0] - holds.unwritten(wallet_id)
            key = None if key_id is None else key_account(key_id)
            left = None if key_id is None else key_left(conn, key_id)
            if key is not None and left is not None:
                available = min(available, left - holds.unwritten(key))
            amount = min(maximum, available)
            if amount < minimum:
                return None
            rows = conn.execute(
                "UPDATE reservations SET amount = amount + ? WHERE id = ? RETURNING amount",
                (amount, reservation.id),
            ).fetchall()
            if not rows:  # released meanwhile
                return None
            hold(conn, wallet_id, amount)
            holds.seen(wallet_id, avail[0][0] - amount)
            if key is not None and left is not None:
                holds.seen(key, hold_key(conn, key_id, amount))
            return int(rows[0][0])

        total = await self._write(tx)
        if total is None:
            return None
        return dataclasses.replace(reservation, amount=total)

    async def settle(self, reservation: Reservation, usage: UsageRecord, cost: int) -> UsageRecord:
        written: UsageRecord = await self._write(self._settlement(reservation, usage, cost))
        self._rowless.pop(reservation.id, None)  # settled: nothing left to write
        return written

    def _settlement(
        self, reservation: Reservation, usage: UsageRecord, cost: int
    ) -> Callable[[sqlite3.Connection], UsageRecord]:
        """The transaction that settles ``reservation``."""
        check_settle(reservation, usage, cost)
        params = usage_values(usage)
        self._stop_row_timer(reservation)
        holds = self._holds

        def tx(conn: sqlite3.Connection) -> UsageRecord:
            rowless = holds.rowless(reservation.id)
            amount = 0  # what its row holds: none when it has no row
            if rowless is not None:  # settled before its row was due: none is written
                holds.settle_rowless(reservation.id, rowless)
            else:
                held = conn.execute(
                    "DELETE FROM reservations WHERE id = ? RETURNING amount", (reservation.id,)
                ).fetchall()
                if held:
                    amount = held[0][0]
                elif not holds.is_lost(reservation.id):  # released by recovery, or settled
                    first = conn.execute(
                        f"SELECT {USAGE_COLUMNS} FROM usage WHERE request_id = ?",
                        (usage.request_id,),
                    ).fetchall()
                    if first and first[0][7] != UsageStatus.ABANDONED:
                        return usage_from_row(first[0])  # settled before: settling is idempotent
                    # released: settled from what the wallet and the key have free now
            wallet_id, key_id = reservation.wallet_id, reservation.key_id
            balance, reserved = one(
                conn, "SELECT balance, reserved FROM wallets WHERE id = ?", (wallet_id,)
            )
            # what the wallet has, leaving alone what other requests hold and have not written
            free = balance - (reserved - amount) - holds.unwritten(wallet_id)
            charge = max(0, min(cost, free))
            limited = holds.limited(key_id)
            left: int | None = None
            if key_id is not None and limited is not False:
                left = key_left(conn, key_id)
                if left is not None:
                    left += amount - holds.unwritten(key_account(key_id))
                    charge = max(0, min(charge, left))
            conn.execute(
                "UPDATE wallets SET balance = balance - ?, reserved = reserved - ? WHERE id = ?",
                (charge, amount, wallet_id),
            )
            holds.seen(wallet_id, balance - charge - (reserved - amount))
            if charge:
                entry = (wallet_id, -charge, balance - charge, usage.request_id, time.time())
                conn.execute(CHARGE, entry)
            if left is not None:
                assert key_id is not None
                figure = one(
                    conn,
                    "UPDATE keys SET spent = spent + ?, reserved = MAX(0, reserved - ?) "
                    "WHERE id = ? RETURNING spend_limit - spent - reserved",
                    (charge, amount, key_id),
                )[0]
                holds.seen(key_account(key_id), figure)
            elif charge and usage.key_id is not None:
                conn.execute(
                    "UPDATE keys SET spent = spent + ? WHERE id = ?", (charge, usage.key_id)
                )
            params[USAGE_COST], params[USAGE_SHORTFALL] = charge, cost - charge
            if not upsert_usage(conn, params):
                raise Conflict(f"usage for request {usage.request_id!r} was already recorded")
            return dataclasses.replace(usage, cost=charge, shortfall=cost - charge)

        return tx

    async def renew(self, reservation_ids: Sequence[str], lease_s: float) -> int:
        expires = time.time() + lease_s
        renewed = 0
        with_rows: list[str] = []
        for rid in reservation_ids:
            entry = self._rowless.get(rid)
            if entry is None:
                with_rows.append(rid)
            else:
                self._rowless[rid] = (entry[0], dataclasses.replace(entry[1], expires_at=expires))
                renewed += 1
        if not with_rows:
            return renewed

        def tx(conn: sqlite3.Connection) -> int:
            count = 0
            for at in range(0, len(with_rows), _IN_BATCH):
                batch = with_rows[at : at + _IN_BATCH]
                count += conn.execute(
                    f"UPDATE reservations SET expires_at = ? "
                    f"WHERE id IN ({placeholders(len(batch))})",
                    (expires, *batch),
                ).rowcount
            return count

        return renewed + await self._write(tx)

    async def release_expired(self, *, all_: bool = False) -> int:
        now = time.time()
        for _, reservation in list(self._rowless.values()):
            if all_ or reservation.expires_at < now:  # released like the rest: row, then release
                self._write_row_now(reservation)

        def tx(conn: sqlite3.Connection) -> int:
            returning = " RETURNING wallet_id, key_id, request_id, amount"
            if all_:
                released = conn.execute("DELETE FROM reservations" + returning).fetchall()
            else:
                released = conn.execute(
                    "DELETE FROM reservations WHERE expires_at < ?" + returning, (now,)
                ).fetchall()
            conn.executemany(
                "UPDATE wallets SET reserved = reserved - ? WHERE id = ?",
                [(amount, wallet_id) for wallet_id, _, _, amount in released],
            )
            keyed = [(amount, key_id) for _, key_id, _, amount in released if key_id is not None]
            conn.executemany(
                "UPDATE keys SET reserved = MAX(0, reserved - ?) "
                "WHERE id = ? AND spend_limit IS NOT NULL",
                keyed,
            )
            for wallet_id in {wallet_id for wallet_id, _, _, _ in released}:
                self._holds.seen(wallet_id, None)  # read again when next needed
            for _, key_id in keyed:
                self._holds.seen(key_account(key_id), None)
            stamp = time.time()
            conn.executemany(
                f"INSERT INTO usage ({USAGE_COLUMNS}) VALUES ({placeholders(len(USAGE_FIELDS))}) "
                "ON CONFLICT (request_id) DO NOTHING",
                [
                    usage_values(abandoned(request_id, key_id, wallet_id, stamp))
                    for wallet_id, key_id, request_id, _ in released
                ],
            )
            return len(released)

        return await self._write(tx)

    # -- usage -----------------------------------------------------------------------------
    async def list_usage(
        self, *, wallet_id: str | None = None, key_id: str | None = None, limit: int = 100
    ) -> list[UsageRecord]:
        where, args = [], []
        if wallet_id is not None:
            where.append("wallet_id = ?")
            args.append(wallet_id)
        if key_id is not None:
            where.append("key_id = ?")
            args.append(key_id)
        sql = f"SELECT {USAGE_COLUMNS} FROM usage"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC LIMIT ?"
        rows = await self._read(lambda conn: conn.execute(sql, (*args, max(0, limit))).fetchall())
        return [usage_from_row(row) for row in rows]

    # -- keys ------------------------------------------------------------------------------
    async def create_key(self, key: ApiKey) -> ApiKey:
        return await self._write(partial(accounts.create_key, key=key))

    async def get_key_by_hash(self, key_hash: str) -> ApiKey | None:
        return await self._get_key("key_hash", key_hash)

    async def get_key(self, key_id: str) -> ApiKey | None:
        return await self._get_key("id", key_id)

    async def _get_key(self, column: str, value: str) -> ApiKey | None:
        sql = f"SELECT {KEY_COLUMNS} FROM keys WHERE {column} = ?"
        rows = await self._read(lambda conn: conn.execute(sql, (value,)).fetchall())
        return key_from_row(rows[0]) if rows else None

    async def list_keys(self, *, wallet_id: str | None = None) -> list[ApiKey]:
        where = "" if wallet_id is None else "WHERE wallet_id = ?"
        args = () if wallet_id is None else (wallet_id,)
        sql = f"SELECT {KEY_COLUMNS} FROM keys {where} ORDER BY created_at, id"
        rows = await self._read(lambda conn: conn.execute(sql, args).fetchall())
        return [key_from_row(row) for row in rows]

    async def revoke_key(self, key_id: str, now: float) -> ApiKey | None:
        return await self._write(partial(accounts.revoke_key, key_id=key_id, now=now))
