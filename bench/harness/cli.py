"""The bench's ``main``: the command line, the machine's limits, the scenarios in order, and
the report on stdout and in ``bench/.work/results-<date>-<time>.md``."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import sys
import time
from collections.abc import Sequence

from .common import RUN, WORK, log
from .contenders import Gateway
from .options import parse
from .report import render
from .scenarios.big_ledger import scenario5
from .scenarios.chat import wrk_group
from .scenarios.paced import scenario4
from .session import Session
from .upstream import start_upstream


def run(session: Session) -> str:
    """Every scenario asked for, against one upstream; returns the report."""
    scenarios = session.opts.scenarios
    log(f"scenarios {', '.join(scenarios)}; contenders {', '.join(session.opts.contenders)}")
    session.load_before = os.getloadavg()
    if session.load_before[0] > 0.5:
        log(f"load average {session.load_before[0]:.2f}: other work shares this machine")
    upstream = start_upstream()
    started = time.monotonic()
    try:
        json_plan = [(s, c) for s, c in (("scenario1", 64), ("scenario3", 1)) if s in scenarios]
        if json_plan:
            wrk_group(session, upstream, "json", json_plan)
        if "scenario2" in scenarios:
            wrk_group(session, upstream, "sse", [("scenario2", 64)])
        if "scenario4" in scenarios:
            scenario4(session)
        if "scenario5" in scenarios:
            scenario5(session, upstream)
    finally:
        upstream.proc.stop()
    elapsed = time.monotonic() - started
    return render(session.opts, session.results, session.load_before, elapsed)


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse(sys.argv[1:] if argv is None else argv)
    Gateway.binary = opts.gateway
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: run bench/run.sh, which installs it")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    RUN.mkdir(parents=True, exist_ok=True)
    for old in sorted((WORK / "runs").iterdir())[:-5]:  # keep the last five runs' logs
        shutil.rmtree(old, ignore_errors=True)
    log(f"logs and configs in {RUN}")
    report = run(Session(opts))
    print(report)
    out = WORK / f"results-{time.strftime('%Y-%m-%d-%H%M')}.md"
    out.write_text(report)
    log(f"table written to {out}")
    return 0
