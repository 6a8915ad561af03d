"""Reservations a SQLite store decides on the event loop, their rows written later if at all.

One process serves a SQLite file (the lock file in :mod:`gateway.services`), and its writes run
one transaction at a time, in order (:mod:`gateway.storage.sqlite_writer`). So the store can
decide a reservation at once, against what it knows of the wallet, instead of waiting a round
trip to storage: the request goes upstream meanwhile. A request still running after
``ROW_AFTER_S`` gets its reservation row; a quicker one is settled without one
(:meth:`Holds.settle_rowless`), so its settlement is its only write.

Per wallet, :class:`Holds` keeps

- ``known``: the wallet's ``balance - reserved`` as last committed;
- ``pending``: what the loop has held since, with no committed row;

so the loop may hold up to ``known - pending``. Transactions keep both right: committing a
reservation row, or settling a reservation that has none, takes its amount out of
``pending``; a settlement, credit or transfer records the wallet's new figure (or forgets it,
to be read again); a row that could not be written is dropped from ``pending`` and its
reservation id remembered as lost, so that its settlement charges from the wallet instead of
finding nothing to release.

Inside a transaction the database shows the transaction's own uncommitted rows, so
:meth:`unwritten` (``pending`` minus what this transaction wrote) is what other decisions
there must still leave alone. Effects are journalled per write and applied only when the
transaction commits. The journal belongs to whichever thread runs the transaction (the
writer's connection lock lets one at a time); what the loop reads (``known``, ``pending``,
the rowless reservations) is under ``_lock``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

__all__ = ["Holds"]


@dataclass
class _Journal:
    """What the open transaction did, to apply when it commits."""

    written: list[tuple[str, int]] = field(default_factory=list)  # (wallet, amount) rows
    seen: list[tuple[str, int | None]] = field(default_factory=list)  # (wallet, figure)
    settled: list[str] = field(default_factory=list)  # reservations settled without a row
    mark: tuple[int, int, int] = (0, 0, 0)  # where the current write's entries start


class Holds:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: dict[str, int] = {}
        self._pending: dict[str, int] = {}
        self._lost: set[str] = set()
        #: Reservations whose rows are not written yet: id -> (wallet, amount).
        self._rowless: dict[str, tuple[str, int]] = {}
        self._journal = _Journal()  # the transaction's thread only

    # -- the event loop --------------------------------------------------------------------
    def take(self, reservation_id: str, wallet_id: str, minimum: int, maximum: int) -> int | None:
        """Hold up to ``maximum`` (at least ``minimum``) of the wallet for a reservation whose
        row is not written yet; None when this cannot say yes: the wallet is not known yet, or
        looks short (another process may have credited it since). Then read it (:meth:`read`
        in storage) and ask again."""
        with self._lock:
            known = self._known.get(wallet_id)
            if known is None:
                return None
            held = self._pending.get(wallet_id, 0)
            available = known - held
            if available < minimum:
                return None
            amount = min(maximum, available)
            self._pending[wallet_id] = held + amount
            self._rowless[reservation_id] = (wallet_id, amount)
            return amount

    def claim_row(self, reservation_id: str) -> tuple[str, int] | None:
        """The reservation's row is to be written now: (wallet, amount), unless it was settled
        already (None)."""
        with self._lock:
            return self._rowless.pop(reservation_id, None)

    def held(self, wallet_id: str) -> int:
        """What the loop holds of the wallet beyond the committed rows."""
        with self._lock:
            return self._pending.get(wallet_id, 0)

    # -- storage, outside a transaction ------------------------------------------------------
    def read(self, wallet_id: str, available: int) -> None:
        """The wallet's committed ``balance - reserved``, just read."""
        with self._lock:
            self._known[wallet_id] = available

    # -- storage, inside a transaction ------------------------------------------------------
    def unwritten(self, wallet_id: str) -> int:
        """Held on the loop and not yet in the database as this transaction sees it."""
        written = sum(amount for wallet, amount in self._journal.written if wallet == wallet_id)
        with self._lock:
            return self._pending.get(wallet_id, 0) - written

    def wrote(self, wallet_id: str, amount: int) -> None:
        """A reservation row for ``amount`` held on the loop was written."""
        self._journal.written.append((wallet_id, amount))

    def rowless(self, reservation_id: str) -> tuple[str, int] | None:
        """(wallet, amount) of a reservation held on the loop that has no row."""
        with self._lock:
            return self._rowless.get(reservation_id)

    def settle_rowless(self, reservation_id: str, wallet_id: str, amount: int) -> None:
        """A reservation without a row is settled in this transaction: on commit its hold goes
        (as if its row had been written, then deleted)."""
        self._journal.written.append((wallet_id, amount))
        self._journal.settled.append(reservation_id)

    def seen(self, wallet_id: str, available: int | None) -> None:
        """The wallet's ``balance - reserved`` in this transaction (None: forget the figure,
        it is read again when next needed)."""
        self._journal.seen.append((wallet_id, available))

    def lost(self, reservation_id: str, wallet_id: str, amount: int) -> None:
        """A reservation row held on the loop could not be written: release the hold."""
        with self._lock:
            self._release(wallet_id, amount)
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
            for wallet_id, amount in journal.written:
                self._release(wallet_id, amount)
            for wallet_id, available in journal.seen:
                if available is None:
                    self._known.pop(wallet_id, None)
                else:
                    self._known[wallet_id] = available
            for reservation_id in journal.settled:
                self._rowless.pop(reservation_id, None)
        self.rollback()

    def rollback(self) -> None:
        self._journal = _Journal()

    def _release(self, wallet_id: str, amount: int) -> None:
        left = self._pending.get(wallet_id, 0) - amount
        if left > 0:
            self._pending[wallet_id] = left
        else:
            self._pending.pop(wallet_id, None)
