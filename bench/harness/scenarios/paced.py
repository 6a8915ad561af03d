"""Scenario 4: a thousand concurrent paced streams against a paced upstream, with the
contender's CPU, RSS and billing."""

from __future__ import annotations

from ..common import BENCH, HOST, PROJECT_PY, Unavailable, log
from ..load import paced
from ..processes import Proc, free_port, wait_port
from ..sampling import settle
from ..session import Session


def scenario4(session: Session) -> None:
    """Scenario 4 for each contender but LiteLLM, against its own paced upstream."""
    port = free_port()
    proc = Proc(
        "paced-upstream",
        [
            str(PROJECT_PY),
            str(BENCH / "paced_upstream.py"),
            "--port",
            str(port),
            "--tokens",
            str(session.opts.paced_tokens),
        ],
    )
    try:
        wait_port(port, proc, 20)
        base = f"http://{HOST}:{port}/v1"
        names = [n for n in session.opts.contenders if n != "litellm"]
        if "litellm" in session.opts.contenders:
            session.row(
                "scenario4", "litellm"
            ).error = "skipped: it carries ~10-15 100-chunk streams/s, far from 20,000 chunks/s"
        for name in names:
            contender = session.contender(name)
            row = session.row("scenario4", name)
            row.extra["tokens"] = session.opts.paced_tokens
            log(f"paced: starting {name}")
            try:
                with session.started(contender, base, proc.pid) as target:
                    session.ready(target, stream=False)
                    for i in range(session.opts.runs):
                        settle(target.pid)
                        run = paced(
                            target,
                            session.opts.paced_streams,
                            session.opts.paced_tokens,
                            session.opts.paced_ramp,
                        )
                        row.runs.append(run)
                        log(
                            f"scenario4 {name} run {i + 1}: {run.complete}/{run.streams} "
                            f"complete, TTFT p50 {run.ttft_p50_ms:.1f} p99 "
                            f"{run.ttft_p99_ms:.1f} ms, CPU {run.cpu_percent:.0f}%, "
                            f"RSS {run.rss_mb:.0f} MB, billed {run.billed} {run.samples}"
                        )
            except Unavailable as exc:
                log(f"{name} unavailable for scenario4: {exc}")
                if not row.runs:
                    row.error = str(exc)
    finally:
        proc.stop()
