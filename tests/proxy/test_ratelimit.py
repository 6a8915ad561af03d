"""Per-key rpm/tpm token buckets (gateway.proxy.ratelimit.LocalLimiter) on a fake clock."""

from __future__ import annotations

import math

import pytest

from gateway.errors import RateLimited
from gateway.proxy.ratelimit import LocalLimiter


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def limiter(clock: FakeClock) -> LocalLimiter:
    return LocalLimiter(clock=clock)


# -- rpm -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("rpm", [1, 3, 60, 1000])
async def test_rpm_admits_n_then_refuses(limiter: LocalLimiter, rpm: int) -> None:
    for _ in range(rpm):
        await limiter.admit("k", rpm, None)
    with pytest.raises(RateLimited) as info:
        await limiter.admit("k", rpm, None)
    error = info.value
    assert error.status == 429
    assert error.retry_after >= 1
    assert error.headers["Retry-After"] == str(error.retry_after)
    # one request's worth of bucket refills in 60/rpm seconds
    assert error.retry_after == max(1, math.ceil(60 / rpm))


async def test_a_refusal_takes_nothing(limiter: LocalLimiter, clock: FakeClock) -> None:
    await limiter.admit("k", 1, None)
    for _ in range(5):
        with pytest.raises(RateLimited):
            await limiter.admit("k", 1, None)
    clock.advance(60)
    await limiter.admit("k", 1, None)  # the refusals did not dig the bucket deeper


async def test_rpm_refills_over_time(limiter: LocalLimiter, clock: FakeClock) -> None:
    for _ in range(2):
        await limiter.admit("k", 2, None)
    with pytest.raises(RateLimited) as info:
        await limiter.admit("k", 2, None)
    assert info.value.retry_after == 30
    clock.advance(29)
    with pytest.raises(RateLimited) as info:
        await limiter.admit("k", 2, None)
    assert info.value.retry_after == 1
    clock.advance(1)
    await limiter.admit("k", 2, None)
    with pytest.raises(RateLimited):
        await limiter.admit("k", 2, None)


async def test_retry_after_is_enough(limiter: LocalLimiter, clock: FakeClock) -> None:
    for _ in range(7):
        await limiter.admit("k", 7, None)
    with pytest.raises(RateLimited) as info:
        await limiter.admit("k", 7, None)
    clock.advance(info.value.retry_after)
    await limiter.admit("k", 7, None)


async def test_rpm_refill_is_capped_at_the_limit(limiter: LocalLimiter, clock: FakeClock) -> None:
    await limiter.admit("k", 3, None)
    clock.advance(3600)  # an idle hour does not bank 60 minutes of requests
    for _ in range(3):
        await limiter.admit("k", 3, None)
    with pytest.raises(RateLimited):
        await limiter.admit("k", 3, None)


# -- tpm -----------------------------------------------------------------------------------------
async def test_tpm_admits_while_tokens_remain(limiter: LocalLimiter) -> None:
    await limiter.admit("k", None, 1000)
    await limiter.consume_tokens("k", 1000, 999)
    await limiter.admit("k", None, 1000)  # one token left: a request may start


async def test_tpm_used_up_blocks_the_next_request(limiter: LocalLimiter) -> None:
    await limiter.admit("k", None, 600)
    await limiter.consume_tokens("k", 600, 600)
    with pytest.raises(RateLimited) as info:
        await limiter.admit("k", None, 600)
    assert info.value.retry_after >= 1


@pytest.mark.parametrize(
    ("tpm", "deficit"), [(600, 0), (600, 300), (600, 6000), (60, 59), (100, 7)]
)
async def test_tpm_retry_after_matches_the_deficit(
    limiter: LocalLimiter, clock: FakeClock, tpm: int, deficit: int
) -> None:
    await limiter.admit("k", None, tpm)
    await limiter.consume_tokens("k", tpm, tpm + deficit)
    with pytest.raises(RateLimited) as info:
        await limiter.admit("k", None, tpm)
    retry_after = info.value.retry_after
    # the bucket refills tpm tokens a minute; it must climb back above zero
    assert retry_after >= deficit * 60 / tpm
    assert retry_after == max(1, math.ceil((deficit + 1) * 60 / tpm))
    clock.advance(retry_after)
    await limiter.admit("k", None, tpm)


async def test_tpm_deficit_shortly_before_retry_after_still_refuses(
    limiter: LocalLimiter, clock: FakeClock
) -> None:
    await limiter.admit("k", None, 60)  # one token a second
    await limiter.consume_tokens("k", 60, 60 + 30)  # 30 tokens in debt
    clock.advance(29)
    with pytest.raises(RateLimited) as info:
        await limiter.admit("k", None, 60)
    assert info.value.retry_after == 2
    clock.advance(2)
    await limiter.admit("k", None, 60)


async def test_consume_nothing_or_negative_changes_nothing(limiter: LocalLimiter) -> None:
    """Drained to exactly zero, the bucket refuses the next request; consuming nothing, or a
    negative amount, must not refill it (nor take more)."""
    await limiter.admit("k", None, 60)
    await limiter.consume_tokens("k", 60, 60)  # level 0: a second until it is above zero
    with pytest.raises(RateLimited) as drained:
        await limiter.admit("k", None, 60)
    assert drained.value.retry_after == 1
    await limiter.consume_tokens("k", 60, 0)
    await limiter.consume_tokens("k", 60, -100)
    with pytest.raises(RateLimited) as still:
        await limiter.admit("k", None, 60)
    assert still.value.retry_after == 1, "nothing was taken either"


async def test_tpm_refusal_does_not_take_a_request(limiter: LocalLimiter, clock: FakeClock) -> None:
    await limiter.admit("k", 1, 6000)
    clock.advance(60)  # the rpm bucket is full again
    await limiter.consume_tokens("k", 6000, 6100)  # 100 tokens in debt, 100 come back a second
    with pytest.raises(RateLimited, match="tokens per minute"):
        await limiter.admit("k", 1, 6000)
    clock.advance(2)
    await limiter.admit("k", 1, 6000)  # the rpm unit was not spent by the tpm refusal


async def test_rpm_and_tpm_together(limiter: LocalLimiter) -> None:
    await limiter.admit("k", 2, 100)
    await limiter.consume_tokens("k", 100, 10)
    await limiter.admit("k", 2, 100)
    with pytest.raises(RateLimited, match="requests per minute"):
        await limiter.admit("k", 2, 100)


# -- independence and no limits ------------------------------------------------------------------
async def test_keys_are_independent(limiter: LocalLimiter) -> None:
    await limiter.admit("a", 1, 100)
    await limiter.consume_tokens("a", 100, 500)
    with pytest.raises(RateLimited):
        await limiter.admit("a", 1, 100)
    await limiter.admit("b", 1, 100)
    await limiter.consume_tokens("b", 100, 5)
    with pytest.raises(RateLimited):
        await limiter.admit("b", 1, 100)
    await limiter.admit("c", 1, 100)


async def test_none_limits_never_refuse(limiter: LocalLimiter) -> None:
    for _ in range(10_000):
        await limiter.admit("k", None, None)
    await limiter.consume_tokens("k", None, 10**12)
    await limiter.admit("k", None, None)


async def test_no_tpm_limit_ignores_token_use_but_rpm_still_counts(
    limiter: LocalLimiter,
) -> None:
    await limiter.consume_tokens("k", None, 10**9)
    await limiter.admit("k", 1, None)
    with pytest.raises(RateLimited):
        await limiter.admit("k", 1, None)


async def test_close_is_harmless(limiter: LocalLimiter) -> None:
    await limiter.close()
