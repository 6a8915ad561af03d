"""The SQLite engine: one file, served by one process.

- :mod:`~gateway.storage.sqlite.store`: what is written (:class:`SQLiteStore`);
- :mod:`~gateway.storage.sqlite.writer`: how writes reach the connection (one worker thread,
  group commit, writes on the loop when it is idle);
- :mod:`~gateway.storage.sqlite.holds`: reservations decided in memory, their rows written
  behind;
- :mod:`~gateway.storage.sqlite.schema`, :mod:`~gateway.storage.sqlite.checkpoints`: the
  schema's steps, and WAL checkpoints beside the writes.
"""

from gateway.storage.sqlite.store import SQLiteStore

__all__ = ["SQLiteStore"]
