"""Reservations a SQLite store decides on the event loop, their rows written later if at all.

One process serves a SQLite file (the lock file in :mod:`gateway.services`), and its writes run
one transaction at a time, in order (:mod:`gateway.storage.sqlite.writer`). So the store can
decide a reservation at once, against what it knows of the wallet, instead of waiting a round
trip to storage: the request goes upstream meanwhile. A request still running after
``ROW_AFTER_S`` gets its reservation row; a quicker one is settled without one
(:meth:`Holds.settle_rowless`), so its settlement is its only write.

A reservation holds money of two *accounts*: its wallet, and its key when the key has a spend
limit (named :func:`key_account`, its figure ``spend_limit - spent - reserved``). Per account,
:class:`Holds` keeps

- ``known``: the account's figure (a wallet's ``balance - reserved``) as last committed;
- ``pending``: what the loop has held since, with no committed row;

so the loop may hold up to ``known - pending`` of each. Transactions keep both right:
committing a reservation row, or settling a reservation that has none, takes its amount out of
``pending``; a settlement, credit or transfer records the account's new figure (or forgets it,
to be read again); a row that could not be written is dropped from ``pending`` and its
reservation id remembered as lost, so that its settlement charges from the wallet instead of
finding nothing to release. A key without a spend limit is no account: it is remembered as
``unlimited`` once read.

Inside a transaction the database shows the transaction's own uncommitted rows, so
:meth:`unwritten` (``pending`` minus what this transaction wrote) is what other decisions
there must still leave alone. Effects are journalled per write and applied only when the
transaction commits. The journal belongs to whichever thread runs the transaction (the
writer's connection lock lets one at a time); what the loop reads (``known``, ``pending``,
the rowless reservations) is under ``_lock``.
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass, field

__all__ = ["Held", "Holds", "Short", "key_account"]


def key_account(key_id: str) -> str:
    """The account of a key's spend limit (wallet ids never start with ``key:``)."""
    return "key:" + key_id


class Short(enum.Enum):
    """Why :meth:`Holds.take` did not hold."""

    UNKNOWN = "unknown"  # an account's figure is not known: read it, then ask again
    WALLET = "wallet"  # the wallet looks short (read it again: another process may credit it)
    KEY = "key"  # the key's spend limit cannot cover the minimum


@dataclass(frozen=True, slots=True)
class Held:
    """What a rowless reservation holds: ``amount`` of its wallet, and of its key's account
    (None: the key has no spend limit)."""

    wallet: str
    key: str | None
    amount: int

    @property
    def accounts(self) -> tuple[str, ...]:
        return (self.wallet,) if self.key is None else (self.wallet, self.key)


@dataclass
class _Journal:
    """What the open transaction did, to apply when it commits."""

    written: list[tuple[str, int]] = field(default_factory=list)  # (account, amount) rows
    seen: list[tuple[str, int | None]] = field(default_factory=list)  # (account, figure)
    settled: list[str] = field(default_factory=list)  # reservations settled without a row
    mark: tuple[int, int, int] = (0, 0, 0)  # where the current write's entries start


class Holds:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: dict[str, int] = {}
        self._pending: dict[str, int] = {}
        self._unlimited: set[str] = set()  # key accounts read and found without a limit
        self._lost: set[str] = set()
        #: Reservations whose rows are not written yet.
        self._rowless: dict[str, Held] = {}
        self._journal = _Journal()  # the transaction's thread only

    # -- the event loop --------------------------------------------------------------------
    def take(
        self, reservation_id: str, wallet_id: str, key_id: str | None, minimum: int, maximum: int
    ) -> int | Short:
        """Hold up to ``maximum`` (at least ``minimum``) of the wallet, and of the key's limit,
        for a reservation whose row is not written yet; else why not (:class:`Short`)."""
        with self._lock:
            key = None if key_id is None else key_account(key_id)
            if key in self._unlimited:
                key = None
            known = self._known.get(wallet_id)
            if known is None or (key is not None and key not in self._known):
                return Short.UNKNOWN
            amount = min(maximum, known - self._pending.get(wallet_id, 0))
            if key is not None:
                left = self._known[key] - self._pending.get(key, 0)
                if left < minimum:
                    return Short.KEY
                amount = min(amount, left)
            if amount < minimum:
                return Short.WALLET
            held = Held(wallet_id, key, amount)
            for account in held.accounts:
                self._pending[account] = self._pending.get(account, 0) + amount
            self._rowless[reservation_id] = held
            return amount

    def key_left(self, key_id: str) -> int:
        """What the key's limit leaves beyond the loop's holds (read it first)."""
        key = key_account(key_id)
        with self._lock:
            return self._known.get(key, 0) - self._pending.get(key, 0)

    def claim_row(self, reservation_id: str) -> Held | None:
        """The reservation's row is to be written now: what it holds, unless it was settled
        already (None)."""
        with self._lock:
            return self._rowless.pop(reservation_id, None)

    def held(self, wallet_id: str) -> int:
        """What the loop holds of the wallet beyond the committed rows."""
        with self._lock:
            return self._pending.get(wallet_id, 0)

    # -- storage, outside a transaction ------------------------------------------------------
    def read(self, account: str, figure: int | None) -> None:
        """An account's committed figure, just read (None for a key: it has no limit)."""
        with self._lock:
            if figure is None:
                self._unlimited.add(account)
            else:
                self._known[account] = figure

    def limited(self, key_id: str | None) -> bool | None:
        """Whether the key has a spend limit: None when not known (read it)."""
        if key_id is None:
            return False
        key = key_account(key_id)
        with self._lock:
            if key in self._unlimited:
                return False
            return True if key in self._known else None

    # -- storage, inside a transaction ------------------------------------------------------
    def unwritten(self, account: str) -> int:
        """Held on the loop and not yet in the database as this transaction sees it."""
        written = sum(amount for held, amount in self._journal.written if held == account)
        with self._lock:
            return self._pending.get(account, 0) - written

    def wrote(self, held: Held) -> None:
        """A reservation row held on the loop was written."""
        self._journal.written += [(account, held.amount) for account in held.accounts]

    def rowless(self, reservation_id: str) -> Held | None:
        """What a reservation held on the loop that has no row holds."""
        with self._lock:
            return self._rowless.get(reservation_id)

    def settle_rowless(self, reservation_id: str, held: Held) -> None:
        """A reservation without a row is settled in this transaction: on commit its hold goes
        (as if its row had been written, then deleted)."""
        self.wrote(held)
        self._journal.settled.append(reservation_id)

    def seen(self, account: str, figure: int | None) -> None:
        """The account's figure in this transaction (None: forget it, it is read again when
        next needed)."""
        self._journal.seen.append((account, figure))

    def lost(self, reservation_id: str, held: Held) -> None:
        """A reservation row held on the loop could not be written: release the hold."""
        with self._lock:
            for account in held.accounts:
                self._release(account, held.amount)
            self._lost.add(reservation_id)

    def is_lost(self, reservation_id: str) -> bool:
        """Whether the reservation's row was never written (kept: a settlement may be retried;
        only failed writes land here)."""
        with self._lock:
            return reservation_id in self._lost

    # -- storage, around a transaction ------------------------------------------------------
    def begin_write(self) -> None:
        journal = self._journal
        journal.mark = (len(journal.written), len(journal.seen), len(journal.settled))

    def drop_write(self) -> None:
        """The current write was rolled back to its savepoint: forget what it journalled."""
        journal = self._journal
        written, seen, settled = journal.mark
        del journal.written[written:]
        del journal.seen[seen:]
        del journal.settled[settled:]

    def commit(self) -> None:
        journal = self._journal
        with self._lock:
            for account, amount in journal.written:
                self._release(account, amount)
            for account, figure in journal.seen:
                if figure is None:
                    self._known.pop(account, None)
                else:
                    self._known[account] = figure
            for reservation_id in journal.settled:
                self._rowless.pop(reservation_id, None)
        self.rollback()

    def rollback(self) -> None:
        self._journal = _Journal()

    def _release(self, account: str, amount: int) -> None:
        left = self._pending.get(account, 0) - amount
        if left > 0:
            self._pending[account] = left
        else:
            self._pending.pop(account, None)
