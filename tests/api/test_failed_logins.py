"""The admin API's brute-force guard (gateway.api.admin.FailedLogins) on a fake clock."""

from __future__ import annotations

import pytest

from gateway.api.admin import FailedLogins
from gateway.errors import RateLimited


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_address_is_refused_after_its_failures_until_the_window_passes() -> None:
    clock = Clock()
    logins = FailedLogins(3, 60, clock)
    for _ in range(3):
        logins.check("10.0.0.1")
        logins.failed("10.0.0.1")
        clock.now += 10
    with pytest.raises(RateLimited) as refused:
        logins.check("10.0.0.1")
    assert refused.value.retry_after == 30  # the first failure leaves the window at 1060
    assert refused.value.headers == {"Retry-After": "30"}
    logins.check("10.0.0.2")  # another address is not affected
    clock.now = 1060.5  # the first failure has left the window: two are left
    logins.check("10.0.0.1")


def test_failures_outside_the_window_do_not_add_up() -> None:
    clock = Clock()
    logins = FailedLogins(2, 5, clock)
    for _ in range(10):
        logins.check("a")
        logins.failed("a")
        clock.now += 6
    logins.check("a")


def test_the_table_of_addresses_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import gateway.api.admin as admin

    monkeypatch.setattr(admin, "_MAX_ADDRESSES", 100)
    clock = Clock()
    logins = FailedLogins(5, 60, clock)
    for i in range(1000):
        logins.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(logins._failures) <= 100
