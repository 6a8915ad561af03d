"""Pick a storage engine from a ``[storage] url``."""

from __future__ import annotations

from gateway.storage.base import Store

__all__ = ["store_from_url"]


def store_from_url(
    url: str, *, pool_size: int = 10, synchronous: str = "NORMAL", schema: str = ""
) -> Store:
    """``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``, ``memory://``,
    ``postgresql://user@host:5432/db``."""
    if url.startswith("sqlite://"):
        from gateway.storage.sqlite.store import SQLiteStore

        return SQLiteStore(sqlite_path(url), synchronous=synchronous)
    if url.startswith("memory://"):
        from gateway.storage.memory import MemoryStore

        return MemoryStore()
    if url.startswith(("postgresql://", "postgres://")):
        from gateway.storage.postgres.store import PostgresStore

        return PostgresStore(url, pool_size=pool_size, schema=schema or None)
    raise ValueError(f"unsupported storage url {url!r}: use sqlite:///, postgresql:// or memory://")


def sqlite_path(url: str) -> str:
    """``sqlite:///./a.db`` -> ``./a.db``; ``sqlite:////tmp/a.db`` -> ``/tmp/a.db``."""
    rest = url[len("sqlite://") :]
    if not rest.startswith("/") or rest == "/":
        raise ValueError(f"sqlite url {url!r} must look like sqlite:///path/to/file.db")
    return rest[1:]
