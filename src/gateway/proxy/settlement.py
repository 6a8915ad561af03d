"""One request's money, from reservation to settlement, settled exactly once.

Every path a request can end by (an answer, an upstream failure, a cut-off, a client that
went away, a bug) calls :meth:`Settlement.settle`; the first call wins. The write is awaited
by the request's own task (SQLite with its writer idle commits it on the loop, without
suspending). Settling is idempotent, and a store runs a reservation's writes in the order they
were sent, which makes cancellation safe: if the request's task is cancelled while it waits (the
gateway shutting down), a task of the gateway's settles again, finding the write already made
or making it. Writes storage refused are tried again in a task of their own. It also writes the
request's one log event and metrics.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

import structlog

from gateway.errors import StorageUnavailable
from gateway.logs import info_event
from gateway.metrics import Metrics
from gateway.money import MICRO, ceil_div
from gateway.pricing import TokenCounts
from gateway.proxy.leases import Leases
from gateway.proxy.metering import Meter
from gateway.proxy.ratelimit import RateLimiter
from gateway.proxy.routing import Route
from gateway.storage import ApiKey, Reservation, Store, UsageRecord, UsageStatus
from gateway.tasks import TaskGroup

__all__ = ["Settlement"]

log = structlog.get_logger("gateway.request")

#: How long a settlement storage refused is retried in the background (backing off to 10 s).
RETRY_FOR_S = 3600.0


class Settlement:
    def __init__(
        self,
        *,
        leases: Leases,
        store: Store,
        tasks: TaskGroup,
        metrics: Metrics,
        limiter: RateLimiter,
        reservation: Reservation,
        key: ApiKey,
        model: str,
        endpoint: str,
        stream: bool,
        extend_step: int,
    ) -> None:
        self._leases = leases
        self._store = store
        self._tasks = tasks
        self._metrics = metrics
        self._limiter = limiter
        self._reservation = reservation
        self._key = key
        self._model = model
        self._endpoint = endpoint
        self._stream = stream
        self._extend_step = extend_step
        self._started = time.perf_counter()
        self._route: Route | None = None
        self._meter: Meter | None = None
        self._settling = False
        #: Set when storage refused the settlement: the client must not get a clean end.
        self.failed: StorageUnavailable | None = None
        metrics.active += 1
        leases.keep(reservation.id)

    @property
    def request_id(self) -> str:
        return self._reservation.request_id

    @property
    def reservation_id(self) -> str:
        return self._reservation.id

    @property
    def reserved(self) -> int:
        return self._reservation.amount

    def attach(self, route: Route, meter: Meter) -> None:
        """The route now being tried, and the meter measuring its answer."""
        self._route = route
        self._meter = meter

    def detach(self) -> None:
        self._meter = None

    async def cover(self, cost: int) -> bool:
        """Make sure the reservation covers ``cost``, growing it from the wallet if needed;
        False when the wallet cannot pay that much."""
        if cost <= self._reservation.amount:
            return True
        needed = cost - self._reservation.amount
        step = needed
        if self._route is not None:
            step = max(needed, ceil_div(self._extend_step * self._route.prices.output, MICRO))
        try:
            grown = await self._store.extend(self._reservation, minimum=needed, maximum=step)
        except StorageUnavailable:
            return False
        if grown is None:
            return False
        self._reservation = grown
        return True

    async def settle(
        self, status: UsageStatus, *, error: str | None = None, charge: bool = True
    ) -> None:
        """Charge what was consumed (when ``charge`` and a meter measured an answer), release
        the rest, record the usage. Only the first call does anything."""
        if self._settling:
            return
        meter = self._meter if charge else None
        usage = meter.usage(self._reservation.amount) if meter is not None else TokenCounts()
        cost = meter.cost(usage) if meter is not None else 0
        record = UsageRecord(
            request_id=self._reservation.request_id,
            key_id=self._key.id,
            wallet_id=self._key.wallet_id,
            model=self._model,
            backend=self._route.backend.name if self._route is not None else None,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cached_tokens=usage.cached_tokens,
            status=str(status),
            created_at=time.time(),
            stream=self._stream,
            latency_ms=int((time.perf_counter() - self._started) * 1000),
            endpoint=self._endpoint,
            extra={"error": error} if error else {},
        )
        self._settling = True
        try:
            written: UsageRecord | None = await self._store.settle(self._reservation, record, cost)
        except StorageUnavailable:
            written = None  # tried again below, as any refused write
        except asyncio.CancelledError:
            # The request's task is cancelled (the gateway shuts down) while the write it sent
            # runs on: a task of the gateway's settles again, which is idempotent (it finds the
            # first write's record, or makes it if that one failed).
            self._tasks.spawn(self._write(record, cost, 0), name=self._task_name)
            raise
        except BaseException:
            self._ended(record, cost, None)
            raise
        if written is not None:
            self._ended(record, cost, written)
            return
        # Storage refused it: tried again, and waited for, in a task that the request's
        # cancellation cannot stop.
        await asyncio.shield(self._tasks.spawn(self._write(record, cost, 1), name=self._task_name))

    @property
    def _task_name(self) -> str:
        return f"settle-{self._reservation.request_id}"

    async def _write(self, record: UsageRecord, cost: int, tried: int) -> None:
        """The settlement's write, ``tried`` times already: up to three times in all."""
        written: UsageRecord | None = None
        try:
            for attempt in range(tried, 3):
                if attempt:
                    await asyncio.sleep(0.05 * attempt)
                try:
                    written = await self._store.settle(self._reservation, record, cost)
                    break
                except StorageUnavailable as exc:
                    if attempt == 2:
                        self.failed = exc
                        self._metrics.settlement_failures.inc()
                        log.error(
                            "settlement_failed",
                            request_id=record.request_id,
                            key_id=record.key_id,
                            wallet_id=record.wallet_id,
                            cost_micro=cost,
                            error=exc.message,
                        )
        finally:
            self._ended(record, cost, written)

    def _ended(self, record: UsageRecord, cost: int, written: UsageRecord | None) -> None:
        """The settlement's write is over, ``written`` or not."""
        self._metrics.active -= 1
        # The log line and metrics wait two loop turns: the request has sent its answer by
        # then (they are off its latency).
        loop = asyncio.get_running_loop()
        loop.call_soon(loop.call_soon, self._observe, written or record, cost)
        if written is None and self.failed is not None:
            if not self._stream:  # the client gets the 503, not the answer: nothing to charge
                record = dataclasses.replace(
                    record, status=str(UsageStatus.ERROR), extra={"error": "storage_unavailable"}
                )
                cost = 0
            self._tasks.spawn(self._retry(record, cost), name=f"settle-retry-{record.request_id}")
        else:
            self._leases.drop(self._reservation.id)

    async def _retry(self, record: UsageRecord, cost: int) -> None:
        """Storage refused the settlement: keep it, and write it once storage is back, so that
        a stream's delivered tokens are charged and the reservation is freed then (not at the
        end of its lease). A plain answer was refused with 503: it is settled at no cost."""
        delay, deadline = 0.25, time.monotonic() + RETRY_FOR_S
        try:
            while time.monotonic() < deadline:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                try:
                    written = await self._store.settle(self._reservation, record, cost)
                except StorageUnavailable:
                    continue
                log.warning(
                    "settlement_recovered",
                    request_id=written.request_id,
                    wallet_id=written.wallet_id,
                    cost_micro=written.cost,
                    shortfall_micro=written.shortfall,
                )
                return
            log.error("settlement_given_up", request_id=record.request_id, cost_micro=cost)
        finally:
            self._leases.drop(self._reservation.id)

    def _observe(self, usage: UsageRecord, cost: int) -> None:
        m = self._metrics
        backend = usage.backend or ""
        m.requests.add((usage.endpoint, usage.model, usage.status))
        m.latency.observe(usage.endpoint, usage.latency_ms / 1000)
        if usage.prompt_tokens:
            m.tokens.add((usage.model, backend, "prompt"), usage.prompt_tokens)
        if usage.completion_tokens:
            m.tokens.add((usage.model, backend, "completion"), usage.completion_tokens)
        if usage.cost:
            m.credits.add((usage.model, backend), usage.cost)
        if usage.shortfall:
            m.shortfall.add((usage.model, backend), usage.shortfall)
        if self._key.tpm:
            tokens = usage.prompt_tokens + usage.completion_tokens
            self._tasks.spawn(
                self._limiter.consume_tokens(self._key.id, self._key.tpm, tokens),
                name=f"tpm-{usage.request_id}",
            )
        info_event(
            log,
            "request_completed",
            {
                "request_id": usage.request_id,
                "key_id": usage.key_id,
                "wallet_id": usage.wallet_id,
                "model": usage.model,
                "backend": usage.backend,
                "endpoint": usage.endpoint,
                "stream": usage.stream,
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "cached_tokens": usage.cached_tokens,
                "cost_micro": usage.cost,
                "shortfall_micro": usage.shortfall,
                "latency_ms": usage.latency_ms,
                "outcome": usage.status,
                "error": usage.extra.get("error"),
            },
        )
