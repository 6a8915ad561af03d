"""Rate limits shared through Redis (gateway.proxy.ratelimit_redis), against the real server.

Each test uses a key prefix of its own (``gw:rl:test:<random>:``) and deletes only the keys
under it, so concurrent runs on one server cannot collide. Tests that need Redis skip when it
is unreachable, and fail instead when ``CI=true``. The URL can be overridden with
``GATEWAY_TEST_REDIS_URL``.
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis
import redis.asyncio
from structlog.testing import capture_logs

from gateway.errors import RateLimited
from gateway.metrics import Metrics
from gateway.proxy.ratelimit import LocalLimiter, RateLimiter
from gateway.proxy.ratelimit_redis import RedisLimiter

#: The whole module is about the Redis store (the fail-open tests need no server, though).
pytestmark = pytest.mark.redis

REDIS_URL = os.environ.get("GATEWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379")
#: Nothing listens on port 1: connections are refused at once.
DEAD_URL = "redis://127.0.0.1:1"

_redis_error: list[str | None] = []

MakeLimiter = Callable[..., RedisLimiter]


def _check_redis() -> None:
    if not _redis_error:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
        try:
            client.ping()
            _redis_error.append(None)
        except (redis.RedisError, OSError) as exc:
            _redis_error.append(f"{type(exc).__name__}: {exc}")
        finally:
            client.close()
    if _redis_error[0] is not None:
        message = f"Redis at {REDIS_URL} is unreachable ({_redis_error[0]})"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


class FakeClock:
    """Seconds, moved by hand; shared by limiters that must agree."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def fail_open_count(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value("gateway_ratelimit_fail_open_total")
    return value or 0.0


async def outcome(limiter: RateLimiter, key_id: str, rpm: int | None, tpm: int | None) -> Any:
    """None when admitted, else what the refusal says."""
    try:
        await limiter.admit(key_id, rpm, tpm)
    except RateLimited as exc:
        return (str(exc), exc.retry_after, exc.headers)
    return None


async def admitted(limiter: RateLimiter, key_id: str, rpm: int | None, tpm: int | None) -> bool:
    return await outcome(limiter, key_id, rpm, tpm) is None


# -- fixtures -------------------------------------------------------------------------------------
@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    """A key prefix of this test's own; its keys (and only those) are deleted afterwards."""
    _check_redis()
    name = f"gw:rl:test:{secrets.token_hex(6)}:"
    yield name
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=f"{name}*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
async def raw(prefix: str) -> AsyncIterator[redis.asyncio.Redis]:
    """A plain client on the test server, to look at the buckets."""
    client = redis.asyncio.Redis.from_url(REDIS_URL, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def make_limiter(metrics: Metrics) -> AsyncIterator[MakeLimiter]:
    """``make_limiter(url=REDIS_URL, **kwargs)``: a RedisLimiter, closed at teardown.

    Its timeout is 5 s unless given: on a busy test host the event loop can stall past the
    production 250 ms, and a test of the counting must not turn into one of failing open."""
    limiters: list[RedisLimiter] = []

    def make(url: str = REDIS_URL, **kwargs: Any) -> RedisLimiter:
        kwargs.setdefault("metrics", metrics)
        kwargs.setdefault("timeout_s", 5.0)
        limiter = RedisLimiter(url, **kwargs)
        limiters.append(limiter)
        return limiter

    yield make
    for limiter in limiters:
        await limiter.close()


async def _keys(raw: redis.asyncio.Redis, prefix: str) -> list[str]:
    return sorted([key async for key in raw.scan_iter(match=f"{prefix}*")])


# -- limits ---------------------------------------------------------------------------------------
async def test_rpm_limit_is_exact(make_limiter: MakeLimiter, prefix: str) -> None:
    limiter = make_limiter(prefix=prefix)
    for _ in range(5):
        await limiter.admit("key-a", 5, None)
    with pytest.raises(RateLimited, match="5 requests per minute") as refused:
        await limiter.admit("key-a", 5, None)
    # one unit comes back every 12 s: the bucket is (almost exactly) empty
    assert 1 <= refused.value.retry_after <= 12
    assert refused.value.headers["Retry-After"] == str(refused.value.retry_after)
    assert refused.value.status == 429
    # another key has buckets of its own
    await limiter.admit("key-b", 5, None)


async def test_rpm_retry_after_with_a_fixed_clock(make_limiter: MakeLimiter, prefix: str) -> None:
    clock = FakeClock()
    limiter = make_limiter(prefix=prefix, clock=clock)
    for _ in range(5):
        await limiter.admit("key", 5, None)
    with pytest.raises(RateLimited) as refused:
        await limiter.admit("key", 5, None)
    assert refused.value.retry_after == 12  # (1 - 0) * 60 / 5


async def test_tokens_past_the_tpm_limit_refuse_the_next_request(
    make_limiter: MakeLimiter, prefix: str
) -> None:
    clock = FakeClock()
    limiter = make_limiter(prefix=prefix, clock=clock)
    await limiter.admit("key", None, 100)
    await limiter.consume_tokens("key", 100, 99)
    await limiter.admit("key", None, 100)  # one token left: still admitted
    await limiter.consume_tokens("key", 100, 51)  # level -50
    with pytest.raises(RateLimited, match="100 tokens per minute") as refused:
        await limiter.admit("key", 1000, 100)
    assert refused.value.retry_after == 31  # (1 + 50) * 60 / 100 = 30.6
    clock.advance(29.9)  # level -0.17: a request needs it above zero
    with pytest.raises(RateLimited) as refused:
        await limiter.admit("key", 1000, 100)
    assert refused.value.retry_after == 1
    clock.advance(0.2)
    await limiter.admit("key", 1000, 100)


async def test_tpm_refusal_takes_no_request_unit(make_limiter: MakeLimiter, prefix: str) -> None:
    clock = FakeClock()
    limiter = make_limiter(prefix=prefix, clock=clock)
    await limiter.consume_tokens("key", 60, 61)  # level -1: two seconds to get above zero
    for _ in range(10):
        with pytest.raises(RateLimited, match="tokens per minute"):
            await limiter.admit("key", 2, 60)
    clock.advance(2.5)
    await limiter.admit("key", 2, 60)
    await limiter.admit("key", 2, 60)  # both request units were still there
    with pytest.raises(RateLimited, match="2 requests per minute"):
        await limiter.admit("key", 2, 60)


async def test_consuming_nothing_or_a_negative_amount_refills_nothing(
    make_limiter: MakeLimiter, prefix: str
) -> None:
    clock = FakeClock()
    limiter = make_limiter(prefix=prefix, clock=clock)
    await limiter.admit("key", None, 60)
    await limiter.consume_tokens("key", 60, 60)  # level 0: a second until it is above zero
    with pytest.raises(RateLimited) as drained:
        await limiter.admit("key", None, 60)
    assert drained.value.retry_after == 1
    await limiter.consume_tokens("key", 60, 0)
    await limiter.consume_tokens("key", 60, -100)
    with pytest.raises(RateLimited) as still:
        await limiter.admit("key", None, 60)
    assert still.value.retry_after == 1, "nothing was taken either"


async def test_two_instances_share_the_counts(make_limiter: MakeLimiter, prefix: str) -> None:
    first = make_limiter(prefix=prefix)
    second = make_limiter(prefix=prefix, metrics=Metrics())
    for limiter in (first, second, first, second):
        await limiter.admit("key", 4, None)
    for limiter in (first, second):
        with pytest.raises(RateLimited, match="requests per minute"):
            await limiter.admit("key", 4, None)
    # tokens charged through one instance hold back the other
    await second.admit("tokens", None, 1000)
    await second.consume_tokens("tokens", 1000, 5000)
    with pytest.raises(RateLimited, match="tokens per minute"):
        await first.admit("tokens", None, 1000)


async def test_an_other_prefix_is_an_other_set_of_buckets(
    make_limiter: MakeLimiter, prefix: str
) -> None:
    one = make_limiter(prefix=prefix + "one:")
    other = make_limiter(prefix=prefix + "other:")
    await one.admit("key", 1, None)
    await other.admit("key", 1, None)
    with pytest.raises(RateLimited):
        await one.admit("key", 1, None)


async def test_buckets_refill_over_time(make_limiter: MakeLimiter, prefix: str) -> None:
    clock = FakeClock()
    limiter = make_limiter(prefix=prefix, clock=clock)
    for _ in range(60):
        await limiter.admit("key", 60, None)
    with pytest.raises(RateLimited) as refused:
        await limiter.admit("key", 60, None)
    assert refused.value.retry_after == 1
    clock.advance(0.5)
    assert not await admitted(limiter, "key", 60, None)
    clock.advance(0.5)
    assert await admitted(limiter, "key", 60, None)
    assert not await admitted(limiter, "key", 60, None)
    # a long pause fills the bucket to its limit, not beyond
    clock.advance(3600)
    results = [await admitted(limiter, "key", 60, None) for _ in range(61)]
    assert results == [True] * 60 + [False]


async def test_buckets_refill_on_the_server_clock(
    make_limiter: MakeLimiter, prefix: str, metrics: Metrics
) -> None:
    limiter = make_limiter(prefix=prefix)  # Redis TIME
    taken = 0
    while await admitted(limiter, "key", 600, None):  # 10 a second
        taken += 1
        assert taken < 3000
    assert taken >= 600
    # Drained: what comes back is what the clock gives, a unit every 0.1 s (the first one may
    # be nearly back already: the bucket keeps fractions), not a full bucket.
    started = time.monotonic()
    burst = [await admitted(limiter, "key", 600, None) for _ in range(5)]
    assert burst.count(True) <= 1 + int((time.monotonic() - started) / 0.1), burst
    await asyncio.sleep(0.3)  # 3 units back
    assert await admitted(limiter, "key", 600, None)
    # but nowhere near the 600 of a full bucket
    results = await asyncio.gather(*(admitted(limiter, "key", 600, None) for _ in range(100)))
    assert results.count(True) < 50
    assert fail_open_count(metrics) == 0


async def test_the_same_answers_as_the_local_limiter(
    make_limiter: MakeLimiter, prefix: str
) -> None:
    """Step for step on one clock, RedisLimiter refuses exactly when LocalLimiter does, with
    the same message and Retry-After."""
    clock = FakeClock()
    local = LocalLimiter(clock=clock)
    shared = make_limiter(prefix=prefix, clock=clock)
    limits: dict[str, tuple[int | None, int | None]] = {
        "both": (7, 500),
        "rpm-only": (3, None),
        "tpm-only": (None, 90),
        "odd": (13, 777),
    }
    rng = random.Random(20240607)
    refusals = 0
    for _ in range(1500):
        clock.advance(rng.choice([0.0, 0.0, 0.001, 0.05, 0.3, 1.7, 4.61, 13.0]))
        key_id = rng.choice(list(limits))
        rpm, tpm = limits[key_id]
        if rng.random() < 0.35:
            tokens = rng.choice([0, 1, 17, 120, 499, 1500])
            await local.consume_tokens(key_id, tpm, tokens)
            await shared.consume_tokens(key_id, tpm, tokens)
        else:
            expected = await outcome(local, key_id, rpm, tpm)
            assert await outcome(shared, key_id, rpm, tpm) == expected
            refusals += expected is not None
    assert 100 < refusals < 1400  # the sequence exercised both answers


async def test_concurrent_admits_take_exactly_the_limit(
    make_limiter: MakeLimiter, prefix: str, metrics: Metrics
) -> None:
    limiter = make_limiter(prefix=prefix)
    results = await asyncio.gather(*(admitted(limiter, "key", 50, None) for _ in range(100)))
    assert results.count(True) == 50
    assert fail_open_count(metrics) == 0


async def test_concurrent_admits_through_two_instances_take_exactly_the_limit(
    make_limiter: MakeLimiter, prefix: str, metrics: Metrics
) -> None:
    first = make_limiter(prefix=prefix)
    second = make_limiter(prefix=prefix)
    results = await asyncio.gather(
        *(admitted(first if i % 2 else second, "key", 50, 10_000) for i in range(100))
    )
    assert results.count(True) == 50
    assert fail_open_count(metrics) == 0


# -- keys in Redis --------------------------------------------------------------------------------
async def test_buckets_expire_once_they_would_be_full(
    make_limiter: MakeLimiter, prefix: str, raw: redis.asyncio.Redis
) -> None:
    limiter = make_limiter(prefix=prefix)
    await limiter.admit("key", 5, 100)
    rpm_key, tpm_key = f"{prefix}{{key}}:rpm", f"{prefix}{{key}}:tpm"
    assert await _keys(raw, prefix) == [rpm_key, tpm_key]
    assert 119_000 < await raw.pttl(rpm_key) <= 120_000  # idle expiry
    assert 119_000 < await raw.pttl(tpm_key) <= 120_000
    # 10,000 tokens over a 100 tpm limit: full again in 100 minutes, not forgotten in 2
    await limiter.consume_tokens("key", 100, 10_000)
    assert 5_990_000 < await raw.pttl(tpm_key) <= 6_000_000
    assert float(await raw.hget(tpm_key, "l") or "nan") == pytest.approx(-9900, abs=1)


async def test_nothing_to_count_asks_nothing(
    make_limiter: MakeLimiter, prefix: str, raw: redis.asyncio.Redis, metrics: Metrics
) -> None:
    limiter = make_limiter(prefix=prefix)
    await limiter.admit("key", None, None)
    await limiter.consume_tokens("key", None, 100)
    await limiter.consume_tokens("key", 100, 0)
    await limiter.consume_tokens("key", 100, -100)
    assert await _keys(raw, prefix) == []
    dead = make_limiter(DEAD_URL)
    await dead.admit("key", None, None)
    assert fail_open_count(metrics) == 0


# -- failing open ---------------------------------------------------------------------------------
async def test_requests_pass_when_redis_refuses_connections(
    make_limiter: MakeLimiter, metrics: Metrics
) -> None:
    limiter = make_limiter(DEAD_URL, pause_after_failure_s=0)
    started = time.monotonic()
    with capture_logs() as logs:
        for _ in range(20):
            await limiter.admit("key", 1, 1)  # would be refused from the second on
        await limiter.consume_tokens("key", 1, 1000)
    assert time.monotonic() - started < 2
    assert fail_open_count(metrics) == 20
    warnings = [entry for entry in logs if entry["event"] == "ratelimit_store_unavailable"]
    assert len(warnings) == 1  # not one per request
    assert warnings[0]["log_level"] == "warning"
    assert warnings[0]["store"] == "127.0.0.1:1"
    assert "ConnectionError" in warnings[0]["error"]
    assert warnings[0]["requests_let_through"] == 1


async def test_after_a_failure_requests_pass_without_asking(
    make_limiter: MakeLimiter, metrics: Metrics
) -> None:
    """While paused after a failure, a silent server costs requests no time."""
    silent = await SilentServer.start()
    try:
        limiter = make_limiter(silent.url, timeout_s=0.1, pause_after_failure_s=60)
        started = time.monotonic()
        await limiter.admit("key", 1, None)
        first = time.monotonic() - started
        started = time.monotonic()
        for _ in range(100):
            await limiter.admit("key", 1, None)
        rest = time.monotonic() - started
    finally:
        await silent.stop()
    assert first >= 0.1
    assert rest < 1.0  # asking would have taken 100 x 0.1 s
    assert fail_open_count(metrics) == 101


async def test_requests_pass_when_redis_does_not_answer(
    make_limiter: MakeLimiter, metrics: Metrics
) -> None:
    """A server that accepts connections and never replies: each call gives up after the
    socket timeout."""
    silent = await SilentServer.start()
    try:
        limiter = make_limiter(silent.url, timeout_s=0.1, pause_after_failure_s=0)
        started = time.monotonic()
        with capture_logs() as logs:
            for _ in range(3):
                await limiter.admit("key", 1, None)
        elapsed = time.monotonic() - started
    finally:
        await silent.stop()
    assert fail_open_count(metrics) == 3
    assert 0.25 <= elapsed < 3.0  # at most 2 x 0.1 s a call, and a busy host's delays
    [warning] = [entry for entry in logs if entry["event"] == "ratelimit_store_unavailable"]
    assert "Timeout" in warning["error"]


async def test_limits_return_when_redis_comes_back(
    make_limiter: MakeLimiter, prefix: str, metrics: Metrics
) -> None:
    proxy = await Relay.start(REDIS_URL)
    try:
        limiter = make_limiter(proxy.url, prefix=prefix, pause_after_failure_s=0.05)
        await limiter.admit("key", 2, None)
        with capture_logs() as logs:
            await proxy.cut()
            await limiter.admit("key", 2, None)  # passes: Redis is out of reach
            await limiter.admit("key", 2, None)  # passes without asking (paused)
            assert fail_open_count(metrics) == 2
            await proxy.restore()
            await asyncio.sleep(0.1)
            await limiter.admit("key", 2, None)  # the second unit, counted in Redis
            with pytest.raises(RateLimited):
                await limiter.admit("key", 2, None)
    finally:
        await proxy.stop()
    events = [entry["event"] for entry in logs]
    assert events == ["ratelimit_store_unavailable", "ratelimit_store_recovered"]
    assert logs[1]["requests_let_through"] == 1  # the paused one, since the warning
    assert fail_open_count(metrics) == 2


async def test_a_flapping_store_is_logged_once(
    make_limiter: MakeLimiter, prefix: str, metrics: Metrics
) -> None:
    proxy = await Relay.start(REDIS_URL)
    try:
        limiter = make_limiter(proxy.url, prefix=prefix, pause_after_failure_s=0)
        await limiter.admit("key", 100, None)
        with capture_logs() as logs:
            for _ in range(3):
                await proxy.cut()
                await limiter.admit("key", 100, None)
                await proxy.restore()
                await limiter.admit("key", 100, None)
    finally:
        await proxy.stop()
    assert [entry["event"] for entry in logs] == [
        "ratelimit_store_unavailable",
        "ratelimit_store_recovered",
    ]
    assert logs[0]["requests_let_through"] == 1
    assert logs[1]["requests_let_through"] == 0  # since the warning (later ones: next log)
    assert fail_open_count(metrics) == 3  # every one is counted


# -- construction ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"timeout_s": 0}, "timeout_s"),
        ({"idle_expiry_s": -1}, "idle_expiry_s"),
        ({"pause_after_failure_s": -0.5}, "pause_after_failure_s"),
        ({"prefix": "gw:{rl}:"}, "braces"),
        ({"max_connections": 0}, "max_connections"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RedisLimiter(REDIS_URL, metrics=Metrics(), **kwargs)


def test_a_url_that_is_not_redis_is_refused() -> None:
    with pytest.raises(ValueError, match="redis://"):
        RedisLimiter("postgresql://127.0.0.1/test", metrics=Metrics())


# -- test servers ---------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class SilentServer:
    """Accepts connections, reads, never answers."""

    def __init__(self, server: asyncio.Server) -> None:
        self._server = server
        self._writers: list[asyncio.StreamWriter] = []
        port = server.sockets[0].getsockname()[1]
        self.url = f"redis://127.0.0.1:{port}"

    @classmethod
    async def start(cls) -> SilentServer:
        holder: list[SilentServer] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            holder[0]._writers.append(writer)
            while await reader.read(4096):
                pass

        silent = cls(await asyncio.start_server(handle, "127.0.0.1", 0))
        holder.append(silent)
        return silent

    async def stop(self) -> None:
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()


class Relay:
    """A TCP relay to Redis that can be cut (connections dropped, new ones refused) and
    restored on the same port."""

    def __init__(self, target: tuple[str, int], port: int) -> None:
        self._target = target
        self._port = port
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.url = f"redis://127.0.0.1:{port}"

    @classmethod
    async def start(cls, url: str) -> Relay:
        kwargs = redis.asyncio.Redis.from_url(url).connection_pool.connection_kwargs
        relay = cls((str(kwargs["host"]), int(kwargs["port"])), _free_port())
        await relay.restore()
        return relay

    async def restore(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self._port)

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def stop(self) -> None:
        await self.cut()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._target)
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.transport.abort()
                self._writers.discard(dst)

        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
