"""Scenario 5: the gateway on a big ledger against an empty one, and the admin usage query;
the big ledger is built once per schema (``bench/ledger.py``) and cached."""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
import time
from pathlib import Path

import ledger

from ..common import RUN, WORK, Unavailable, log
from ..contenders import Gateway, Target
from ..load import measured, wrk
from ..results import Row, med
from ..session import Session
from ..upstream import Upstream


def scenario5(session: Session, upstream: Upstream) -> None:
    """Scenario 5: the gateway on an empty ledger and on a copy of the big one, side by side."""
    results = session.results.setdefault("scenario5", {})
    empty, full = results.setdefault("empty", Row()), results.setdefault("full", Row())
    label = f"{session.opts.ledger_wallets:,} wallets, {session.opts.ledger_rows:,} usage rows"
    full.extra["label"] = label
    try:
        db = _ledger_db(session, upstream)
    except Unavailable as exc:
        log(f"scenario5: no ledger: {exc}")
        empty.error = full.error = str(exc)
        return
    # Both gateways stay up and their runs interleave, as in scenarios 1-3: the ratio then
    # compares runs taken seconds apart, not the machine's drift between two halves.
    with contextlib.ExitStack() as stack:
        up: list[tuple[str, Row, Target]] = []
        for name, row, path in (("empty", empty, None), ("full", full, db)):
            log(f"scenario5: gateway on the {name} ledger")
            try:
                gateway = Gateway(path, tag=f"gateway-ledger-{name}")
                target = stack.enter_context(
                    session.started(gateway, upstream.base("json"), upstream.proc.pid)
                )
                row.extra["startup_s"] = target.info.get("startup_s", "–")
                session.ready(target, stream=False)
                wrk(target, stream=False, connections=64, seconds=session.opts.warmup)
                up.append((name, row, target))
            except Unavailable as exc:
                log(f"scenario5 {name}: {exc}")
                row.error = str(exc)
        for i in range(session.opts.runs):
            for name, row, target in up:
                if row.error:  # its first run failed: as in scenarios 1-3, no more of them
                    continue
                what = f"scenario5 {name} run {i + 1}"
                run = measured(
                    row, target, what, stream=False, connections=64, seconds=session.opts.seconds
                )
                if run is None:
                    continue
                log(f"scenario5 {name} run {i + 1}: {run.rate:,.0f}/s")
        for name, row, target in up:
            if name == "full":
                meta = json.loads(db.with_suffix(".json").read_text())
                try:
                    _query(target, row, "heavy", meta["heavy_wallet"])
                    _query(target, row, "typical", meta["typical_wallet"])
                except Unavailable as exc:
                    log(f"scenario5 usage query: {exc}")
    with contextlib.suppress(OSError):
        for suffix in ("", "-wal", "-shm", "-journal", ".lock"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        db.with_suffix(".json").unlink(missing_ok=True)


def _query(target: Target, row: Row, which: str, wallet: str) -> None:
    """Time ``GET /admin/usage`` 20 times for one wallet: median and max into ``row``."""
    assert target.admin is not None
    path = f"/admin/usage?wallet_id={wallet}&limit=100"
    times = []
    for _ in range(20):
        t0 = time.perf_counter()
        status, raw = target.admin(path)
        times.append((time.perf_counter() - t0) * 1000)
        if status != 200:
            row.extra[f"query_{which}"] = f"⚠ {status}: {raw[:80]!r}"
            return
    row.extra[f"query_{which}_ms"] = med(times)
    row.extra[f"query_{which}"] = f"{med(times):.1f} ({max(times):.1f})"
    log(f"scenario5 usage query ({which} wallet): {med(times):.1f} ms median")


def _ledger_db(session: Session, upstream: Upstream) -> Path:
    """A working copy of the cached filled ledger for the gateway's current schema."""
    folder = WORK / "ledger"
    folder.mkdir(parents=True, exist_ok=True)
    fresh = RUN / "ledger-schema.db"
    for suffix in ("", "-wal", "-shm", "-journal", ".lock"):
        Path(f"{fresh}{suffix}").unlink(missing_ok=True)
    gateway = Gateway(fresh, tag="gateway-schema")
    with session.started(gateway, upstream.base("json"), upstream.proc.pid):
        pass  # started (schema created), wallet and key made, stopped
    # the admin calls above wrote a wallet and a key: start from the bare schema
    with sqlite3.connect(fresh) as conn:
        conn.execute("PRAGMA journal_mode=DELETE")
    digest = ledger.schema_hash(fresh)
    w, n = session.opts.ledger_wallets, session.opts.ledger_rows
    cached = folder / f"ledger-{digest}-{w}w-{n}u.db"
    meta = cached.with_suffix(".json")
    if not (cached.exists() and meta.exists()):
        log(f"scenario5: building the ledger ({w:,} wallets, {n:,} usage rows) for {digest}")
        for old in folder.glob("ledger-*"):
            old.unlink()
        building = folder / "building.db"
        shutil.copyfile(fresh, building)
        _clear(building)
        info = ledger.build(
            building,
            wallets=w,
            usage_rows=n,
            heavy_rows=max(1, n // 100),
            progress=lambda m: log(f"ledger: {m}"),
        )
        building.rename(cached)
        meta.write_text(json.dumps(info.__dict__))
        log(f"scenario5: ledger built in {info.seconds:.0f}s")
    work = RUN / "ledger.db"
    log("scenario5: copying the cached ledger")
    shutil.copyfile(cached, work)
    shutil.copyfile(meta, work.with_suffix(".json"))
    return work


def _clear(db: Path) -> None:
    """Empty every table of a copy of the schema (the schema start wrote a wallet, a key)."""
    with sqlite3.connect(db) as conn:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table' "
                "AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '%migration%' "
                "AND name NOT LIKE '%schema%'"
            )
        ]
        for name in names:
            conn.execute(f'DELETE FROM "{name}"')
    with sqlite3.connect(db) as conn:
        conn.execute("VACUUM")
