"""Rate limits counted in Redis, shared by every gateway instance that points at the same server.

The buckets behave exactly like :class:`gateway.proxy.ratelimit.LocalLimiter`'s (same refill, same
refusals, same ``Retry-After``); they live in Redis as two small hashes per key::

    {prefix}{<key_id>}:rpm    l = level, t = stamp (seconds)
    {prefix}{<key_id>}:tpm

(the braces are a cluster hash tag: both buckets of a key sit in one slot). One Lua script
refills and checks or charges them atomically, so ``admit`` (rpm and tpm together) and
``consume_tokens`` are one round trip each and concurrent instances cannot both take the last
unit. Time is the Redis server's ``TIME``, so instances whose clocks disagree still agree on the
buckets. A bucket key expires once it would be full again (at least ``idle_expiry_s`` after its
last use): an expired bucket and a full one are the same thing.

Limits fail open: when Redis refuses, errs or does not answer within ``timeout_s``, the request
goes through, ``gateway_ratelimit_fail_open`` counts it and ``ratelimit_store_unavailable`` is
logged at most once every few seconds. For ``pause_after_failure_s`` after a failure the store is
not asked at all, so an unreachable server costs requests no time. Money never depends on Redis:
wallets and spend limits are the ledger's.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.errors import RateLimited
from gateway.metrics import Metrics
from gateway.proxy.ratelimit import RateLimiter

__all__ = ["RedisLimiter"]

log = structlog.get_logger("gateway.proxy.ratelimit")

#: Seconds between two ``ratelimit_store_unavailable`` warnings.
_LOG_EVERY_S = 5.0

_ADMITTED = 0
_TPM_REFUSED = 1
_RPM_REFUSED = 2

# KEYS[1] the rpm bucket, KEYS[2] the tpm bucket (hashes: l = level, t = stamp in seconds).
# ARGV: op ("admit" | "consume"), rpm (0: none), tpm (0: none), tokens to charge (consume),
#       now in seconds ("": the server's TIME), idle expiry in ms.
# Returns {0} when admitted or charged, {1, tpm level} or {2, rpm level} when refused.
# The arithmetic and the write-backs mirror LocalLimiter step for step (same doubles, stored
# with 17 significant digits), so both compute the same Retry-After.
_SCRIPT = """
if redis.replicate_commands then redis.replicate_commands() end -- TIME before writes, Redis < 5

local function refill(key, limit, now)
  local state = redis.call('HMGET', key, 'l', 't')
  local level = tonumber(state[1])
  if level == nil then return limit end
  local elapsed = now - tonumber(state[2])
  if elapsed < 0 then elapsed = 0 end
  return math.min(limit, level + elapsed * limit / 60)
end

local function store(key, limit, level, now, idle_ms)
  redis.call('HSET', key, 'l', string.format('%.17g', level), 't', string.format('%.17g', now))
  local full_ms = math.ceil((limit - level) * 60000 / limit)
  redis.call('PEXPIRE', key, math.max(idle_ms, full_ms))
end

local op = ARGV[1]
local rpm = tonumber(ARGV[2])
local tpm = tonumber(ARGV[3])
local now
if ARGV[5] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  now = tonumber(ARGV[5])
end
local idle_ms = tonumber(ARGV[6])

if op == 'consume' then
  store(KEYS[2], tpm, refill(KEYS[2], tpm, now) - tonumber(ARGV[4]), now, idle_ms)
  return {0}
end
if tpm > 0 then
  local level = refill(KEYS[2], tpm, now)
  store(KEYS[2], tpm, level, now, idle_ms)
  if level <= 0 then return {1, string.format('%.17g', level)} end
end
if rpm > 0 then
  local level = refill(KEYS[1], rpm, now)
  if level < 1 then
    store(KEYS[1], rpm, level, now, idle_ms)
    return {2, string.format('%.17g', level)}
  end
  store(KEYS[1], rpm, level - 1, now, idle_ms)
end
return {0}
"""


class RedisLimiter(RateLimiter):
    """Token buckets in Redis at ``url``, one pair per key id, under ``prefix``.

    ``timeout_s`` bounds connecting and each reply (and, doubled, a whole call with its wait
    for a pooled connection); ``idle_expiry_s`` is the least time a bucket outlives its last
    use; for ``pause_after_failure_s`` after a failure requests pass without asking Redis;
    ``max_connections`` bounds the connections to Redis (calls wait for a free one).
    ``clock`` (seconds) replaces the server's ``TIME``: for tests, or for instances whose
    clocks are known to agree; every instance sharing a prefix must then use the same kind.
    """

    def __init__(
        self,
        url: str,
        *,
        metrics: Metrics,
        prefix: str = "gw:rl:",
        timeout_s: float = 0.25,
        idle_expiry_s: float = 120.0,
        pause_after_failure_s: float = 1.0,
        max_connections: int = 32,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, not {timeout_s!r}")
        if idle_expiry_s <= 0:
            raise ValueError(f"idle_expiry_s must be positive, not {idle_expiry_s!r}")
        if pause_after_failure_s < 0:
            raise ValueError(
                f"pause_after_failure_s must not be negative, not {pause_after_failure_s!r}"
            )
        if "{" in prefix or "}" in prefix:
            raise ValueError(f"prefix must not contain braces (a cluster hash tag): {prefix!r}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {max_connections!r}")
        # A bounded pool: a burst of requests queues for a few connections (Redis runs one
        # command at a time anyway) instead of opening hundreds at once, which on a busy host
        # can take longer than the timeout and let the whole burst through.
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=2 * timeout_s,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),  # a retry would only make a failing request slower
        )
        self._redis = redis.asyncio.Redis.from_pool(pool)
        self._script = self._redis.register_script(_SCRIPT)
        self._metrics = metrics
        self._prefix = prefix
        self._deadline_s = 2 * timeout_s
        self._idle_ms = math.ceil(idle_expiry_s * 1000)
        self._pause_s = pause_after_failure_s
        self._clock = clock
        kwargs = self._redis.connection_pool.connection_kwargs
        self._where = str(kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}")
        # failure state (one event loop: no lock needed)
        self._failing = False
        self._warned = False  # the current outage has been logged
        self._paused_until = 0.0
        self._next_warning = 0.0
        self._let_through = 0
        self._charges_dropped = 0

    def _keys(self, key_id: str) -> list[str]:
        return [f"{self._prefix}{{{key_id}}}:rpm", f"{self._prefix}{{{key_id}}}:tpm"]

    async def admit(self, key_id: str, rpm: int | None, tpm: int | None) -> None:
        if rpm is None and tpm is None:
            return
        reply = await self._run(key_id, "admit", rpm or 0, tpm or 0, 0)
        if reply is None:  # the store failed: the request goes through (counted in _run)
            return
        code = int(reply[0])
        if code == _TPM_REFUSED and tpm is not None:
            wait = (1 - float(reply[1])) * 60.0 / tpm
            raise RateLimited(
                f"Rate limit reached: {tpm} tokens per minute.", retry_after=math.ceil(wait)
            )
        if code == _RPM_REFUSED and rpm is not None:
            wait = (1 - float(reply[1])) * 60.0 / rpm
            raise RateLimited(
                f"Rate limit reached: {rpm} requests per minute.", retry_after=math.ceil(wait)
            )

    async def consume_tokens(self, key_id: str, tpm: int | None, tokens: int) -> None:
        if tpm is None or tokens <= 0:
            return
        await self._run(key_id, "consume", 0, tpm, tokens)

    async def close(self) -> None:
        await self._redis.aclose()

    async def _run(self, key_id: str, op: str, rpm: int, tpm: int, tokens: int) -> list[Any] | None:
        """The script's reply, or None when the store failed (or is paused after a failure):
        the request is then let through, or the charge dropped, and counted."""
        if self._failing and time.monotonic() < self._paused_until:
            self._count_failure(op)
            return None
        now = "" if self._clock is None else repr(self._clock())
        try:
            async with asyncio.timeout(self._deadline_s):
                reply: list[Any] = await self._script(
                    keys=self._keys(key_id), args=[op, rpm, tpm, tokens, now, self._idle_ms]
                )
        except (RedisError, OSError, TimeoutError) as exc:
            self._failing = True
            self._paused_until = time.monotonic() + self._pause_s
            self._count_failure(op)
            self._warn(exc)
            return None
        if self._failing:
            self._failing = False
            if self._warned:  # a flapping store is logged once per warning, not per flap
                self._warned = False
                log.info(
                    "ratelimit_store_recovered",
                    store=self._where,
                    requests_let_through=self._let_through,
                    token_charges_dropped=self._charges_dropped,
                )
                self._let_through = self._charges_dropped = 0
        return reply

    def _count_failure(self, op: str) -> None:
        if op == "admit":
            self._metrics.ratelimit_fail_open.inc()
            self._let_through += 1
        else:
            self._charges_dropped += 1

    def _warn(self, exc: BaseException) -> None:
        """One warning every few seconds at most, with what was let through since the last."""
        now = time.monotonic()
        if now < self._next_warning:
            return
        self._next_warning = now + _LOG_EVERY_S
        self._warned = True
        log.warning(
            "ratelimit_store_unavailable",
            store=self._where,
            error=f"{type(exc).__name__}: {exc}",
            requests_let_through=self._let_through,
            token_charges_dropped=self._charges_dropped,
        )
        self._let_through = self._charges_dropped = 0
