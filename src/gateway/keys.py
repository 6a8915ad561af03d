"""App keys: random secrets shown once, stored as sha256 hashes, looked up through a cache
whose entries live one second, so a revocation made anywhere is honoured within one second."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable

from gateway import tasks
from gateway.errors import AuthenticationError
from gateway.storage import ApiKey, Store

__all__ = ["KeyCache", "bearer_token", "hash_key", "new_key_id", "new_secret"]

SECRET_PREFIX = "gw-"
_TTL_S = 1.0
_MAX_ENTRIES = 100_000


def new_secret() -> str:
    """256 bits from the OS's CSPRNG."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def new_key_id() -> str:
    return "key_" + secrets.token_hex(8)


def hash_key(secret: str) -> str:
    """Keys carry 256 bits of entropy, so one sha256 is enough (no password stretching); the
    lookup is by hash, so no secret is ever compared byte by byte."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def same_secret(given: str, expected: str) -> bool:
    """Constant-time comparison (for the admin token)."""
    return hmac.compare_digest(given.encode(), expected.encode())


class KeyCache:
    def __init__(self, store: Store, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._clock = clock
        self._entries: dict[str, tuple[float, ApiKey | None]] = {}
        #: Reads of expired or missing entries under way, by key hash: when each began, and
        #: its outcome to come.
        self._reading: dict[str, tuple[float, asyncio.Future[ApiKey | None]]] = {}

    async def authenticate(self, authorization: str | None) -> ApiKey:
        """The live key behind an ``Authorization`` header, or ``AuthenticationError``."""
        secret = bearer_token(authorization)
        if secret is None:
            raise AuthenticationError("Missing API key: send 'Authorization: Bearer <your key>'.")
        digest = hash_key(secret)
        now = self._clock()
        entry = self._entries.get(digest)
        key = await self._read(digest, now) if entry is None or entry[0] <= now else entry[1]
        if key is None or key.revoked_at is not None:
            raise AuthenticationError("Incorrect API key provided.")
        if key.expires_at is not None and key.expires_at <= time.time():
            raise AuthenticationError("The API key has expired.")
        return key

    async def _read(self, digest: str, now: float) -> ApiKey | None:
        """Read a key from storage, once for all the requests that need it meanwhile: when an
        entry expires under load, every request in flight with that key would otherwise read
        it (64 reads a second for one key at 64 connections, 2-3% of the process). What a
        request gets is never older than one second: it waits for a read that began less than
        a second ago, or begins its own; the entry lives one second from when its read began.
        """
        under_way = self._reading.get(digest)
        if under_way is not None and now - under_way[0] < _TTL_S:
            reading = under_way[1]
        else:
            reading = tasks.start(self._store.get_key_by_hash(digest), name="key-read")
            self._reading[digest] = (now, reading)
            reading.add_done_callback(lambda done: self._remember(digest, now, done))
        return await asyncio.shield(reading)  # a request cancelled leaves the read to the rest

    def _remember(self, digest: str, began: float, read: asyncio.Future[ApiKey | None]) -> None:
        failed = read.cancelled() or read.exception() is not None  # each waiter gets the error
        under_way = self._reading.get(digest)
        if under_way is None or under_way[1] is not read:  # forgotten, or a newer one began
            return
        del self._reading[digest]
        if failed:
            return
        if len(self._entries) >= _MAX_ENTRIES:
            self._entries.clear()
        self._entries[digest] = (began + _TTL_S, read.result())

    def forget(self, key_hash: str) -> None:
        """Drop one entry at once (a revocation made through this process), and any read of
        it under way, which may have begun before the revocation."""
        self._entries.pop(key_hash, None)
        self._reading.pop(key_hash, None)
