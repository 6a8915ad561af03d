"""Storage that fails under the gateway, for real: the SQLite file lives on a tiny tmpfs that is
filled to the last byte while the gateway serves, and on a read-only mount.

A request the gateway cannot record is refused with 503 ``storage_unavailable`` before anything
goes upstream — never served free; ``/readyz`` says 503 while writes fail; once space is free
again the gateway serves and the books balance, without a restart. A database on a read-only
mount makes ``gateway serve`` refuse to start, naming the database (a mount cannot turn
read-only under a process that has files open on it for writing: the kernel says busy).

Needs root (``mount -t tmpfs``); skipped with the reason where mounting is not permitted.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from e2e.helpers import HELLO, HELLO_TOKENS, content_of, parse_sse, skip_unless_ci
from gateway_proc import D, GatewayFactory, GatewayProcess, poll
from upstream import UpstreamServer, answer_text

pytestmark = pytest.mark.e2e

ROUTE = {"model": "m", "backend": "a", "input_price": "1", "output_price": "2"}


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, check=False)


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs of the test's own, unmounted at the end."""
    where = tmp_path / "disk"
    where.mkdir()
    mounted = _mount("-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(where))
    if mounted.returncode != 0:
        skip_unless_ci(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], check=False)


def _write_until_full(fd: int, size: int) -> None:
    while True:
        try:
            os.write(fd, b"\0" * size)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            return


def fill(disk: Path) -> Path:
    """Write zeros until the file system says it is full; the filler's path."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        _write_until_full(fd, 65536)
        _write_until_full(fd, 1)  # the last few bytes too
    finally:
        os.close(fd)
    return filler


def storage_gateway(
    factory: GatewayFactory, upstream: UpstreamServer, db: Path, start: bool = True
) -> GatewayProcess:
    return factory(
        backends=[{"name": "a", "base_url": upstream.url, "api_key_env": "UPSTREAM_A_KEY"}],
        routes=[ROUTE],
        storage={"url": f"sqlite:///{db}", "reservation_lease_s": 30, "sweep_interval_s": 1},
        start=start,
    )


def ask(gateway: GatewayProcess, secret: str, *, stream: bool) -> tuple[int, str, Any]:
    body = {"model": "m", "messages": HELLO, "stream": stream}
    with httpx.Client(base_url=gateway.url, timeout=30, trust_env=False) as http:
        response = http.post(
            "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {secret}"}
        )
    rid = response.headers["x-request-id"]
    if response.status_code == 200 and stream:
        return 200, rid, parse_sse(response.text)
    return response.status_code, rid, response.json()


def ready(gateway: GatewayProcess) -> int:
    with httpx.Client(base_url=gateway.url, timeout=10, trust_env=False) as http:
        return http.get("/readyz").status_code


def test_a_full_disk_refuses_requests_with_503_then_recovers(
    tiny_disk: Path,
    gateway_factory: GatewayFactory,
    upstream_factory: Callable[[str], UpstreamServer],
) -> None:
    upstream = upstream_factory("a")
    gateway = storage_gateway(gateway_factory, upstream, tiny_disk / "gateway.db")
    with gateway.admin() as admin:
        wallet_id = admin.make_wallet("10")
        _key, secret = admin.make_key(wallet_id)
        assert ask(gateway, secret, stream=False)[0] == 200
        before = admin.idle_wallet(wallet_id)

        filler = fill(tiny_disk)
        # A full tmpfs still takes a write that fits in pages a file already holds (a
        # transaction that failed part-way may have left the WAL a page longer, and a smaller
        # one then fits): such a request is served and charged like any other, its settlement
        # was written. What must never happen is an answer nobody pays for. Once that slack is
        # used up every write fails: asked until three requests in a row are refused.
        served_while_full: list[str] = []
        refused_in_a_row = 0
        for attempt in range(20):
            stream = attempt % 2 == 1
            status, rid, body = ask(gateway, secret, stream=stream)
            if status == 200 and (not stream or body[-1] == "[DONE]"):
                served_while_full.append(rid)
                refused_in_a_row = 0
                continue
            if status == 200:  # a stream whose row fit, then its settlement did not
                assert body[-1]["error"]["code"] == "storage_unavailable", body[-1]
            else:
                assert status == 503, body
                assert body["error"]["type"] == "api_error"
                assert body["error"]["code"] == "storage_unavailable"
                assert set(body["error"]) == {"message", "type", "param", "code"}
            refused_in_a_row += 1
            if refused_in_a_row == 3:
                break
        else:
            pytest.fail(f"20 requests on a full disk and not three refused in a row: {attempt}")
        # readiness writes a page to find out: the last of the slack, if any, goes to it
        poll(lambda: ready(gateway), lambda code: code == 503, timeout=10, what="/readyz 503")
        # (that a request then goes upstream only once its reservation's row is written is
        # tests/storage/test_sqlite.py's: here a row may still fit where a settlement did not)
        # the admin API cannot write either, and says so in the same shape
        response = admin.http.post("/admin/wallets", json={"name": "new"})
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "storage_unavailable"
        # reads still work: only what was served moved money (a refused request that went
        # upstream holds its reservation until its settlement can be written; a stream that
        # ended in the error is charged once it can be)
        charged = sum((D(admin.usage_record(rid)["cost"]) for rid in served_while_full), D("0"))
        assert all(D(admin.usage_record(rid)["cost"]) > 0 for rid in served_while_full)
        assert D(admin.wallet(wallet_id)["balance"]) == D(before["balance"]) - charged

        filler.unlink()
        poll(lambda: ready(gateway), lambda code: code == 200, timeout=10, what="/readyz 200")
        status, rid, _ = ask(gateway, secret, stream=False)
        assert status == 200
        status, _, events = ask(gateway, secret, stream=True)
        assert status == 200
        assert events[-1] == "[DONE]"
        assert admin.usage_record(rid)["status"] == "ok"
        wallet = admin.assert_books_balance(wallet_id)
        assert D(wallet["balance"]) < D(before["balance"])


def test_a_stream_whose_settlement_cannot_be_written_is_charged_once_storage_is_back(
    tiny_disk: Path,
    gateway_factory: GatewayFactory,
    upstream_factory: Callable[[str], UpstreamServer],
) -> None:
    """The disk fills while a stream is being served: the client has its words, but its
    charge cannot be written. The client gets an error event instead of ``[DONE]``, and the
    gateway keeps the settlement and writes it when space is back: the words are charged."""
    upstream = upstream_factory("a")
    gateway = storage_gateway(gateway_factory, upstream, tiny_disk / "gateway.db")
    with gateway.admin() as admin:
        wallet_id = admin.make_wallet("10")
        _key, secret = admin.make_key(wallet_id)
        body = {
            "model": "m",
            "messages": HELLO,
            "stream": True,
            "script": {"words": 20, "chunk_delay_s": 0.05},
        }
        filler: Path | None = None
        with (
            httpx.Client(base_url=gateway.url, timeout=30, trust_env=False) as http,
            http.stream(
                "POST",
                "/v1/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {secret}"},
            ) as response,
        ):
            rid = response.headers["x-request-id"]
            raw = b""
            for chunk in response.iter_bytes():
                raw += chunk
                if filler is None and raw.count(b'"content"') >= 3:
                    filler = fill(tiny_disk)  # mid-stream
        events = parse_sse(raw.decode())
        assert events[-1] != "[DONE]"
        errors = [e["error"] for e in events if isinstance(e, dict) and "error" in e]
        assert [e["code"] for e in errors] == ["storage_unavailable"], events
        assert filler is not None
        filler.unlink()

        record = admin.usage_record(rid, timeout=15)
        assert (record["prompt_tokens"], record["completion_tokens"]) == (10, 20), record
        assert D(record["cost"]) == D("0.00005"), record  # 10 x 1 + 20 x 2 micro-credits
        admin.assert_books_balance(wallet_id)
        assert admin.balance(wallet_id) == D("9.99995")


def test_a_database_on_a_read_only_mount_is_refused_at_start(
    tiny_disk: Path,
    gateway_factory: GatewayFactory,
    upstream_factory: Callable[[str], UpstreamServer],
) -> None:
    upstream = upstream_factory("a")
    db = tiny_disk / "gateway.db"
    gateway = storage_gateway(gateway_factory, upstream, db)
    with gateway.admin() as admin:
        wallet_id = admin.make_wallet("10")
    assert gateway.stop() == 0
    remounted = _mount("-o", "remount,ro", str(tiny_disk))
    assert remounted.returncode == 0, remounted.stderr
    try:
        result = subprocess.run(
            [sys.executable, "-m", "gateway", "serve", "--config", str(gateway.config_path)],
            capture_output=True,
            text=True,
            timeout=30,
            env=gateway.env,
            check=False,
        )
        # It exits non-zero, and what it says names the database and the problem. (It says it
        # at the end of a traceback: a failure inside the app's start-up is reported that way.)
        assert result.returncode != 0
        assert str(db) in result.stderr, result.stderr
        assert "Read-only file system" in result.stderr, result.stderr
    finally:
        with contextlib.suppress(Exception):
            _mount("-o", "remount,rw", str(tiny_disk))
    gateway.start()
    with gateway.admin() as admin:
        admin.assert_books_balance(wallet_id)


def test_a_stream_that_cannot_grow_its_reservation_while_storage_refuses_writes_is_cut_off(
    tmp_path: Path,
    gateway_factory: GatewayFactory,
    upstream_factory: Callable[[str], UpstreamServer],
) -> None:
    """Another process holds the SQLite file's write lock (a backup, an operator's shell)
    while a stream outgrows its reservation: the reservation cannot grow, so the stream is cut
    off where it is paid, as if the wallet were short, and its upstream request closed. Once
    the lock is gone the settlement is written: what was delivered is charged.

    (Needs no root, unlike the tests above: the lock is SQLite's own. The gateway waits 5 s
    for a lock before it gives up on a write.)"""
    upstream = upstream_factory("a")
    db = tmp_path / "gateway.db"
    gateway = storage_gateway(gateway_factory, upstream, db)
    with gateway.admin() as admin:
        wallet_id = admin.make_wallet("10")
        _key, secret = admin.make_key(wallet_id)
    # max_tokens 5 is reserved for; the backend ignores it and would write 100 words
    body = {
        "model": "m",
        "messages": HELLO,
        "stream": True,
        "max_tokens": 5,
        "script": {"words": 100, "chunk_delay_s": 0.1},
    }
    locked = threading.Event()

    def hold_the_write_lock() -> None:
        """Until the gateway has closed its upstream request (it gave up growing the
        reservation, and is settling); then let go, while the settlement waits."""
        conn = sqlite3.connect(db, isolation_level=None, timeout=10)
        try:
            conn.execute("BEGIN IMMEDIATE")
            locked.set()
            poll(
                lambda: [s.closed_at for s in upstream.streams],
                lambda closed: bool(closed) and closed[-1] is not None,
                timeout=60,
                what="the upstream stream to be closed",
            )
        finally:
            conn.execute("ROLLBACK")
            conn.close()

    with (
        concurrent.futures.ThreadPoolExecutor(1) as pool,
        httpx.Client(base_url=gateway.url, timeout=60, trust_env=False) as http,
        http.stream(
            "POST",
            "/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {secret}"},
        ) as response,
    ):
        assert response.status_code == 200
        rid = response.headers["x-request-id"]
        # the reservation is taken (nothing written yet: a stream's row comes after 1 s)
        holder = pool.submit(hold_the_write_lock)
        assert locked.wait(10), holder.exception(0) if holder.done() else "no lock in 10 s"
        raw = response.read()
        holder.result(timeout=60)
    events = parse_sse(raw.decode())
    assert content_of(events) == answer_text(5), "what the reservation paid for, no more"
    assert "[DONE]" not in events
    error = events[-1]["error"]
    assert (error["type"], error["code"]) == ("insufficient_quota", "insufficient_quota"), events
    [stream] = upstream.streams
    assert stream.disconnected, stream
    assert not stream.finished, stream
    assert stream.chunks_sent < 100
    with gateway.admin() as admin:
        record = admin.usage_record(rid, timeout=15)
        assert (record["status"], record["error"]) == ("cut_off", "insufficient_quota"), record
        assert (record["prompt_tokens"], record["completion_tokens"]) == (HELLO_TOKENS, 5)
        assert D(record["cost"]) == D("0.000018"), record  # 8 x 1 + 5 x 2 micro-credits
        assert D(record["shortfall"]) == 0, record
        wallet = admin.assert_books_balance(wallet_id)
        assert D(wallet["balance"]) == D("9.999982")
    assert "settlement_failed" not in gateway.output()
