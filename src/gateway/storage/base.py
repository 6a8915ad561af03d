"""The storage interface: wallets, ledger, reservations, usage records and keys.

Every engine (SQLite, PostgreSQL, in-memory) implements :class:`Store` with the same rules and
passes the same contract suite (``tests/storage/test_contract.py``):

- amounts are integers of micro-credits, and no balance goes past ``MAX_MICRO``;
- a wallet's ``balance`` is the sum of its ledger entries, always;
- ``available = balance - reserved`` never goes below zero: reservations are taken with one
  conditional update (a row lock on PostgreSQL), never read-then-write;
- a key with a ``spend_limit`` is held the same way: its reservations count against
  ``spend_limit - spent`` in the same update as the wallet's, so that what its requests may
  still cost never exceeds what the limit leaves, whatever the concurrency;
- :meth:`Store.settle` charges ``min(cost, what the wallet and the key can pay)`` in one
  transaction with the ledger entry, the usage record, the key's spend and the release of the
  reservation;
- a reservation's lease is kept by the instance serving its request (:meth:`Store.renew`); one
  whose lease ran out is released by any instance (:meth:`Store.release_expired`), by the
  store's own clock (the database's, on PostgreSQL);
- idempotency keys make a repeated credit or transfer a no-op that returns the first result.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "ApiKey",
    "LedgerEntry",
    "Reservation",
    "Store",
    "Transfer",
    "UsageRecord",
    "UsageStatus",
    "Wallet",
]


@dataclass(frozen=True, slots=True)
class Wallet:
    id: str
    name: str
    balance: int
    reserved: int
    created_at: float

    @property
    def available(self) -> int:
        return self.balance - self.reserved


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    id: int
    wallet_id: str
    kind: str  # "credit" | "charge" | "transfer"
    amount: int  # signed: credits +, charges -
    balance_after: int
    created_at: float
    request_id: str | None = None
    idempotency_key: str | None = None
    memo: str | None = None
    ref: str | None = None  # transfer id for both sides of a transfer


@dataclass(frozen=True, slots=True)
class Transfer:
    id: str
    from_wallet: str
    to_wallet: str
    amount: int
    created_at: float
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    wallet_id: str
    name: str
    key_hash: str  # sha256 hex of the secret; the secret itself is never stored
    prefix: str  # the first characters of the secret, to recognise it in listings
    created_at: float
    models: tuple[str, ...] | None = None  # None: every model
    rpm: int | None = None
    tpm: int | None = None
    spend_limit: int | None = None  # micro-credits over the key's lifetime
    spent: int = 0
    expires_at: float | None = None
    revoked_at: float | None = None


@dataclass(frozen=True, slots=True)
class Reservation:
    id: str
    wallet_id: str
    key_id: str | None
    request_id: str
    amount: int
    created_at: float
    expires_at: float  # lease: after this, any instance may release it


class UsageStatus(enum.StrEnum):
    OK = "ok"  # answered in full
    CUT_OFF = "cut_off"  # the gateway ended a stream the wallet could no longer pay for
    CLIENT_DISCONNECTED = "client_disconnected"
    UPSTREAM_ERROR = "upstream_error"  # failed; what was delivered (if anything) is charged
    ERROR = "error"  # failed inside the gateway
    ABANDONED = "abandoned"  # the instance died; the reservation was released by recovery


@dataclass(frozen=True, slots=True)
class UsageRecord:
    request_id: str
    key_id: str | None
    wallet_id: str
    model: str
    backend: str | None
    prompt_tokens: int
    completion_tokens: int
    status: str
    created_at: float
    cached_tokens: int = 0
    cost: int = 0  # what was charged to the wallet
    shortfall: int = 0  # real cost the wallet could not pay
    stream: bool = False
    latency_ms: int = 0
    endpoint: str = "chat.completions"
    extra: dict[str, str] = field(default_factory=dict)


class Store(abc.ABC):
    """One storage engine. Methods raise :class:`gateway.errors.GatewayError` subclasses for
    rule violations (``NotFound``, ``InsufficientQuota``) and ``StorageUnavailable`` when the
    engine cannot be written or reached."""

    # -- lifecycle -------------------------------------------------------------------------
    @abc.abstractmethod
    async def open(self, *, migrate: bool = True) -> None:
        """Connect, and create or migrate the schema unless ``migrate`` is false."""

    async def serve(self, *, migrate: bool, busy: Callable[[], bool]) -> int:
        """:meth:`open` for a gateway server, which holds the store until :meth:`close` (the
        CLI's commands only :meth:`open` it): the engine takes what a server needs (SQLite:
        the file to itself, WAL checkpoints in the background), and releases the reservations
        of requests that died with an earlier process. ``busy`` tells whether the server has
        more than one request in flight (an engine may write differently under load). Returns
        how many reservations were released."""
        await self.open(migrate=migrate)
        return await self.release_expired()

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise ``StorageUnavailable`` if storage cannot be reached."""

    # -- wallets and money -----------------------------------------------------------------
    @abc.abstractmethod
    async def create_wallet(self, name: str, balance: int = 0) -> Wallet:
        """A new wallet; a non-zero opening balance is written as a ``credit`` ledger entry."""

    @abc.abstractmethod
    async def get_wallet(self, wallet_id: str) -> Wallet | None: ...

    @abc.abstractmethod
    async def list_wallets(self) -> list[Wallet]: ...

    @abc.abstractmethod
    async def credit(
        self,
        wallet_id: str,
        amount: int,
        *,
        idempotency_key: str | None = None,
        memo: str | None = None,
    ) -> tuple[Wallet, bool]:
        """Add ``amount``; returns the wallet and whether a new entry was written (False when
        the idempotency key was seen before for this wallet). ``NotFound`` for no wallet,
        ``InvalidRequest`` (and nothing written) when the balance would pass ``MAX_MICRO``."""

    @abc.abstractmethod
    async def transfer(
        self,
        from_wallet: str,
        to_wallet: str,
        amount: int,
        *,
        idempotency_key: str | None = None,
        memo: str | None = None,
    ) -> tuple[Transfer, bool]:
        """Move ``amount`` from available funds; ``InsufficientQuota`` and nothing moved if the
        source cannot pay, ``NotFound`` for an unknown wallet, ``InvalidRequest`` for a transfer
        to itself or one that would take the target's balance past ``MAX_MICRO``. A repeated
        idempotency key returns the first transfer and False."""

    @abc.abstractmethod
    async def ledger(self, wallet_id: str, limit: int = 100) -> list[LedgerEntry]:
        """Newest first."""

    # -- reservations ----------------------------------------------------------------------
    @abc.abstractmethod
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
        """Atomically reserve ``min(maximum, available)`` if that is at least ``minimum``, where
        ``available`` is what the wallet has free and, for a key with a ``spend_limit``, what
        the limit leaves (``spend_limit - spent - reserved``); ``None`` when the wallet cannot
        cover ``minimum`` (or does not exist). ``PermissionDenied`` (``spend_limit_reached``)
        when the key's limit cannot."""

    @abc.abstractmethod
    async def extend(
        self, reservation: Reservation, *, minimum: int, maximum: int
    ) -> Reservation | None:
        """Grow a reservation by ``min(maximum, available)`` (the wallet's and the key's, as
        for :meth:`reserve`) if that is at least ``minimum``; ``None`` when they cannot, or the
        reservation was released."""

    @abc.abstractmethod
    async def settle(self, reservation: Reservation, usage: UsageRecord, cost: int) -> UsageRecord:
        """End a request in one transaction: charge ``min(cost, what the wallet has beyond
        others' reservations, what the key's limit leaves)`` as a ``charge`` ledger entry (none
        when zero), record the rest as ``shortfall``, add the charge to the key's ``spent``,
        write the usage record, and drop the reservation. Returns the usage record as written.
        A reservation released meanwhile (its lease ran out) is settled the same way from what
        the wallet and the key have free then: its usage record replaces the ``abandoned`` one.
        Settling a request again returns its first record and changes nothing, even when the
        first call was cancelled while its write ran on: writes are not undone by their
        caller's cancellation, and a second settlement runs after the first (SQLite's writer
        runs writes in the order sent; PostgreSQL's row locks order them)."""

    @abc.abstractmethod
    async def renew(self, reservation_ids: Sequence[str], lease_s: float) -> int:
        """Move the leases of these reservations (those still held) to end ``lease_s`` from
        now, by the store's clock: the instance serving their requests is alive. Returns how
        many were renewed."""

    @abc.abstractmethod
    async def release_expired(self, *, all_: bool = False) -> int:
        """Release reservations whose lease has ended by the store's clock (every one with
        ``all_``), each recorded as an ``abandoned`` usage record with no charge. Returns how
        many."""

    # -- usage -----------------------------------------------------------------------------
    @abc.abstractmethod
    async def list_usage(
        self, *, wallet_id: str | None = None, key_id: str | None = None, limit: int = 100
    ) -> list[UsageRecord]:
        """Newest first."""

    # -- keys ------------------------------------------------------------------------------
    @abc.abstractmethod
    async def create_key(self, key: ApiKey) -> ApiKey:
        """Store a key (``NotFound`` when its wallet does not exist)."""

    @abc.abstractmethod
    async def get_key_by_hash(self, key_hash: str) -> ApiKey | None: ...

    @abc.abstractmethod
    async def get_key(self, key_id: str) -> ApiKey | None: ...

    @abc.abstractmethod
    async def list_keys(self, *, wallet_id: str | None = None) -> list[ApiKey]: ...

    @abc.abstractmethod
    async def revoke_key(self, key_id: str, now: float) -> ApiKey | None:
        """Mark revoked (idempotent); ``None`` for an unknown key."""
