"""The PostgreSQL engine: several gateway processes, one set of wallets (asyncpg).

Same tables, columns, ids and rules as the SQLite engine; what differs is how atomicity is won
when several processes write at once:

- ``reserve``, ``extend`` and ``settle`` are each ONE statement (one round trip, atomic on its
  own): chains of data-modifying CTEs that first lock the rows they depend on (``FOR UPDATE``
  on reservations, ``FOR NO KEY UPDATE`` on wallets and keys, which leaves foreign-key checks
  of other inserts unblocked) and compute the new values from those locked, latest row
  versions; a key's spend limit is held in the same statement as its wallet;
- the lock order is always reservation, then wallet, then key; transfers lock both wallets in
  id order; ``release_expired`` takes reservations with ``FOR UPDATE SKIP LOCKED`` and then
  their wallets and keys in id order, so concurrent instances neither deadlock nor release
  twice;
- leases are decided by the database's clock (``clock_timestamp()``), not the instances';
- a reservation is settled or released exactly once: whoever locks its row first deletes it,
  the other finds it gone;
- one process sends at most one ``reserve``/``extend``/``settle`` per wallet at a time
  (:class:`_WalletTurns`): a busy wallet's requests queue in the process rather than as a
  crowd of backends waiting on one row lock, which PostgreSQL serves far more slowly (64
  requests at once on one wallet: about twice the pairs/s, ``bench/instances.py``);
- idempotency rests on unique indexes (``ledger_idempotency``, ``transfers.idempotency_key``,
  ``usage.request_id``), never on a read before a write;
- the pool does not reset sessions on release (one round trip saved per operation): this module
  never leaves session state behind, and the schema comes with each connection's startup
  parameters (``search_path``), which survive any ``RESET ALL``.

asyncpg and connection failures become :class:`~gateway.errors.StorageUnavailable` at one
boundary (:func:`_storage_errors`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import secrets
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Protocol

import asyncpg

from gateway.errors import Conflict, InvalidRequest, NotFound, StorageUnavailable
from gateway.ids import unique_id
from gateway.money import MAX_MICRO
from gateway.storage.base import (
    ApiKey,
    LedgerEntry,
    Reservation,
    Store,
    Transfer,
    UsageRecord,
    Wallet,
)
from gateway.storage.postgres import sql
from gateway.storage.rows import (
    ENTRY_COLUMNS,
    KEY_COLUMNS,
    TRANSFER_COLUMNS,
    USAGE_COLUMNS,
    USAGE_COST,
    USAGE_SHORTFALL,
    WALLET_COLUMNS,
    key_from_row,
    key_params,
    usage_from_row,
    usage_params,
)
from gateway.storage.rules import (
    cannot_pay,
    check_bounds,
    check_settle,
    key_limit_reached,
    new_transfer,
    past_the_largest_balance,
)

__all__ = ["PostgresStore"]


class _Row(Protocol):
    """An ``asyncpg.Record``: the only place values of unknown type enter this module."""

    def __getitem__(self, key: int | str, /) -> Any: ...
    def __iter__(self) -> Iterator[Any]: ...
    def __len__(self) -> int: ...


#: ``pg_advisory_xact_lock`` key taken while migrating (any schema of the database).
MIGRATION_LOCK = 0x6761_7465_7761_7931  # "gatewa" "y1"
_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_RELEASE_BATCH = 1_000


class PostgresStore(Store):
    """``url``: ``postgresql://user[:password]@host[:port]/database[?...]`` (asyncpg's DSN).

    ``pool_size``: connections per process (the pool keeps at least one open).
    ``schema``: the tables live in this schema (created when migrating if missing) instead of
    the server's default ``search_path``; every pooled connection starts with it.
    ``connect_timeout_s``: how long opening one connection may take.
    """

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        schema: str | None = None,
        connect_timeout_s: float = 10.0,
    ) -> None:
        if pool_size < 1:
            raise ValueError(f"pool_size must be at least 1, not {pool_size}")
        if schema is not None and not _SCHEMA_NAME.fullmatch(schema):
            raise ValueError(
                f"schema must be a plain identifier (letters, digits, _; at most 63), "
                f"not {schema!r}"
            )
        if connect_timeout_s <= 0:
            raise ValueError("connect_timeout_s must be positive")
        self.url = url
        self.pool_size = pool_size
        self.schema = schema
        self.connect_timeout_s = connect_timeout_s
        self._pool: Any = None  # asyncpg.Pool
        self._where = _redact(url) + (f" (schema {schema})" if schema else "")
        self._turns = _WalletTurns()

    # -- lifecycle -------------------------------------------------------------------------
    async def open(self, *, migrate: bool = True) -> None:
        if self._pool is not None:
            return
        settings = {"search_path": f'"{self.schema}"'} if self.schema else {}
        with _storage_errors(f"cannot connect to PostgreSQL at {self._where}", connecting=True):
            pool = await asyncpg.create_pool(
                self.url,
                min_size=1,
                max_size=self.pool_size,
                timeout=self.connect_timeout_s,
                server_settings=settings,
                reset=_keep_session,
            )
        try:
            with _storage_errors(f"cannot prepare PostgreSQL at {self._where}", connecting=True):
                async with pool.acquire() as conn:
                    if migrate:
                        await _migrate(conn, self.schema)
                    else:
                        await _check_version(conn, self._where)
        except BaseException:
            pool.terminate()
            raise
        self._pool = pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            with _storage_errors("cannot close the PostgreSQL pool"):
                await pool.close()

    async def ping(self) -> None:
        await self._fetchval("SELECT 1")

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        pool = self._pool
        if pool is None:
            raise StorageUnavailable("storage is not open")
        with _storage_errors(f"PostgreSQL at {self._where} is unavailable"):
            async with pool.acquire() as conn:
                yield conn

    async def _fetch(self, sql: str, *args: object) -> list[_Row]:
        async with self._connection() as conn:
            rows: list[_Row] = await conn.fetch(sql, *args)
            return rows

    async def _fetchrow(self, sql: str, *args: object) -> _Row | None:
        async with self._connection() as conn:
            row: _Row | None = await conn.fetchrow(sql, *args)
            return row

    async def _fetchval(self, sql: str, *args: object) -> Any:
        async with self._connection() as conn:
            return await conn.fetchval(sql, *args)

    async def _fetchval_status(self, sql: str, *args: object) -> str:
        """Run a statement; its status line (``UPDATE 3``)."""
        async with self._connection() as conn:
            status: str = await conn.execute(sql, *args)
            return status

    # -- wallets and money -----------------------------------------------------------------
    async def create_wallet(self, name: str, balance: int = 0) -> Wallet:
        if balance < 0:
            raise InvalidRequest("an opening balance must not be negative", param="balance")
        wallet_id = "w_" + secrets.token_hex(8)
        row = await self._fetchrow(sql.CREATE_WALLET, wallet_id, name, balance, time.time())
        return _wallet(_present(row))

    async def get_wallet(self, wallet_id: str) -> Wallet | None:
        row = await self._fetchrow(f"SELECT {WALLET_COLUMNS} FROM wallets WHERE id = $1", wallet_id)
        return None if row is None else _wallet(row)

    async def list_wallets(self) -> list[Wallet]:
        rows = await self._fetch(f"SELECT {WALLET_COLUMNS} FROM wallets ORDER BY created_at, id")
        return [_wallet(row) for row in rows]

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
        args = (wallet_id, amount, idempotency_key, memo, time.time())
        try:
            row = await self._fetchrow(sql.CREDIT, *args)
        except asyncpg.UniqueViolationError as exc:  # the same key's first use won a race
            if exc.constraint_name != "ledger_idempotency":
                raise
            row = None
        if row is not None:
            return _wallet(row), True
        current = await self.get_wallet(wallet_id)
        if current is None:
            raise NotFound(f"no wallet {wallet_id!r}", param="wallet_id")
        if idempotency_key is None or not await self._fetchval(
            "SELECT EXISTS (SELECT FROM ledger "
            "WHERE wallet_id = $1 AND kind = 'credit' AND idempotency_key = $2)",
            wallet_id,
            idempotency_key,
        ):
            raise past_the_largest_balance(wallet_id)
        return current, False  # the key was seen: a replay returns the wallet as it is now

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
        replay = f"SELECT {TRANSFER_COLUMNS} FROM transfers WHERE idempotency_key = $1"
        async with self._connection() as conn, conn.transaction():
            if idempotency_key is not None:
                seen: _Row | None = await conn.fetchrow(replay, idempotency_key)
                if seen is not None:
                    return Transfer(*seen), False
            # Both wallets locked in id order: two opposite transfers cannot deadlock.
            rows: list[_Row] = await conn.fetch(
                "SELECT id, balance, balance - reserved FROM wallets WHERE id = ANY($1::text[]) "
                "ORDER BY id FOR NO KEY UPDATE",
                [from_wallet, to_wallet],
            )
            found: dict[str, tuple[int, int]] = {row[0]: (row[1], row[2]) for row in rows}
            for wallet_id, param in ((from_wallet, "from_wallet"), (to_wallet, "to_wallet")):
                if wallet_id not in found:
                    raise NotFound(f"no wallet {wallet_id!r}", param=param)
            if found[from_wallet][1] < amount:
                raise cannot_pay(from_wallet, amount, found[from_wallet][1])
            if found[to_wallet][0] > MAX_MICRO - amount:
                raise past_the_largest_balance(to_wallet)
            args = (*dataclasses.astuple(transfer), memo)
            if await conn.fetchval(sql.TRANSFER_MOVE, *args):
                return transfer, True
        # The same key's first use committed while this one waited: it moved nothing.
        first = await self._fetchrow(replay, idempotency_key)
        return Transfer(*_present(first)), False

    async def ledger(self, wallet_id: str, limit: int = 100) -> list[LedgerEntry]:
        rows = await self._fetch(
            f"SELECT {ENTRY_COLUMNS} FROM ledger WHERE wallet_id = $1 ORDER BY id DESC LIMIT $2",
            wallet_id,
            max(0, limit),
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
        check_bounds(minimum, maximum)
        rid, now = unique_id("r_"), time.time()
        async with self._turns.of(wallet_id):
            row = _present(
                await self._fetchrow(
                    sql.RESERVE, rid, wallet_id, key_id, minimum, maximum, request_id, now, lease_s
                )
            )
        amount, expires, key_left = row
        if key_left is not None and key_left < minimum:
            raise key_limit_reached(key_left)
        if amount is None:
            return None
        return Reservation(rid, wallet_id, key_id, request_id, int(amount), now, expires)

    async def extend(
        self, reservation: Reservation, *, minimum: int, maximum: int
    ) -> Reservation | None:
        check_bounds(minimum, maximum)
        async with self._turns.of(reservation.wallet_id):
            amount = await self._fetchval(sql.EXTEND, reservation.id, minimum, maximum)
        if amount is None:
            return None
        return dataclasses.replace(reservation, amount=int(amount))

    async def settle(self, reservation: Reservation, usage: UsageRecord, cost: int) -> UsageRecord:
        check_settle(reservation, usage, cost)
        params = usage_params(usage)
        # $12: what the request cost; SETTLE works out the charge and the shortfall from it
        params[USAGE_COST] = cost
        del params[USAGE_SHORTFALL]
        async with self._turns.of(reservation.wallet_id):
            row = _present(await self._fetchrow(sql.SETTLE, reservation.id, *params, time.time()))
        held, charge = bool(row[0]), row[1]
        if charge is not None:  # written (from what was free, if the lease had ended)
            return dataclasses.replace(usage, cost=charge, shortfall=cost - charge)
        if held:
            raise Conflict(f"usage for request {usage.request_id!r} was already recorded")
        # settled before: settling is idempotent and returns the first record
        first = await self._fetchrow(
            f"SELECT {USAGE_COLUMNS} FROM usage WHERE request_id = $1", usage.request_id
        )
        return usage_from_row(_present(first))

    async def renew(self, reservation_ids: Sequence[str], lease_s: float) -> int:
        if not reservation_ids:
            return 0
        status: str = await self._fetchval_status(sql.RENEW, sorted(reservation_ids), lease_s)
        return int(status.rsplit(" ", 1)[-1])

    async def release_expired(self, *, all_: bool = False) -> int:
        where = "" if all_ else f"WHERE expires_at < {sql.NOW}"
        pick = sql.RELEASE_PICK.format(where=where, limit=_RELEASE_BATCH)
        total = 0
        while True:
            async with self._connection() as conn, conn.transaction():
                released: list[_Row] = await conn.fetch(pick)
                if released:
                    await _release(conn, released)
            total += len(released)
            if len(released) < _RELEASE_BATCH:
                return total

    # -- usage -----------------------------------------------------------------------------
    async def list_usage(
        self, *, wallet_id: str | None = None, key_id: str | None = None, limit: int = 100
    ) -> list[UsageRecord]:
        where: list[str] = []
        args: list[object] = []
        for column, value in (("wallet_id", wallet_id), ("key_id", key_id)):
            if value is not None:
                args.append(value)
                where.append(f"{column} = ${len(args)}")
        sql = f"SELECT {USAGE_COLUMNS} FROM usage"
        if where:
            sql += " WHERE " + " AND ".join(where)
        args.append(max(0, limit))
        sql += f" ORDER BY seq DESC LIMIT ${len(args)}"
        return [usage_from_row(row) for row in await self._fetch(sql, *args)]

    # -- keys ------------------------------------------------------------------------------
    async def create_key(self, key: ApiKey) -> ApiKey:
        try:
            row = await self._fetchrow(sql.CREATE_KEY, *key_params(key, models_as_json=False))
        except asyncpg.UniqueViolationError as exc:
            raise Conflict("a key with this id or secret already exists") from exc
        if row is None:
            raise NotFound(f"no wallet {key.wallet_id!r}", param="wallet_id")
        return key_from_row(row)

    async def get_key_by_hash(self, key_hash: str) -> ApiKey | None:
        row = await self._fetchrow(f"SELECT {KEY_COLUMNS} FROM keys WHERE key_hash = $1", key_hash)
        return None if row is None else key_from_row(row)

    async def get_key(self, key_id: str) -> ApiKey | None:
        row = await self._fetchrow(f"SELECT {KEY_COLUMNS} FROM keys WHERE id = $1", key_id)
        return None if row is None else key_from_row(row)

    async def list_keys(self, *, wallet_id: str | None = None) -> list[ApiKey]:
        if wallet_id is None:
            rows = await self._fetch(f"SELECT {KEY_COLUMNS} FROM keys ORDER BY created_at, id")
        else:
            rows = await self._fetch(
                f"SELECT {KEY_COLUMNS} FROM keys WHERE wallet_id = $1 ORDER BY created_at, id",
                wallet_id,
            )
        return [key_from_row(row) for row in rows]

    async def revoke_key(self, key_id: str, now: float) -> ApiKey | None:
        row = await self._fetchrow(
            "UPDATE keys SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1"
            f" RETURNING {KEY_COLUMNS}",
            key_id,
            now,
        )
        return None if row is None else key_from_row(row)


class _WalletTurns:
    """One turn at a time per wallet, within this process. Holds one asyncio lock per wallet
    while anyone wants it (then forgets it), so memory follows the wallets in use. A task never
    holds two turns, so turns cannot deadlock with each other or with row locks."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def of(self, wallet_id: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(wallet_id) or (asyncio.Lock(), 0)
        self._locks[wallet_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[wallet_id]
            if users == 1:
                del self._locks[wallet_id]
            else:
                self._locks[wallet_id] = (lock, users - 1)


# -- the boundary to asyncpg ------------------------------------------------------------------

#: Failures that mean "cannot reach or write the database now", whatever the statement.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable (ConnectionError is one)
    TimeoutError,  # connect timeout
    asyncpg.PostgresConnectionError,  # lost mid-statement, protocol failures
    asyncpg.exceptions.ReadOnlySQLTransactionError,  # a standby, or default_transaction_read_only
    asyncpg.exceptions.InsufficientResourcesError,  # disk full, out of memory, too many clients
    asyncpg.exceptions.OperatorInterventionError,  # shutdown, crash recovery, statement timeout
    asyncpg.exceptions.UndefinedTableError,  # the schema was dropped under us
    # the protocol confused by a server that hung up on an idle connection just as a statement
    # was sent on it (seen after pg_terminate_backend); the pool drops that connection
    asyncpg.exceptions.InternalClientError,
)


@contextlib.contextmanager
def _storage_errors(context: str, *, connecting: bool = False) -> Iterator[None]:
    """Turn unavailability into ``StorageUnavailable``; integrity and programming errors are
    bugs and pass. While ``connecting``, any server refusal (authentication, unknown database,
    permissions) is unavailability too."""
    try:
        yield
    except _UNAVAILABLE as exc:
        hint = ""
        if isinstance(exc, asyncpg.exceptions.UndefinedTableError):
            hint = ": the gateway's tables are missing, run `gateway migrate`"
        raise StorageUnavailable(f"{context}: {_describe(exc)}{hint}") from exc
    except asyncpg.InterfaceError as exc:  # "connection is closed", "pool is closing"
        if "closed" not in str(exc) and "closing" not in str(exc):
            raise
        raise StorageUnavailable(f"{context}: {_describe(exc)}") from exc
    except asyncpg.PostgresError as exc:
        if not connecting:
            raise
        raise StorageUnavailable(f"{context}: {_describe(exc)}") from exc


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _keep_session(conn: Any) -> None:
    """Pool ``reset`` hook: asyncpg has rolled back any open transaction already; nothing else
    needs resetting (no LISTEN, no SET, no session advisory locks), so no reset query is sent."""


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return "<unparsable url>"


async def _migrate(conn: Any, schema: str | None) -> None:
    """Apply the missing steps in one transaction, under an advisory lock so that instances
    starting together migrate one after the other (the later ones find nothing to do). A
    current schema is left alone without a lock or a write (a read-only role may start)."""
    if await _version(conn) == len(sql.MIGRATIONS):
        return
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        if schema is not None and not await conn.fetchval(
            "SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = $1)", schema
        ):
            await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            "version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
            "applied_at DOUBLE PRECISION NOT NULL)"
        )
        version = await _version(conn)
        if version > len(sql.MIGRATIONS):
            raise _too_new(version, schema or "default")
        for number in range(version + 1, len(sql.MIGRATIONS) + 1):
            name, statements = sql.MIGRATIONS[number - 1]
            for statement in statements:
                await conn.execute(statement)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
                number,
                name,
                time.time(),
            )


async def _check_version(conn: Any, where: str) -> None:
    if not await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL"):  # no table
        raise StorageUnavailable(
            f"PostgreSQL at {where} has no gateway schema: run `gateway migrate` "
            "(or start with [storage] migrate_on_start = true)"
        )
    version = await _version(conn)
    if version > len(sql.MIGRATIONS):
        raise _too_new(version, where)
    if version < len(sql.MIGRATIONS):
        raise StorageUnavailable(
            f"PostgreSQL at {where} has schema version {version}, this gateway needs "
            f"{len(sql.MIGRATIONS)}: run `gateway migrate`"
        )


async def _version(conn: Any) -> int:
    """The number of steps applied; 0 without a ``schema_migrations`` table."""
    if not await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL"):
        return 0
    return int(await conn.fetchval("SELECT COALESCE(max(version), 0) FROM schema_migrations"))


def _too_new(version: int, where: str) -> StorageUnavailable:
    return StorageUnavailable(
        f"PostgreSQL at {where} has schema version {version}, newer than this gateway knows "
        f"({len(sql.MIGRATIONS)}): upgrade the gateway"
    )


async def _release(conn: Any, released: Sequence[_Row]) -> None:
    """Inside the releasing transaction: give the holds back (wallets locked in id order) and
    record each released request as ``abandoned`` unless it has a usage record already."""
    held: dict[str, int] = {}
    for row in released:
        held[row["wallet_id"]] = held.get(row["wallet_id"], 0) + row["amount"]
    wallet_ids = sorted(held)
    await conn.execute(
        "SELECT FROM wallets WHERE id = ANY($1::text[]) ORDER BY id FOR NO KEY UPDATE", wallet_ids
    )
    await conn.execute(sql.RELEASE_WALLETS, wallet_ids, [held[w] for w in wallet_ids])
    keys: dict[str, int] = {}
    for row in released:
        if row["key_id"] is not None:
            keys[row["key_id"]] = keys.get(row["key_id"], 0) + row["amount"]
    if keys:
        key_ids = sorted(keys)
        await conn.execute(sql.RELEASE_KEYS, key_ids, [keys[k] for k in key_ids])
    await conn.execute(
        sql.ABANDONED,
        [row["request_id"] for row in released],
        [row["key_id"] for row in released],
        [row["wallet_id"] for row in released],
        time.time(),
    )


# -- rows ------------------------------------------------------------------------------------


def _present(row: _Row | None) -> _Row:
    if row is None:
        raise RuntimeError("expected a row, got none")
    return row


def _wallet(row: _Row) -> Wallet:
    return Wallet(*row)
