"""The PostgreSQL engine: several gateway processes, one set of wallets.

- :mod:`~gateway.storage.postgres.store`: :class:`PostgresStore` (asyncpg, the boundary to it);
- :mod:`~gateway.storage.postgres.sql`: the schema's steps and the one-statement money moves.
"""

from gateway.storage.postgres.store import PostgresStore

__all__ = ["PostgresStore"]
