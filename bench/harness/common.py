"""What every module of the harness shares: paths, names, constants, logging, one error."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
BENCH = ROOT / "bench"
WORK = BENCH / ".work"
# this invocation's configs, logs and databases: two benches at once must not clobber each other
RUN = WORK / "runs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
LUA = BENCH / "load.lua"
PROJECT_PY = Path(sys.executable)  # the project's .venv python (run.sh runs us with it)
ADMIN_TOKEN = "bench-admin-token"
CHUNKS = 100  # content chunks in the upstream's fixed SSE answer
HOST = "127.0.0.1"

SCENARIOS = ("scenario1", "scenario2", "scenario3", "scenario4", "scenario5")
#: ``baseline`` runs only with ``--baseline DIR``: the gateway of another source tree, for A/B.
CONTENDERS = ("direct", "nginx", "relay", "gateway", "baseline", "litellm")
LABELS = {
    "direct": "upstream directly (nginx)",
    "nginx": "nginx reverse proxy",
    "relay": "bare relay (Litestar + aiohttp)",
    "gateway": "gateway (full metering, SQLite)",
    "baseline": "gateway as built from --baseline",
    "litellm": "LiteLLM proxy (1 worker, no DB)",
}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Unavailable(Exception):
    """A contender could not be started or answered wrongly: its row shows n/a."""
