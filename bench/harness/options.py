"""The command line: flags parsed into one ``Options``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .common import CONTENDERS, SCENARIOS, WORK
from .contenders import Gateway


@dataclass
class Options:
    seconds: int
    warmup: int
    runs: int
    scenarios: list[str]
    contenders: list[str]
    litellm: Path
    gateway: Path
    baseline: Path | None
    paced_streams: int
    paced_tokens: int
    paced_ramp: float
    ledger_wallets: int
    ledger_rows: int
    quick: bool


def parse(argv: Sequence[str]) -> Options:
    parser = argparse.ArgumentParser(
        description="Benchmark the gateway against the upstream, nginx, a bare relay, LiteLLM."
    )
    parser.add_argument("--quick", action="store_true", help="3s runs, 60-token paced streams")
    parser.add_argument("--full", action="store_true", help="also scenario 5 (the big ledger)")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        help="scenarios to run, e.g. scenario1,scenario3 or 2 (repeatable)",
    )
    parser.add_argument(
        "--contenders",
        default=",".join(CONTENDERS),
        help=f"comma-separated subset of {','.join(CONTENDERS)}",
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=int, default=None, help="seconds per run (10)")
    parser.add_argument("--streams", type=int, default=1000, help="scenario 4 streams")
    parser.add_argument(
        "--ramp", type=float, default=1.0, help="scenario 4: seconds over which streams start"
    )
    parser.add_argument("--tokens", type=int, default=None, help="scenario 4 tokens (200)")
    parser.add_argument("--wallets", type=int, default=1_000_000, help="scenario 5 wallets")
    parser.add_argument("--usage-rows", type=int, default=10_000_000, help="scenario 5 rows")
    parser.add_argument(
        "--gateway", type=Path, default=Gateway.binary, help="the gateway's console script"
    )
    parser.add_argument(
        "--litellm", type=Path, default=WORK / "venv" / "bin" / "litellm", help="LiteLLM binary"
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="another source tree of the gateway (e.g. a git worktree of main): its gateway "
        "runs beside this one as the contender 'baseline', interleaved, for an A/B",
    )
    args = parser.parse_args(argv)
    if args.only:
        wanted = []
        for item in ",".join(args.only).split(","):
            item = item.strip()
            name = item if item.startswith("scenario") else f"scenario{item}"
            if name not in SCENARIOS:
                parser.error(f"unknown scenario {item!r}: one of {', '.join(SCENARIOS)}")
            wanted.append(name)
        scenarios = [s for s in SCENARIOS if s in wanted]
    else:
        scenarios = list(SCENARIOS if args.full else SCENARIOS[:4])
    contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    for c in contenders:
        if c not in CONTENDERS:
            parser.error(f"unknown contender {c!r}: one of {', '.join(CONTENDERS)}")
    if args.baseline is not None:
        if not (args.baseline / "src" / "gateway").is_dir():
            parser.error(f"--baseline {args.baseline}: no src/gateway in it")
        contenders.append("baseline")
    elif "baseline" in contenders:
        parser.error("the contender 'baseline' needs --baseline DIR")
    contenders = [c for c in CONTENDERS if c in contenders]
    seconds = args.duration or (3 if args.quick else 10)
    return Options(
        seconds=seconds,
        warmup=1 if args.quick else 2,
        runs=args.runs,
        scenarios=scenarios,
        contenders=contenders,
        litellm=args.litellm,
        gateway=args.gateway.resolve(),
        baseline=args.baseline.resolve() if args.baseline is not None else None,
        paced_streams=args.streams,
        paced_tokens=args.tokens or (60 if args.quick else 200),
        paced_ramp=args.ramp,
        ledger_wallets=args.wallets,
        ledger_rows=args.usage_rows,
        quick=args.quick,
    )
