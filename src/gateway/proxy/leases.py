"""The reservations this process's requests hold, whose leases it keeps while they run.

A reservation's lease tells other instances when its owner has died: once it ends, any instance
may release the money (``Store.release_expired``). An instance that is alive renews the leases
of every request it still serves, however long that request takes (a client may read a stream
as slowly as it likes, a settlement may wait for storage to come back), so that only an
instance that stopped renewing loses them. :class:`Leases` is that set; the sweeper in
:mod:`gateway.services` renews it.
"""

from __future__ import annotations

__all__ = ["Leases"]


class Leases:
    def __init__(self) -> None:
        self._live: set[str] = set()

    def __len__(self) -> int:
        return len(self._live)

    def keep(self, reservation_id: str) -> None:
        """A request of this process holds the reservation: keep its lease."""
        self._live.add(reservation_id)

    def drop(self, reservation_id: str) -> None:
        """The reservation is settled (or given up): its lease is no longer this process's."""
        self._live.discard(reservation_id)

    def ids(self) -> list[str]:
        return list(self._live)
