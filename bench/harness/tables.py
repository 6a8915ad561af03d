"""The markdown tables: one per kind of scenario, and the cells they share."""

from __future__ import annotations

from collections.abc import Sequence

from .common import LABELS
from .load import PacedRun, WrkRun
from .results import Row, med


def fmt(value: float, digits: int = 0) -> str:
    if value != value:  # NaN
        return "–"
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def spread(values: Sequence[float], digits: int = 0) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return fmt(values[0], digits)
    return f"{fmt(med(values), digits)} ({fmt(min(values), digits)}–{fmt(max(values), digits)})"


def ratio(a: float, b: float) -> str:
    if not b or a != a or b != b:
        return "–"
    r = a / b
    return f"{r:.2f}×" if r >= 0.1 else f"{r:.3f}×"


def error_cell(runs: Sequence[WrkRun]) -> str:
    sock = sum(r.socket_errors for r in runs)
    bad = sum(r.non_2xx for r in runs)
    if not sock and not bad:
        return "0"
    return f"⚠ {bad} non-2xx, {sock} socket"


def flag(runs: Sequence[WrkRun], text: str) -> str:
    if any(r.requests == 0 for r in runs):
        return f"⚠ {text} (a run completed nothing)"
    return f"⚠ {text}" if any(r.socket_errors or r.non_2xx for r in runs) else text


def billed_cell(runs: Sequence[WrkRun]) -> str:
    billed = [r.billed for r in runs if r.billed is not None]
    if not billed:
        return "–"
    rows = sum(b[0] for b in billed)
    answered = sum(r.requests - r.non_2xx for r in runs)
    mark = "" if rows >= answered else "⚠ "
    return f"{mark}{rows:,} rows / {answered:,} answers"


def na_row(name: str, row: Row, columns: int) -> str:
    reason = (row.error or "not run").splitlines()[0][:120].replace("|", "/")
    return f"| {LABELS.get(name, name)} | n/a: {reason} |" + " |" * (columns - 2)


def table(header: Sequence[str], rows: Sequence[str]) -> str:
    head = "| " + " | ".join(header) + " |"
    rule = "|" + "|".join("---" for _ in header) + "|"
    return "\n".join([head, rule, *rows])


def throughput_table(results: dict[str, Row], stream: bool) -> str:
    def rate(name: str) -> float:
        row = results.get(name)
        return med([r.rate for r in row.runs]) if row and row.runs else float("nan")

    relay, direct = rate("relay"), rate("direct")
    unit = "answers/s" if stream else "req/s"
    header = [
        "contender",
        f"{unit} median (min–max)",
        *(["chunks/s", "chunks/answer"] if stream else []),
        "p50 ms",
        "p99 ms",
        "errors",
        "× bare relay",
        "× direct",
        "billed",
    ]
    lines = []
    for name, row in results.items():
        if not row.runs:
            lines.append(na_row(name, row, len(header)))
            continue
        runs: list[WrkRun] = row.runs
        rates = [r.rate for r in runs]
        label = LABELS.get(name, name)
        if "seconds" in row.extra:
            label += f" (runs of {row.extra['seconds']}s: slow answers)"
        cells = [label, flag(runs, spread(rates))]
        if stream:
            cells += [fmt(med(rates) * row.chunks), str(row.chunks)]
        cells += [
            fmt(med([r.p50_ms for r in runs]), 2),
            fmt(med([r.p99_ms for r in runs]), 2),
            error_cell(runs),
            ratio(med(rates), relay),
            ratio(med(rates), direct),
            billed_cell(runs),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return table(header, lines)


def latency_table(results: dict[str, Row]) -> str:
    def p(name: str, which: str) -> float:
        row = results.get(name)
        if not row or not row.runs:
            return float("nan")
        return med([getattr(r, which) for r in row.runs])

    d50, d99 = p("direct", "p50_ms"), p("direct", "p99_ms")
    relay_added = p("relay", "p50_ms") - d50
    header = [
        "contender",
        "p50 ms (min–max)",
        "p99 ms (min–max)",
        "added p50 ms",
        "added p99 ms",
        "added p50 × bare relay's",
        "req/s",
        "errors",
    ]
    lines = []
    for name, row in results.items():
        if not row.runs:
            lines.append(na_row(name, row, len(header)))
            continue
        runs: list[WrkRun] = row.runs
        p50, p99 = med([r.p50_ms for r in runs]), med([r.p99_ms for r in runs])
        added = "–" if name == "direct" else fmt(p50 - d50, 3)
        added99 = "–" if name == "direct" else fmt(p99 - d99, 3)
        rel = "–" if name in ("direct", "relay") else ratio(p50 - d50, relay_added)
        cells = [
            LABELS.get(name, name),
            flag(runs, spread([r.p50_ms for r in runs], 3)),
            spread([r.p99_ms for r in runs], 3),
            added,
            added99,
            rel,
            fmt(med([r.rate for r in runs])),
            error_cell(runs),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return table(header, lines)


def paced_table(results: dict[str, Row]) -> str:
    direct = results.get("direct")
    d99 = med([r.ttft_p99_ms for r in direct.runs]) if direct and direct.runs else float("nan")
    header = [
        "contender",
        "complete",
        "TTFT p50 ms",
        "TTFT p99 ms (min–max)",
        "added TTFT p99 ms",
        "CPU % (min–max)",
        "peak RSS MB",
        "billed rows / tokens",
    ]
    lines = []
    for name, row in results.items():
        if not row.runs:
            lines.append(na_row(name, row, len(header)))
            continue
        runs: list[PacedRun] = row.runs
        total = sum(r.streams for r in runs)
        complete = sum(r.complete for r in runs)
        done = f"{complete:,}/{total:,}" if complete == total else f"⚠ {complete:,}/{total:,}"
        p99 = med([r.ttft_p99_ms for r in runs])
        billed = "–"
        if all(r.billed is not None for r in runs):
            rows = sum(r.billed[0] for r in runs if r.billed)
            tokens = sum(r.billed[1] for r in runs if r.billed)
            want = complete * int(row.extra.get("tokens", 0))
            ok = rows == complete and tokens == want
            billed = f"{'' if ok else '⚠ '}{rows:,} / {tokens:,} (want {complete:,} / {want:,})"
        cells = [
            LABELS.get(name, name).replace("(nginx)", "(paced server)"),
            done,
            fmt(med([r.ttft_p50_ms for r in runs]), 2),
            spread([r.ttft_p99_ms for r in runs], 2),
            "–" if name == "direct" else fmt(p99 - d99, 2),
            spread([r.cpu_percent for r in runs]),
            fmt(max(r.rss_mb for r in runs)),
            billed,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return table(header, lines)


def ledger_table(results: dict[str, Row]) -> str:
    empty = results.get("empty")
    base = med([r.rate for r in empty.runs]) if empty and empty.runs else float("nan")
    header = [
        "gateway ledger",
        "req/s median (min–max)",
        "p50 ms",
        "p99 ms",
        "errors",
        "× empty ledger",
        "usage query ms, long history (max)",
        "usage query ms, typical wallet (max)",
        "start s",
    ]
    lines = []
    for name, row in results.items():
        label = {"empty": "empty", "full": row.extra.get("label", "full")}.get(name, name)
        if not row.runs:
            lines.append(na_row(label, row, len(header)))
            continue
        runs: list[WrkRun] = row.runs
        rates = [r.rate for r in runs]
        cells = [
            label,
            flag(runs, spread(rates)),
            fmt(med([r.p50_ms for r in runs]), 2),
            fmt(med([r.p99_ms for r in runs]), 2),
            error_cell(runs),
            ratio(med(rates), base),
            row.extra.get("query_heavy", "–"),
            row.extra.get("query_typical", "–"),
            row.extra.get("startup_s", "–"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return table(header, lines)
