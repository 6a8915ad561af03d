"""The load: wrk runs (read from ``load.lua``'s ``BENCHJSON`` line), the smoke check before
them, and scenario 4's paced-client runs."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .bodies import chat_body, count_sse
from .common import BENCH, LUA, PROJECT_PY, Unavailable, log
from .contenders import Target
from .processes import http
from .results import Row
from .sampling import Sampler, settle


@dataclass
class WrkRun:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    socket_errors: int
    non_2xx: int
    billed: tuple[int, int] | None = None  # usage rows and completion tokens written meanwhile

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def wrk(target: Target, *, stream: bool, connections: int, seconds: int) -> WrkRun:
    cmd = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "30s",
        "-s",
        str(LUA),
        target.url,
        "--",
        target.key,
        "stream" if stream else "json",
    ]
    before = target.billing() if target.billing else None
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120, check=False)
    line = next((x for x in out.stdout.splitlines() if x.startswith("BENCHJSON ")), None)
    if line is None:
        raise Unavailable(f"wrk failed ({out.returncode}): {out.stdout[-500:]} {out.stderr[-500:]}")
    data = json.loads(line.removeprefix("BENCHJSON "))
    billed = None
    if target.billing and before is not None:
        billed = _billed_since(target.billing, before, data["requests"])
    return WrkRun(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        socket_errors=data["connect"] + data["read"] + data["write"] + data["timeout"],
        non_2xx=data["status"],
        billed=billed,
    )


def measured(row: Row, target: Target, what: str, **load: Any) -> WrkRun | None:
    """One measured wrk run (``load``: :func:`wrk`'s keywords) of a settled ``target``, added
    to ``row``; None if it failed: logged, and the row's error if it has no run yet."""
    settle(target.pid)
    try:
        run = wrk(target, **load)
    except Unavailable as exc:
        log(f"{what}: {exc}")
        if not row.runs:
            row.error = str(exc)
        return None
    row.runs.append(run)
    return run


def _billed_since(
    count: Callable[[], tuple[int, int]], before: tuple[int, int], expected: int
) -> tuple[int, int]:
    """Usage rows written since ``before``; waits a little for a group commit to land."""
    deadline = time.monotonic() + 5
    last = (-1, -1)
    while True:
        now = count()
        delta = (now[0] - before[0], now[1] - before[1])
        if (delta[0] >= expected and delta == last) or time.monotonic() > deadline:
            return delta
        last = delta
        time.sleep(0.3)


def smoke(target: Target, stream: bool) -> int:
    """One request checked for shape; returns the content chunks of a streamed answer."""
    headers = {"Content-Type": "application/json"}
    if target.key != "-":
        headers["Authorization"] = f"Bearer {target.key}"
    status, raw = http("POST", target.url, chat_body(stream), headers, timeout=60)
    if status != 200:
        raise Unavailable(f"smoke request -> {status}: {raw[:300]!r}")
    try:
        if stream:
            chunks, done = count_sse(raw)
            if not done or chunks == 0:
                raise Unavailable(f"stream without [DONE] or content: {raw[:300]!r}")
            return chunks
        answer = json.loads(raw)
        if not answer["choices"][0]["message"]["content"]:
            raise Unavailable(f"empty answer: {raw[:300]!r}")
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise Unavailable(f"malformed answer ({exc}): {raw[:300]!r}") from exc
    return 0


@dataclass
class PacedRun:
    complete: int
    streams: int
    errors: int
    ttft_p50_ms: float
    ttft_p99_ms: float
    cpu_percent: float
    rss_mb: float
    billed: tuple[int, int] | None
    samples: list[str]


def paced(target: Target, streams: int, tokens: int, ramp: float) -> PacedRun:
    cmd = [
        str(PROJECT_PY),
        str(BENCH / "paced_client.py"),
        "--url",
        target.url,
        "--streams",
        str(streams),
        "--tokens",
        str(tokens),
        "--ramp",
        str(ramp),
    ]
    if target.key != "-":
        cmd += ["--key", target.key]
    before = target.billing() if target.billing else None
    assert target.pid is not None
    with Sampler(target.pid) as sampler:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    if out.returncode != 0 or not out.stdout.strip():
        raise Unavailable(f"paced client failed: {out.stderr[-800:]}")
    data = json.loads(out.stdout.strip().splitlines()[-1])
    billed = None
    if target.billing and before is not None:
        billed = _billed_since(target.billing, before, data["complete"])
    return PacedRun(
        complete=data["complete"],
        streams=data["streams"],
        errors=data["errors"],
        ttft_p50_ms=data["ttft_p50_ms"],
        ttft_p99_ms=data["ttft_p99_ms"],
        cpu_percent=sampler.cpu_percent,
        rss_mb=sampler.peak_rss / 2**20,
        billed=billed,
        samples=data["error_samples"],
    )
