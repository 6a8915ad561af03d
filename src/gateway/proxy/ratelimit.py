"""Per-key request and token rate limits (rpm, tpm) as token buckets.

A bucket holds up to ``limit`` units and refills at ``limit`` per minute. A request takes one
unit of its key's rpm bucket; the tpm bucket must be above zero to start a request and is
charged the tokens actually used when the request ends (so it can go negative and make the
next request wait). Refusals carry the seconds until the bucket has room (``Retry-After``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.errors import RateLimited

__all__ = ["LocalLimiter", "RateLimiter"]


@dataclass(slots=True)
class _Bucket:
    level: float
    stamp: float


class RateLimiter:
    """Interface: in-process here; a Redis implementation shares the counts between instances."""

    async def admit(self, key_id: str, rpm: int | None, tpm: int | None) -> None:
        raise NotImplementedError

    async def consume_tokens(self, key_id: str, tpm: int | None, tokens: int) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        return None


class LocalLimiter(RateLimiter):
    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[tuple[str, str], _Bucket] = {}

    def _refill(self, name: tuple[str, str], limit: int) -> _Bucket:
        now = self._clock()
        bucket = self._buckets.get(name)
        if bucket is None:
            bucket = self._buckets[name] = _Bucket(float(limit), now)
        else:
            bucket.level = min(float(limit), bucket.level + (now - bucket.stamp) * limit / 60.0)
            bucket.stamp = now
        return bucket

    async def admit(self, key_id: str, rpm: int | None, tpm: int | None) -> None:
        if tpm is not None:
            tokens = self._refill((key_id, "tpm"), tpm)
            if tokens.level <= 0:
                wait = (1 - tokens.level) * 60.0 / tpm
                raise RateLimited(
                    f"Rate limit reached: {tpm} tokens per minute.", retry_after=math.ceil(wait)
                )
        if rpm is not None:
            requests = self._refill((key_id, "rpm"), rpm)
            if requests.level < 1:
                wait = (1 - requests.level) * 60.0 / rpm
                raise RateLimited(
                    f"Rate limit reached: {rpm} requests per minute.", retry_after=math.ceil(wait)
                )
            requests.level -= 1

    async def consume_tokens(self, key_id: str, tpm: int | None, tokens: int) -> None:
        if tpm is not None and tokens > 0:
            self._refill((key_id, "tpm"), tpm).level -= tokens
