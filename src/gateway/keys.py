"""App keys: random secrets shown once, stored as sha256 hashes, looked up through a cache
whose entries live one second, so a revocation made anywhere is honoured within one second."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable

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

    async def authenticate(self, authorization: str | None) -> ApiKey:
        """The live key behind an ``Authorization`` header, or ``AuthenticationError``."""
        secret = bearer_token(authorization)
        if secret is None:
            raise AuthenticationError("Missing API key: send 'Authorization: Bearer <your key>'.")
        digest = hash_key(secret)
        now = self._clock()
        entry = self._entries.get(digest)
        if entry is None or entry[0] <= now:
            key = await self._store.get_key_by_hash(digest)
            if len(self._entries) >= _MAX_ENTRIES:
                self._entries.clear()
            self._entries[digest] = (now + _TTL_S, key)
        else:
            key = entry[1]
        if key is None or key.revoked_at is not None:
            raise AuthenticationError("Incorrect API key provided.")
        if key.expires_at is not None and key.expires_at <= time.time():
            raise AuthenticationError("The API key has expired.")
        return key

    def forget(self, key_hash: str) -> None:
        """Drop one entry at once (a revocation made through this process)."""
        self._entries.pop(key_hash, None)
