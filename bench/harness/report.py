"""The report: the tables of the scenarios run, the issue's targets, the machine and versions."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import time
from pathlib import Path

from .common import CHUNKS, CONTENDERS, ROOT, SCENARIOS
from .options import Options
from .processes import nginx_bin
from .results import Results, med
from .tables import latency_table, ledger_table, paced_table, throughput_table


def render(
    opts: Options, results: Results, load_before: tuple[float, float, float], elapsed: float
) -> str:
    """The whole markdown report of one invocation."""
    o = opts
    parts = [
        f"# Benchmark, {time.strftime('%Y-%m-%d %H:%M')}",
        "",
        f"- machine: {machine()}",
        f"- software: {versions(o.litellm)}",
        f"- load: wrk, 1 thread, {o.seconds}s per run after a {o.warmup}s warm-up; "
        f"each figure is the median of {o.runs} runs (min–max); ratios are of medians "
        f"measured in this invocation{' (--quick)' if o.quick else ''}",
        f"- took {elapsed / 60:.1f} min; load average before it {load_before[0]:.2f} "
        "(well above 0: other work shared the machine and skews the figures)",
    ]
    titles = {
        "scenario1": "Scenario 1: non-streaming chat, 64 connections",
        "scenario2": f"Scenario 2: streaming chat, {CHUNKS} chunks per answer, 64 connections",
        "scenario3": "Scenario 3: one connection, latency added over the direct call",
        "scenario4": f"Scenario 4: {o.paced_streams:,} concurrent paced streams of "
        f"{o.paced_tokens} tokens at 20 tokens/s",
        "scenario5": "Scenario 5: scenario 1 on a big ledger, and the admin usage query",
    }
    for scenario in SCENARIOS:
        res = results.get(scenario)
        if not res:
            continue
        order = {name: i for i, name in enumerate((*CONTENDERS, "empty", "full"))}
        res = dict(sorted(res.items(), key=lambda item: order.get(item[0], 99)))
        parts += ["", f"## {titles[scenario]}", ""]
        if scenario in ("scenario1", "scenario2"):
            parts.append(throughput_table(res, stream=scenario == "scenario2"))
        elif scenario == "scenario3":
            parts.append(latency_table(res))
        elif scenario == "scenario4":
            parts.append(paced_table(res))
        else:
            parts.append(ledger_table(res))
    checks = targets(results)
    if checks:
        parts += ["", "## The gateway against the issue's targets", "", *checks]
    return "\n".join(parts) + "\n"


def targets(results: Results) -> list[str]:
    """The issue's targets for the gateway, checked against this invocation's figures."""

    def rate(scenario: str, name: str) -> float:
        row = results.get(scenario, {}).get(name)
        return med([r.rate for r in row.runs]) if row and row.runs else float("nan")

    out = []

    def check(label: str, value: float, ok: bool, shown: str) -> None:
        if value == value:
            out.append(f"- {'✓' if ok else '✗'} {label}: {shown}")

    r1 = rate("scenario1", "gateway") / rate("scenario1", "relay")
    check("scenario 1 ≥ 0.60× bare relay (aim 0.75×)", r1, r1 >= 0.6, f"{r1:.2f}×")
    lit = rate("scenario1", "gateway") / rate("scenario1", "litellm")
    check("scenario 1 ≥ 35× LiteLLM", lit, lit >= 35, f"{lit:.0f}×")
    r2 = rate("scenario2", "gateway") / rate("scenario2", "relay")
    check("scenario 2 ≥ 0.50× bare relay", r2, r2 >= 0.5, f"{r2:.2f}×")
    s3 = results.get("scenario3", {})
    if s3.get("gateway") and s3["gateway"].runs and s3.get("direct") and s3["direct"].runs:
        added = med([r.p50_ms for r in s3["gateway"].runs]) - med(
            [r.p50_ms for r in s3["direct"].runs]
        )
        check("scenario 3 ≤ 0.5 ms added p50", added, added <= 0.5, f"{added:.3f} ms")
    s4 = results.get("scenario4", {}).get("gateway")
    if s4 and s4.runs:
        cpu = med([r.cpu_percent for r in s4.runs])
        rss = max(r.rss_mb for r in s4.runs)
        check("scenario 4 under one core", cpu, cpu < 100, f"{cpu:.0f}%")
        check("scenario 4 under 300 MB RSS", rss, rss < 300, f"{rss:.0f} MB")
    s5 = results.get("scenario5", {})
    if s5.get("full") and s5["full"].runs and s5.get("empty") and s5["empty"].runs:
        r5 = med([r.rate for r in s5["full"].runs]) / med([r.rate for r in s5["empty"].runs])
        check("scenario 5 within 10% of the empty ledger", r5, r5 >= 0.9, f"{r5:.2f}×")
        q = s5["full"].extra.get("query_heavy_ms", float("nan"))
        check("scenario 5 usage query under 50 ms", q, q < 50, f"{q:.1f} ms")
    return out


def machine() -> str:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 2**20:.0f} GiB"
    return f"{os.cpu_count()} cores ({cpu}), {mem} RAM, Linux {platform.release()}"


def versions(litellm_bin: Path) -> str:
    parts = [f"Python {platform.python_version()}"]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([nginx_bin(), "-v"], capture_output=True, text=True, check=False)
        parts.append(out.stderr.strip().replace("nginx version: ", ""))
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
        parts.append(" ".join((out.stdout + out.stderr).split()[:2]))
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        code = "import importlib.metadata as m; print(m.version('litellm'))"
        py = litellm_bin.parent / "python"
        out = subprocess.run([str(py), "-c", code], capture_output=True, text=True, check=False)
        if out.returncode == 0:
            parts.append(f"litellm {out.stdout.strip()}")
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        )
        rev = out.stdout.strip() if out.returncode == 0 else "uncommitted"
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        parts.append(f"gateway {rev}{'+changes' if dirty else ''}")
    return ", ".join(parts)
