"""The app's process-wide tuning: only when the app is all its process serves."""

from __future__ import annotations

import gc
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from litestar.testing import TestClient

from gateway.app import GatewayApp, create_app
from gateway.config import parse_config


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def _app(tmp_path: Path, *, own_process: bool = False) -> GatewayApp:
    return create_app(parse_config(_config(tmp_path)), own_process=own_process)


def _config(tmp_path: Path) -> str:
    return f"""
[storage]
url = "sqlite:///{tmp_path / "gateway.db"}"

[[backends]]
name = "demo"
kind = "demo"

[[routes]]
model = "m"
backend = "demo"
input_price = "1"
output_price = "1"
"""


def test_a_served_process_freezes_its_startup_heap(tmp_path: Path, restored_gc: None) -> None:
    gc.unfreeze()
    app = _app(tmp_path, own_process=True)
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
        assert gc.get_freeze_count() > 10_000  # the modules, config and services
        assert gc.get_threshold()[0] == 10_000


def test_an_embedded_app_leaves_the_collector_alone(tmp_path: Path, restored_gc: None) -> None:
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    app = _app(tmp_path)
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
        assert gc.get_freeze_count() == 0
        assert gc.get_threshold() == (700, 10, 10)


def test_the_server_checkpoints_its_sqlite_wal_in_the_background(tmp_path: Path) -> None:
    """SQLite alone would leave the migration's pages in the WAL until 1,000 had gathered."""
    db = tmp_path / "gateway.db"
    app = _app(tmp_path)
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
        deadline = time.monotonic() + 10
        while db.stat().st_size <= 4096:  # the header page alone: the schema is in the WAL
            assert time.monotonic() < deadline, "no checkpoint in 10 s"
            time.sleep(0.1)


def test_the_routes_encodings_are_loaded_at_start(tmp_path: Path) -> None:
    """Not by the first request that needs one, on the event loop, with every request in
    flight waiting for it. (A fresh process: this one's encodings are loaded already.)"""
    config = _config(tmp_path) + (
        '\n[[routes]]\nmodel = "legacy"\nbackend = "demo"\ntokenizer = "cl100k_base"\n'
        'input_price = "1"\noutput_price = "1"\n'
    )
    (tmp_path / "gateway.toml").write_text(config)
    script = f"""
import asyncio
from gateway.tokens import encodings as tokens
from gateway.config import load_config
from gateway.services import Services

async def main():
    services = Services(load_config({str(tmp_path / "gateway.toml")!r}))
    loaded_before = tokens._build_encoding.cache_info().currsize
    await services.start()
    try:
        print(loaded_before, sorted(services.relay._counters), tokens._build_encoding.cache_info())
    finally:
        await services.stop()

asyncio.run(main())
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    before, rest = out.split(" ", 1)
    assert before == "0"
    assert rest.startswith("['cl100k_base', 'o200k_base'] CacheInfo(hits=0, misses=2,"), out
