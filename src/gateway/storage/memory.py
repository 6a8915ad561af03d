"""The in-memory engine, for unit tests: dicts behind one ``asyncio.Lock``, same rules as SQLite.

Nothing survives the process. Every method mutates under the lock and never awaits inside it, so
each one is atomic like a transaction: checks come first, writes last, nothing is half-done when
a rule refuses the operation.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from collections.abc import Sequence

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
    UsageStatus,
    Wallet,
)
from gateway.storage.rules import (
    abandoned,
    cannot_pay,
    check_bounds,
    check_settle,
    key_limit_reached,
    new_transfer,
    past_the_largest_balance,
)

__all__ = ["MemoryStore"]


class MemoryStore(Store):
    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._open = False
        self._wallets: dict[str, Wallet] = {}
        self._ledger: list[LedgerEntry] = []
        self._credit_keys: set[tuple[str, str]] = set()  # (wallet_id, idempotency_key)
        self._transfers: dict[str, Transfer] = {}  # idempotency_key -> transfer
        self._reservations: dict[str, Reservation] = {}
        self._usage: dict[str, UsageRecord] = {}  # request_id -> usage; insertion order is seq
        self._keys: dict[str, ApiKey] = {}
        self._key_ids: dict[str, str] = {}  # key_hash -> key id
        self._key_reserved: dict[str, int] = {}  # key id -> held for it (keys with a limit)

    # -- lifecycle -------------------------------------------------------------------------
    async def open(self, *, migrate: bool = True) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False

    async def ping(self) -> None:
        self._check_open()

    def _check_open(self) -> None:
        if not self._open:
            raise StorageUnavailable("storage is not open")

    # -- wallets and money -----------------------------------------------------------------
    async def create_wallet(self, name: str, balance: int = 0) -> Wallet:
        if balance < 0:
            raise InvalidRequest("an opening balance must not be negative", param="balance")
        async with self._lock:
            self._check_open()
            wallet = Wallet("w_" + secrets.token_hex(8), name, balance, 0, time.time())
            self._wallets[wallet.id] = wallet
            if balance > 0:
                self._append(wallet.id, "credit", balance, balance, memo="opening balance")
            return wallet

    async def get_wallet(self, wallet_id: str) -> Wallet | None:
        self._check_open()
        return self._wallets.get(wallet_id)

    async def list_wallets(self) -> list[Wallet]:
        self._check_open()
        return sorted(self._wallets.values(), key=lambda w: (w.created_at, w.id))

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
        async with self._lock:
            self._check_open()
            if idempotency_key is not None and (wallet_id, idempotency_key) in self._credit_keys:
                return self._wallets[wallet_id], False
            wallet = self._get(wallet_id, "wallet_id")
            if wallet.balance + amount > MAX_MICRO:
                raise past_the_largest_balance(wallet_id)
            wallet = self._set(wallet, balance=wallet.balance + amount)
            self._append(
                wallet_id, "credit", amount, wallet.balance, key=idempotency_key, memo=memo
            )
            if idempotency_key is not None:
                self._credit_keys.add((wallet_id, idempotency_key))
            return wallet, True

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
        async with self._lock:
            self._check_open()
            if idempotency_key is not None and idempotency_key in self._transfers:
                return self._transfers[idempotency_key], False
            source = self._get(from_wallet, "from_wallet")
            target = self._get(to_wallet, "to_wallet")
            if source.available < amount:
                raise cannot_pay(from_wallet, amount, source.available)
            if target.balance + amount > MAX_MICRO:
                raise past_the_largest_balance(to_wallet)
            source = self._set(source, balance=source.balance - amount)
            target = self._set(target, balance=target.balance + amount)
            for wallet, signed in ((source, -amount), (target, amount)):
                self._append(
                    wallet.id, "transfer", signed, wallet.balance,
                    key=idempotency_key, memo=memo, ref=transfer.id, now=transfer.created_at,
                )  # fmt: skip
            if idempotency_key is not None:
                self._transfers[idempotency_key] = transfer
            return transfer, True

    async def ledger(self, wallet_id: str, limit: int = 100) -> list[LedgerEntry]:
        self._check_open()
        out: list[LedgerEntry] = []
        for entry in reversed(self._ledger):
            if len(out) >= limit:
                break
            if entry.wallet_id == wallet_id:
                out.append(entry)
        return out

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
        async with self._lock:
            self._check_open()
            wallet = self._wallets.get(wallet_id)
            left = self._key_left(key_id)
            if left is not None and left < minimum:
                raise key_limit_reached(left)
            if wallet is None or wallet.available < minimum:
                return None
            amount = min(maximum, wallet.available, maximum if left is None else left)
            self._set(wallet, reserved=wallet.reserved + amount)
            self._hold_key(key_id, amount)
            now = time.time()
            reservation = Reservation(
                unique_id("r_"),
                wallet_id,
                key_id,
                request_id,
                amount,
                now,
                now + lease_s,
            )
            self._reservations[reservation.id] = reservation
            return reservation

    async def extend(
        self, reservation: Reservation, *, minimum: int, maximum: int
    ) -> Reservation | None:
        check_bounds(minimum, maximum)
        async with self._lock:
            self._check_open()
            held = self._reservations.get(reservation.id)
            wallet = self._wallets.get(reservation.wallet_id)
            if held is None or wallet is None:
                return None
            left = self._key_left(held.key_id)
            amount = min(maximum, wallet.available, maximum if left is None else left)
            if amount < minimum:
                return None
            self._set(wallet, reserved=wallet.reserved + amount)
            self._hold_key(held.key_id, amount)
            held = dataclasses.replace(held, amount=held.amount + amount)
            self._reservations[held.id] = held
            return dataclasses.replace(reservation, amount=held.amount, expires_at=held.expires_at)

    async def settle(self, reservation: Reservation, usage: UsageRecord, cost: int) -> UsageRecord:
        check_settle(reservation, usage, cost)
        async with self._lock:
            self._check_open()
            previous = self._usage.get(usage.request_id)
            held = self._reservations.get(reservation.id)
            if previous is not None and previous.status != UsageStatus.ABANDONED:
                if held is None:
                    return _copy(previous)  # settled before: settling is idempotent
                raise Conflict(f"usage for request {usage.request_id!r} was already recorded")
            # a reservation released meanwhile is settled from what is free now
            amount = 0 if held is None else held.amount
            wallet = self._wallets[reservation.wallet_id]
            charge = max(0, min(cost, wallet.available + amount))
            left = self._key_left(usage.key_id)
            if left is not None:
                charge = max(0, min(charge, left + amount))
            wallet = self._set(
                wallet, balance=wallet.balance - charge, reserved=wallet.reserved - amount
            )
            if held is not None:
                del self._reservations[held.id]
                self._hold_key(held.key_id, -amount)
            if charge:
                self._append(
                    wallet.id, "charge", -charge, wallet.balance, request_id=usage.request_id
                )
                key = self._keys.get(usage.key_id) if usage.key_id is not None else None
                if key is not None:
                    self._keys[key.id] = dataclasses.replace(key, spent=key.spent + charge)
            written = dataclasses.replace(
                usage, cost=charge, shortfall=cost - charge, extra=dict(usage.extra)
            )
            self._put_usage(written)
            return dataclasses.replace(written, extra=dict(usage.extra))

    async def renew(self, reservation_ids: Sequence[str], lease_s: float) -> int:
        async with self._lock:
            self._check_open()
            expires = time.time() + lease_s
            renewed = 0
            for rid in reservation_ids:
                held = self._reservations.get(rid)
                if held is not None:
                    self._reservations[rid] = dataclasses.replace(held, expires_at=expires)
                    renewed += 1
            return renewed

    async def release_expired(self, *, all_: bool = False) -> int:
        async with self._lock:
            self._check_open()
            now = time.time()
            expired = [r for r in self._reservations.values() if all_ or r.expires_at < now]
            for held in expired:
                del self._reservations[held.id]
                wallet = self._wallets[held.wallet_id]
                self._set(wallet, reserved=wallet.reserved - held.amount)
                self._hold_key(held.key_id, -held.amount)
                if held.request_id not in self._usage:
                    self._usage[held.request_id] = abandoned(
                        held.request_id, held.key_id, held.wallet_id, now
                    )
            return len(expired)

    # -- usage -----------------------------------------------------------------------------
    async def list_usage(
        self, *, wallet_id: str | None = None, key_id: str | None = None, limit: int = 100
    ) -> list[UsageRecord]:
        self._check_open()
        out: list[UsageRecord] = []
        for usage in reversed(self._usage.values()):
            if len(out) >= limit:
                break
            if (wallet_id is None or usage.wallet_id == wallet_id) and (
                key_id is None or usage.key_id == key_id
            ):
                out.append(_copy(usage))
        return out

    # -- keys ------------------------------------------------------------------------------
    async def create_key(self, key: ApiKey) -> ApiKey:
        async with self._lock:
            self._check_open()
            self._get(key.wallet_id, "wallet_id")
            if key.id in self._keys or key.key_hash in self._key_ids:
                raise Conflict("a key with this id or secret already exists")
            self._keys[key.id] = key
            self._key_ids[key.key_hash] = key.id
            return key

    async def get_key_by_hash(self, key_hash: str) -> ApiKey | None:
        self._check_open()
        key_id = self._key_ids.get(key_hash)
        return None if key_id is None else self._keys[key_id]

    async def get_key(self, key_id: str) -> ApiKey | None:
        self._check_open()
        return self._keys.get(key_id)

    async def list_keys(self, *, wallet_id: str | None = None) -> list[ApiKey]:
        self._check_open()
        keys = [k for k in self._keys.values() if wallet_id is None or k.wallet_id == wallet_id]
        return sorted(keys, key=lambda k: (k.created_at, k.id))

    async def revoke_key(self, key_id: str, now: float) -> ApiKey | None:
        async with self._lock:
            self._check_open()
            key = self._keys.get(key_id)
            if key is None or key.revoked_at is not None:
                return key
            key = self._keys[key_id] = dataclasses.replace(key, revoked_at=now)
            return key

    # -- helpers (call with the lock held) ---------------------------------------------------
    def _key_left(self, key_id: str | None) -> int | None:
        """What a key's spend limit leaves beyond its spend and holds; None: no limit."""
        key = self._keys.get(key_id) if key_id is not None else None
        if key is None or key.spend_limit is None:
            return None
        return key.spend_limit - key.spent - self._key_reserved.get(key.id, 0)

    def _hold_key(self, key_id: str | None, amount: int) -> None:
        key = self._keys.get(key_id) if key_id is not None else None
        if key is not None and key.spend_limit is not None:
            self._key_reserved[key.id] = self._key_reserved.get(key.id, 0) + amount

    def _get(self, wallet_id: str, param: str) -> Wallet:
        wallet = self._wallets.get(wallet_id)
        if wallet is None:
            raise NotFound(f"no wallet {wallet_id!r}", param=param)
        return wallet

    def _set(
        self, wallet: Wallet, *, balance: int | None = None, reserved: int | None = None
    ) -> Wallet:
        wallet = dataclasses.replace(
            wallet,
            balance=wallet.balance if balance is None else balance,
            reserved=wallet.reserved if reserved is None else reserved,
        )
        if not 0 <= wallet.reserved <= wallet.balance:  # the CHECK constraint of the SQL engines
            raise RuntimeError(f"wallet {wallet.id!r} would break 0 <= reserved <= balance")
        self._wallets[wallet.id] = wallet
        return wallet

    def _append(
        self,
        wallet_id: str,
        kind: str,
        amount: int,
        balance_after: int,
        *,
        request_id: str | None = None,
        key: str | None = None,
        memo: str | None = None,
        ref: str | None = None,
        now: float | None = None,
    ) -> None:
        entry = LedgerEntry(
            id=len(self._ledger) + 1,
            wallet_id=wallet_id,
            kind=kind,
            amount=amount,
            balance_after=balance_after,
            created_at=time.time() if now is None else now,
            request_id=request_id,
            idempotency_key=key,
            memo=memo,
            ref=ref,
        )
        self._ledger.append(entry)

    def _put_usage(self, usage: UsageRecord) -> bool:
        """Write a usage record unless one other than ``abandoned`` exists for its request;
        a replaced record keeps its place in the newest-first order."""
        previous = self._usage.get(usage.request_id)
        if previous is not None and previous.status != UsageStatus.ABANDONED:
            return False
        self._usage[usage.request_id] = usage
        return True


def _copy(usage: UsageRecord) -> UsageRecord:
    return dataclasses.replace(usage, extra=dict(usage.extra))
