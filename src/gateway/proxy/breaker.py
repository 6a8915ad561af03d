"""A small circuit breaker per backend.

closed ──(failure_threshold consecutive failures)──▶ open ──(cooldown_s)──▶ half-open
half-open lets one probe through: success closes it, failure opens it again.
Every transition is logged (``circuit_opened``, ``circuit_half_open``, ``circuit_closed``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

__all__ = ["CircuitBreaker"]

log = structlog.get_logger("gateway.proxy.breaker")


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int,
        cooldown_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._threshold = failure_threshold
        self._cooldown = cooldown_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at >= self._cooldown:
            return "half_open"
        return "open"

    def allow(self) -> bool:
        """Whether a request may go to this backend now (claims the probe when half-open)."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self._probing:
            self._probing = True
            log.info("circuit_half_open", backend=self.name)
            return True
        return False

    def record_success(self) -> None:
        if self._opened_at is not None:
            log.info("circuit_closed", backend=self.name)
        self._failures = 0
        self._opened_at = None
        self._probing = False

    def record_failure(self) -> None:
        self._failures += 1
        if self._probing or (self._opened_at is None and self._failures >= self._threshold):
            self._opened_at = self._clock()
            self._probing = False
            log.warning(
                "circuit_opened",
                backend=self.name,
                failures=self._failures,
                cooldown_s=self._cooldown,
            )

    def release_probe(self) -> None:
        """A probe that ended without a verdict (e.g. the client went away) frees the slot."""
        self._probing = False
