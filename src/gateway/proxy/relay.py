"""The request path: admit, reserve, forward with failover, meter, settle.

    admit (model, allowlist, limits) ─▶ reserve the most it can cost ─▶ try routes cheapest
    first ─▶ relay the answer (streamed: metered chunk by chunk, cut off when the wallet
    cannot pay) ─▶ settle in one place that always runs (:class:`Settlement`)

A non-streamed answer is settled before it is returned; a stream holds back its final usage
chunk and ``[DONE]`` until the settlement is written, so an answer the client received in full
is always in the ledger.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
import structlog

from gateway.config import Config
from gateway.errors import (
    GatewayError,
    InsufficientQuota,
    InvalidRequest,
    ModelNotFound,
    PermissionDenied,
    UpstreamError,
    UpstreamTimeout,
)
from gateway.metrics import Metrics
from gateway.money import MAX_MICRO
from gateway.protocol.dialects import Action, Dialect, Texts
from gateway.protocol.stream import EventStream
from gateway.proxy.endpoints import Endpoint, Plan, plan_request
from gateway.proxy.leases import Leases
from gateway.proxy.metering import Meter
from gateway.proxy.ratelimit import RateLimiter
from gateway.proxy.routing import Route, Router
from gateway.proxy.settlement import Settlement
from gateway.proxy.upstream import Backend, UpstreamResponse, forwardable_request_headers
from gateway.storage import ApiKey, Store, UsageStatus
from gateway.tasks import TaskGroup
from gateway.tokens import TokenCounter

__all__ = ["LastChunk", "Relay", "Reply", "StreamReply"]

log = structlog.get_logger("gateway.proxy.relay")

_ERROR_BODY_BYTES = 64 * 1024


#: The events after which a stream has nothing more to say.
_ENDS = frozenset({Action.DONE, Action.ERROR})


@dataclass(frozen=True, slots=True)
class Reply:
    """A complete answer to send as is."""

    status: int
    body: bytes
    headers: dict[str, str]


class LastChunk(bytes):
    """The last chunk of a stream's body, known to be the last when it is yielded: the
    server sends it with the body's end (one write, not two)."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class StreamReply:
    """A stream to send; ``body`` settles the request however it ends, and may end with a
    :class:`LastChunk`."""

    headers: dict[str, str]
    body: AsyncGenerator[bytes, None]
    settlement: Settlement


class Relay:
    def __init__(
        self,
        *,
        config: Config,
        store: Store,
        router: Router,
        backends: Mapping[str, Backend],
        limiter: RateLimiter,
        metrics: Metrics,
        tasks: TaskGroup,
        leases: Leases,
    ) -> None:
        self._config = config
        self._store = store
        self._router = router
        self._backends = backends
        self._limiter = limiter
        self._metrics = metrics
        self._tasks = tasks
        self._leases = leases
        self._counters: dict[str, TokenCounter] = {}

    def counter(self, encoding: str) -> TokenCounter:
        counter = self._counters.get(encoding)
        if counter is None:
            counter = self._counters[encoding] = TokenCounter(encoding)
        return counter

    def load_tokenizers(self) -> None:
        """Load every route's encoding now, at start: the first request to need one would
        load it on the event loop (0.15-0.3 s each here, longer under load), and every
        request in flight would wait with it."""
        router = self._router
        for encoding in sorted({r.encoding for m in router.models for r in router.routes(m)}):
            self.counter(encoding)

    def models_for(self, key: ApiKey) -> list[str]:
        allowed = set(key.models) if key.models is not None else None
        return [m for m in self._router.models if allowed is None or m in allowed]

    # -- the request ---------------------------------------------------------------------
    async def handle(
        self,
        endpoint: Endpoint,
        key: ApiKey,
        body: dict[str, Any],
        headers: Mapping[str, str],
        request_id: str,
    ) -> Reply | StreamReply:
        plan = plan_request(endpoint, body)
        routes = self._router.routes(plan.model)
        if not routes:
            raise ModelNotFound(
                f"The model '{plan.model}' does not exist or you do not have access to it.",
                param="model",
            )
        if key.models is not None and plan.model not in key.models:
            raise PermissionDenied(
                f"This key may not use the model '{plan.model}'.",
                param="model",
                code="model_not_allowed",
            )
        await self._limiter.admit(key.id, key.rpm, key.tpm)

        prompt = {
            enc: endpoint.count(self.counter(enc), body) for enc in {r.encoding for r in routes}
        }
        per_choice = plan.bound or self._config.metering.default_reserve_tokens
        want = per_choice * plan.candidates if endpoint.generates else 0
        least = plan.candidates if endpoint.generates else 0
        ranked = sorted(routes, key=lambda r: (r.estimate(prompt[r.encoding], want), r.order))
        maximum = max(r.prices.cost_of(prompt[r.encoding], want) for r in ranked)
        minimum = min(r.prices.cost_of(prompt[r.encoding], least) for r in ranked)
        if minimum > MAX_MICRO:  # more than any wallet can hold
            raise InsufficientQuota(
                "You exceeded your current quota: the wallet cannot pay for this request.",
            )
        # A huge bound (max_tokens=10**30) costs more than storage's integers hold: no wallet
        # has that much, so reserving the most a wallet can hold asks for the same. Storage
        # holds at most what the wallet has free and the key's spend limit leaves (403 when
        # that limit cannot cover the minimum).
        reservation = await self._store.reserve(
            wallet_id=key.wallet_id,
            key_id=key.id,
            request_id=request_id,
            minimum=max(minimum, 1),
            maximum=max(min(max(maximum, minimum), MAX_MICRO), 1),
            lease_s=self._config.storage.reservation_lease_s,
        )
        if reservation is None:
            raise InsufficientQuota(
                "You exceeded your current quota: the wallet cannot pay for this request.",
            )
        settlement = Settlement(
            leases=self._leases,
            store=self._store,
            tasks=self._tasks,
            metrics=self._metrics,
            limiter=self._limiter,
            reservation=reservation,
            key=key,
            model=plan.model,
            endpoint=endpoint.name,
            stream=plan.stream,
            extend_step=self._config.metering.extend_tokens,
        )
        handed_off = False
        try:
            answer = await self._forward(endpoint, plan, body, headers, ranked, prompt, settlement)
            handed_off = isinstance(answer, StreamReply)
            return answer
        except asyncio.CancelledError:
            await settlement.settle(UsageStatus.CLIENT_DISCONNECTED, charge=False)
            raise
        except GatewayError as exc:
            status = (
                UsageStatus.UPSTREAM_ERROR if isinstance(exc, UpstreamError) else UsageStatus.ERROR
            )
            await settlement.settle(status, error=exc.code, charge=False)
            raise
        finally:
            if not handed_off:
                # nothing was delivered on any path that gets here unsettled
                await settlement.settle(UsageStatus.ERROR, error="internal", charge=False)

    async def _forward(
        self,
        endpoint: Endpoint,
        plan: Plan,
        body: dict[str, Any],
        headers: Mapping[str, str],
        ranked: list[Route],
        prompt: Mapping[str, int],
        settlement: Settlement,
    ) -> Reply | StreamReply:
        passed = forwardable_request_headers(headers)
        passed["X-Request-Id"] = settlement.request_id
        short: InsufficientQuota | None = None  # a route the reservation cannot pay one token at
        failed: UpstreamError | None = None  # the last route the wallet could pay that failed
        refused: InvalidRequest | None = None
        tried = 0
        for route in ranked:
            breaker = self._router.breaker(route)
            prompt_tokens = prompt[route.encoding]
            cap = self._completion_cap(endpoint, plan, route, prompt_tokens, settlement.reserved)
            if cap == 0:
                short = short or InsufficientQuota(
                    "You exceeded your current quota: the wallet cannot pay for this request."
                )
                continue
            dialect = endpoint.dialect(route.backend)
            try:
                upstream_body = dialect.upstream_body(
                    body, upstream_model=route.upstream_model, cap=cap, stream=plan.stream
                )
            except InvalidRequest as exc:  # this backend cannot take it (a translation)
                refused = refused or exc
                continue
            if not breaker.allow():
                unhealthy = f"No healthy backend serves '{plan.model}' right now."
                failed = failed or UpstreamError(unhealthy)
                continue
            tried += 1
            backend = self._backends[route.backend.name]
            try:
                response = await backend.send(
                    dialect.path, upstream_body, stream=plan.stream, headers=passed
                )
            except UpstreamError as exc:
                reason = "timeout" if isinstance(exc, UpstreamTimeout) else "connect"
                self._failed(route, exc, reason)
                failed = exc
                continue
            meter = Meter(self.counter(route.encoding), route.prices, prompt_tokens=prompt_tokens)
            settlement.attach(route, meter)
            try:
                if response.status >= 300:
                    answer = await self._upstream_refusal(route, response)
                    if answer is not None:
                        self._succeeded(route)
                        await settlement.settle(
                            UsageStatus.UPSTREAM_ERROR,
                            error=f"status_{answer.status}",
                            charge=False,
                        )
                        return answer
                    failed = UpstreamError(f"status {response.status}")
                    continue
                if plan.stream:
                    return await self._open_stream(
                        route, response, dialect, meter, plan, settlement
                    )
                return await self._complete(route, response, dialect, meter, plan, settlement)
            except UpstreamError as exc:
                response.close()
                self._failed(route, exc, "timeout" if isinstance(exc, UpstreamTimeout) else "body")
                failed = exc
                settlement.detach()
                continue
        # Why nothing was served: the request itself (a backend that cannot take it), else a
        # route the wallet could pay that failed, else the wallet.
        if tried == 0 and refused is not None:
            raise refused
        if failed is None:
            raise short or UpstreamError(f"No backend could serve '{plan.model}'.")
        if isinstance(failed, UpstreamTimeout):
            raise UpstreamTimeout(f"Every backend for '{plan.model}' timed out.")
        raise UpstreamError(f"Every backend for '{plan.model}' failed: {failed.message}")

    def _completion_cap(
        self, endpoint: Endpoint, plan: Plan, route: Route, prompt_tokens: int, reserved: int
    ) -> int | None:
        """The bound on each generated choice that goes upstream: the client's (or
        ``default_reserve_tokens``), lowered to what the reservation pays for at this route
        (None: the endpoint generates nothing; 0: this route is too dear for the
        reservation)."""
        if not endpoint.generates:
            return None if route.prices.prompt_cost(prompt_tokens) <= reserved else 0
        affordable = route.prices.affordable_completion(reserved, prompt_tokens)
        bound = plan.bound or self._config.metering.default_reserve_tokens
        return min(bound, affordable // plan.candidates)

    def _succeeded(self, route: Route) -> None:
        breaker = self._router.breaker(route)
        breaker.record_success()
        metrics = self._metrics
        metrics.child(metrics.circuit_open, route.backend.name).set(0)

    def _failed(self, route: Route, exc: GatewayError, reason: str) -> None:
        breaker = self._router.breaker(route)
        breaker.record_failure()
        self._metrics.upstream_errors.labels(route.backend.name, reason).inc()
        self._metrics.circuit_open.labels(route.backend.name).set(
            1 if breaker.state == "open" else 0
        )
        log.warning("upstream_failed", backend=route.backend.name, reason=reason, error=exc.message)

    async def _upstream_refusal(self, route: Route, response: UpstreamResponse) -> Reply | None:
        """A non-2xx status: None to fail over (5xx, 429, and the backend refusing the
        gateway's own credentials or model name), else the upstream's error relayed as is."""
        status = response.status
        try:
            body = response.redact(await response.read(_ERROR_BODY_BYTES))
        except UpstreamError:
            body = b""
        finally:
            response.close()
        if status >= 500 or status in (401, 403, 404, 408, 429):
            self._failed(route, UpstreamError(f"status {status}"), f"status_{status}")
            return None
        try:
            msgspec.json.decode(body)
        except msgspec.DecodeError:
            message = body.decode("utf-8", "replace")[:500] or f"status {status}"
            body = InvalidRequest(f"The backend refused the request: {message}").to_json()
        return Reply(status, body, {"content-type": "application/json"})

    async def _complete(
        self,
        route: Route,
        response: UpstreamResponse,
        dialect: Dialect,
        meter: Meter,
        plan: Plan,
        settlement: Settlement,
    ) -> Reply:
        """A complete answer, delivered as far as it is paid for: generated text past what the
        reservation pays (grown from the wallet if it can) is cut off."""
        body = await response.read(self._config.server.max_answer_bytes)
        response.release()
        meter.reported, texts = dialect.read_answer(body)
        meter.record(texts, meter.peek_bound(texts))  # most answers surely fit: no tokenizing
        if not meter.fits(0, settlement.reserved):
            meter.recount()
            if not meter.fits(0, settlement.reserved) and not await settlement.cover(
                meter.cost_with()
            ):
                keep = meter.paid_completion(settlement.reserved) // plan.candidates
                body = dialect.cut_answer(body, keep, meter.counter)
        self._succeeded(route)
        await settlement.settle(UsageStatus.OK)
        if settlement.failed is not None:
            raise settlement.failed
        usage = meter.usage(settlement.reserved)
        return Reply(200, dialect.render_answer(body, usage), response.headers)

    async def _open_stream(
        self,
        route: Route,
        response: UpstreamResponse,
        dialect: Dialect,
        meter: Meter,
        plan: Plan,
        settlement: Settlement,
    ) -> StreamReply:
        """Read up to the first event before answering, so that a backend failing before it
        says anything is failed over."""
        if "text/event-stream" not in response.headers.get("content-type", ""):
            response.close()
            raise UpstreamError(f"backend {route.backend.name!r} did not stream its answer")
        events = EventStream(dialect, response, self._config.server.max_answer_bytes)
        await events.open(route.backend.name)
        self._succeeded(route)
        body = self._relay_stream(events, response, dialect, meter, plan, settlement)
        return StreamReply(
            headers={"content-type": "text/event-stream", "cache-control": "no-cache"},
            body=body,
            settlement=settlement,
        )

    async def _relay_stream(
        self,
        reads: EventStream,
        response: UpstreamResponse,
        dialect: Dialect,
        meter: Meter,
        plan: Plan,
        settlement: Settlement,
    ) -> AsyncGenerator[bytes, None]:
        """Relay a stream read by read: the events of one upstream read are metered and
        passed on together (one write to the client per read, not per event). The plain
        deltas a read opens with are metered together, as far as the reservation surely
        covers them (most reads: all); the rest event by event."""
        status = UsageStatus.OK
        error: GatewayError | None = None
        held: list[bytes] = []
        ended = False
        plain = True  # the last event read was a plain delta: the next read may open with some
        try:
            async for events in reads:
                run = dialect.read_plain_run(events) if plain else []
                if dialect.folded(events, len(run)) or not meter.record_all(
                    run, settlement.reserved
                ):
                    # near the reservation, or past a read's plain deltas: event by event
                    if dialect.folded(events, 0):
                        events = dialect.unfolded(events)
                        run = dialect.read_plain_run(events) if plain else []
                    done = meter.record_run(run, settlement.reserved)
                else:
                    done = len(run)
                out = [event.raw for event in events[:done]]
                for i in range(done, len(events)):
                    event = events[i]
                    read = run[i] if i < len(run) else dialect.read_fast(event)
                    plain = isinstance(read, tuple)
                    texts: Texts
                    if isinstance(read, tuple):  # most events: one choice's text, relayed as is
                        texts = (read,) if read[1] else ()  # as read_event reads it
                        usage = None
                    else:
                        step = read
                        action = step.action
                        if action is Action.USAGE:
                            meter.reported = step.usage
                            if plan.wants_usage:
                                held.append(event.raw)
                            continue
                        if action is Action.DONE:
                            if step.usage is not None:
                                meter.reported = step.usage
                            held.append(event.raw)
                            ended = True
                            break
                        if action is Action.ERROR:
                            status = UsageStatus.UPSTREAM_ERROR
                            if step.usage is not None:
                                meter.reported = step.usage
                            held.append(response.redact(dialect.render_event(event, step)))
                            ended = True
                            break
                        if action is Action.DROP:
                            log.warning("upstream_bad_event", request_id=settlement.request_id)
                            continue
                        texts, usage = step.texts, step.usage  # CONTENT, or PASS: no texts
                    if texts:
                        # Cheap on the hot path: the texts' UTF-8 length bounds their
                        # tokens from above; tiktoken runs only near the reservation.
                        bound = meter.peek_bound(texts)
                        if meter.fits(bound, settlement.reserved):
                            meter.record(texts, bound)
                        elif not await self._afford_exactly(meter, texts, settlement):
                            status = UsageStatus.CUT_OFF
                            error = InsufficientQuota(
                                "The wallet cannot pay for more of this answer: "
                                "the stream was ended."
                            )
                            ended = True
                            break
                    if usage is not None:
                        meter.reported = usage
                    if isinstance(read, tuple):
                        out.append(event.raw)
                    elif rendered := dialect.render_event(event, read):  # once it is paid for
                        out.append(rendered)
                if out:
                    yield b"".join(out)
                if ended:
                    break
        except UpstreamError as exc:
            status = UsageStatus.UPSTREAM_ERROR
            error = exc
        except (asyncio.CancelledError, GeneratorExit):
            status = UsageStatus.CLIENT_DISCONNECTED
            raise
        finally:
            try:
                if status is UsageStatus.CLIENT_DISCONNECTED and meter.reported is None:
                    await self._drain(reads, dialect, meter, settlement)
            finally:
                response.close()
                await settlement.settle(status, error=error.code if error else None)
        if settlement.failed is not None:
            yield LastChunk(dialect.stream_error(settlement.failed))
            return
        if error is not None:
            yield LastChunk(dialect.stream_error(error))
            return
        tail = dialect.stream_tail(held, meter.usage(settlement.reserved))
        if tail:
            yield LastChunk(b"".join(tail))

    async def _drain(
        self,
        reads: EventStream,
        dialect: Dialect,
        meter: Meter,
        settlement: Settlement,
    ) -> None:
        """The client left before the backend's usage came (a reasoning model reports the
        reasoning it hid only there): read on, relaying nothing, for up to ``[metering]
        drain_s``, until the usage comes, the stream ends, or what was generated meanwhile
        spends the reservation. What is read is metered; the usage, if it came, is charged
        (as far as the reservation pays)."""
        wait = self._config.metering.drain_s
        if wait <= 0:
            return
        reserved = settlement.reserved
        try:
            async with asyncio.timeout(wait):
                async for events in reads:
                    for event in events:
                        step = dialect.read_event(event)
                        if step.usage is not None:
                            meter.reported = step.usage
                        if meter.reported is not None or step.action in _ENDS:
                            return
                        if step.texts:
                            added = meter.peek_bound(step.texts)
                            if not meter.fits(added, reserved):
                                meter.recount()
                                added = meter.peek(step.texts)
                                if not meter.fits(added, reserved):
                                    return  # the reservation is spent: nothing more is paid
                            meter.record(step.texts, added)
        except (TimeoutError, UpstreamError):
            pass

    @staticmethod
    async def _afford_exactly(meter: Meter, texts: Texts, settlement: Settlement) -> bool:
        """Near the reservation: count exactly (so far, and this chunk), grow the reservation
        if needed, and record the chunk if the wallet can pay for it."""
        meter.recount()
        exact = meter.peek(texts)
        if not await settlement.cover(meter.cost_with(exact)):
            return False
        meter.record(texts, exact)
        return True
