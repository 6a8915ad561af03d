"""Scenarios 1-3: chat under wrk (non-streaming and streaming at 64 connections, one
connection), each contender started once per upstream kind for all the scenarios of that kind,
their runs interleaved."""

from __future__ import annotations

import contextlib
import math

from ..common import Unavailable, log
from ..contenders import Target
from ..load import measured, wrk
from ..sampling import settle
from ..session import Session
from ..upstream import Upstream


def wrk_group(session: Session, upstream: Upstream, kind: str, plan: list[tuple[str, int]]) -> None:
    """Scenarios sharing an upstream kind. Every contender is started once for them all, and
    they stay up together so that runs interleave: run 1 of each contender, then run 2 of
    each... A ratio then compares measurements seconds apart, not minutes: this machine is
    shared, and its speed drifts by a third within minutes."""
    stream = kind == "sse"
    with contextlib.ExitStack() as stack:
        ready: list[tuple[str, Target, int, int]] = []  # name, target, chunks, seconds
        for name in session.opts.contenders:
            contender = session.contender(name)
            log(f"{kind}: starting {name}")
            try:
                target = stack.enter_context(
                    session.started(contender, upstream.base(kind), upstream.proc.pid)
                )
                chunks = session.ready(target, stream)
                seconds = calibrate(session, target, stream, plan[0][1])
            except Unavailable as exc:
                log(f"{name} unavailable for {kind}: {exc}")
                for scenario, _ in plan:
                    session.row(scenario, name).error = str(exc)
                continue
            ready.append((name, target, chunks, seconds))
        for scenario, connections in plan:
            for i in range(session.opts.runs):
                for name, target, chunks, seconds in ready:
                    row = session.row(scenario, name)
                    if row.error:
                        continue
                    row.chunks = chunks
                    run_seconds = seconds if connections == plan[0][1] else session.opts.seconds
                    if run_seconds != session.opts.seconds:
                        row.extra["seconds"] = run_seconds
                    run = measured(
                        row,
                        target,
                        f"{name} unavailable for {scenario}",
                        stream=stream,
                        connections=connections,
                        seconds=run_seconds,
                    )
                    if run is None:
                        continue
                    log(
                        f"{scenario} {name} run {i + 1}: {run.rate:,.0f}/s "
                        f"p50 {run.p50_ms:.2f} ms p99 {run.p99_ms:.2f} ms "
                        f"errors {run.non_2xx}+{run.socket_errors}"
                        + (f" billed {run.billed[0]}" if run.billed else "")
                    )


def calibrate(session: Session, target: Target, stream: bool, connections: int) -> int:
    """Warm up; returns the run length. A contender so slow that an answer takes longer
    than a third of a run gets longer runs (at most 60 s), so that every connection
    completes a few answers in each (else wrk, which counts only completed answers, would
    report nothing or a burst)."""
    warm = wrk(target, stream=stream, connections=connections, seconds=session.opts.warmup)
    log(f"warm-up {warm.rate:,.0f}/s, p50 {warm.p50_ms:.1f} ms")
    if warm.requests < connections:
        settle(target.pid)
        warm = wrk(target, stream=stream, connections=connections, seconds=20)
        log(f"slow: calibration {warm.rate:,.0f}/s, p50 {warm.p50_ms:.1f} ms")
    latency_s = warm.p50_ms / 1000 if warm.requests else 20.0
    seconds = min(60, max(session.opts.seconds, math.ceil(3 * latency_s)))
    if seconds != session.opts.seconds:
        log(f"runs of {seconds}s for this contender (an answer takes {latency_s:.1f}s)")
    return seconds
