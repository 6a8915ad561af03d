"""The benchmark: this gateway side by side with what users would otherwise run.

Run it with ``make bench`` or ``bash bench/run.sh [flags]`` (which installs nginx, wrk and the
bench's own LiteLLM venv first). See bench/README.md for what each contender and scenario is.

Every figure is the median of ``--runs`` runs (3) with min-max; ratios are against the bare
relay and the upstream measured in the same invocation. The table goes to stdout and to
``bench/.work/results-<date>.md``; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import resource
import secrets
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ledger

ROOT = Path(__file__).resolve().parent.parent
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
CONTENDERS = ("direct", "nginx", "relay", "gateway", "litellm")
LABELS = {
    "direct": "upstream directly (nginx)",
    "nginx": "nginx reverse proxy",
    "relay": "bare relay (Litestar + aiohttp)",
    "gateway": "gateway (full metering, SQLite)",
    "litellm": "LiteLLM proxy (1 worker, no DB)",
}

MESSAGES = [
    {
        "role": "system",
        "content": "You are a concise assistant for a logistics company. Answer in plain "
        "English, cite figures from the conversation, never invent numbers.",
    },
    {
        "role": "user",
        "content": "Summarise the delivery delays of last week by region: North had 3 late "
        "parcels out of 410, South 1 of 388, East none of 295, West 5 of 402.",
    },
    {
        "role": "assistant",
        "content": "Last week 9 of 1,495 parcels were late (0.6%). West had the most (5 of 402, "
        "1.2%), then North (3 of 410), South (1 of 388); East had none.",
    },
    {
        "role": "user",
        "content": "Write a short note to the West depot manager about it, two paragraphs, "
        "friendly but firm, asking for a plan by Friday.",
    },
]


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Unavailable(Exception):
    """A contender could not be started or answered wrongly: its row shows n/a."""


# --------------------------------------------------------------------------------------------
# the upstream's canned answers


def _event(payload: dict[str, Any]) -> str:
    return "data: " + json.dumps(payload, separators=(",", ":")) + "\n\n"


def completion_json() -> str:
    answer = (
        "Dear West depot team, last week five of your 402 parcels arrived late, the highest "
        "share of any region. Please send a short plan to bring this back under 0.5% by Friday."
    )
    return json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1700000000,
            "model": "bench-model",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 142, "completion_tokens": 38, "total_tokens": 180},
        },
        separators=(",", ":"),
    )


def sse_body(chunks: int = CHUNKS) -> str:
    head = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000}
    head["model"] = "bench-model"
    parts = []
    for i in range(chunks):
        delta = {"content": f" word{i}"}
        if i == 0:
            delta = {"role": "assistant", "content": "Dear"}
        finish = "stop" if i == chunks - 1 else None
        parts.append(
            _event({**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        )
    usage = {"prompt_tokens": 142, "completion_tokens": chunks, "total_tokens": 142 + chunks}
    parts.append(_event({**head, "choices": [], "usage": usage}))
    parts.append("data: [DONE]\n\n")
    return "".join(parts)


def chat_body(stream: bool) -> bytes:
    body: dict[str, Any] = {
        "model": "bench-model",
        "temperature": 0.2,
        "max_tokens": 256,
        "messages": MESSAGES,
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return json.dumps(body).encode()


def count_sse(raw: bytes) -> tuple[int, bool]:
    """Content chunks in an SSE answer and whether it ends with ``[DONE]``."""
    chunks, done = 0, False
    for line in raw.split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            done = True
            continue
        for choice in json.loads(data).get("choices") or ():
            if (choice.get("delta") or {}).get("content"):
                chunks += 1
    return chunks, done


# --------------------------------------------------------------------------------------------
# processes, ports, HTTP


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def child_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")
    }
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.update(extra)
    return env


class Proc:
    """A child process in its own process group, its output in a log file."""

    def __init__(self, name: str, cmd: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = RUN / "logs" / f"{name}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            list(cmd),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env if env is not None else child_env(),
            start_new_session=True,
        )
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(errors="replace").strip().splitlines()
            return "\n".join(text[-lines:])
        return ""

    def stop(self, grace: float = 10.0) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait(5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)  # stragglers of the group
        self._log.close()


_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http(
    method: str,
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with _opener.open(request, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())


def wait_port(port: int, proc: Proc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            tail = proc.tail()
            last = next((x for x in reversed(tail.splitlines()) if x.strip()), "")
            raise Unavailable(
                f"{proc.name} exited with {proc.popen.returncode}: {last.strip()}\n{tail}"
            )
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.1)
    raise Unavailable(f"{proc.name} did not listen on {port} within {timeout:.0f}s:\n{proc.tail()}")


# --------------------------------------------------------------------------------------------
# /proc sampling: CPU and RSS of a process tree

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def tree_usage(pids: Sequence[int]) -> tuple[float, int]:
    """CPU seconds (user + system) and RSS bytes summed over ``pids``."""
    cpu, rss = 0.0, 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            statm = Path(f"/proc/{pid}/statm").read_text().split()
        except OSError:
            continue
        cpu += (int(fields[11]) + int(fields[12])) / CLK_TCK
        rss += int(statm[1]) * PAGE
    return cpu, rss


class Sampler:
    """CPU % and peak RSS of a process tree while a measurement runs."""

    def __init__(self, root: int, interval: float = 0.25) -> None:
        self.root = root
        self.interval = interval
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.cpu_percent = 0.0

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            _, rss = tree_usage(process_tree(self.root))
            self.peak_rss = max(self.peak_rss, rss)

    def __enter__(self) -> Sampler:
        self._pids = process_tree(self.root)
        self._cpu0, self.peak_rss = tree_usage(self._pids)
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        cpu1, rss = tree_usage(process_tree(self.root))
        self.peak_rss = max(self.peak_rss, rss)
        self.cpu_percent = 100 * (cpu1 - self._cpu0) / max(1e-9, time.monotonic() - self._t0)


def settle(pid: int | None, limit: float = 30.0) -> None:
    """Wait until a server is idle again (a slow contender may still be working off the last
    run's requests after wrk closed its connections)."""
    if pid is None:
        return
    deadline = time.monotonic() + limit
    pids = process_tree(pid)
    while time.monotonic() < deadline:
        cpu0, _ = tree_usage(pids)
        time.sleep(0.3)
        cpu1, _ = tree_usage(pids)
        if (cpu1 - cpu0) / 0.3 < 0.05:
            return


# --------------------------------------------------------------------------------------------
# nginx: the upstream and the reverse-proxy contender


def nginx_bin() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else "")
    if not found:
        raise SystemExit("nginx is not installed: run bench/run.sh, which installs it")
    return found


def start_nginx(name: str, servers: str) -> Proc:
    prefix = RUN / "nginx" / name
    prefix.mkdir(parents=True, exist_ok=True)
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = f"""{user}worker_processes 1;
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
worker_rlimit_nofile 16384;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 300s;
    keepalive_requests 10000000;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
{servers}
}}
"""
    conf_path = prefix / "nginx.conf"
    conf_path.write_text(conf)
    return Proc(
        f"nginx-{name}",
        [nginx_bin(), "-p", str(prefix), "-c", str(conf_path), "-e", str(prefix / "error.log")],
    )


@dataclass
class Upstream:
    """A running upstream: ``base(kind)`` is an OpenAI base url (``.../v1``)."""

    port: int
    proc: Proc
    prefixes: dict[str, str]  # kind ("json", "sse", "paced") -> path prefix

    def base(self, kind: str) -> str:
        return f"http://{HOST}:{self.port}{self.prefixes[kind]}"


def start_upstream() -> Upstream:
    docroot = RUN / "nginx" / "upstream-doc"
    docroot.mkdir(parents=True, exist_ok=True)
    (docroot / "sse.txt").write_text(sse_body())
    body = completion_json()
    assert "'" not in body, "the body goes into a single-quoted nginx string"
    assert "$" not in body, "nginx would read $ as a variable"
    models = '{"object":"list","data":[{"id":"bench-model","object":"model","owned_by":"bench"}]}'
    port = free_port()
    servers = f"""
    server {{
        listen {HOST}:{port} backlog=4096;
        location = /json/v1/chat/completions {{
            default_type application/json;
            return 200 '{body}';
        }}
        location = /sse/v1/chat/completions {{
            # static files refuse POST (405): answer it with the file all the same
            alias {docroot}/sse.txt;
            default_type text/event-stream;
            add_header Cache-Control no-cache;
            error_page 405 =200 $uri;
        }}
        location ~ ^/(json|sse)/v1/models$ {{
            default_type application/json;
            return 200 '{models}';
        }}
    }}"""
    proc = start_nginx("upstream", servers)
    wait_port(port, proc, 10)
    return Upstream(port, proc, {"json": "/json/v1", "sse": "/sse/v1"})


# --------------------------------------------------------------------------------------------
# contenders


@dataclass
class Target:
    """A started contender: where to send load, with which key, which process to watch."""

    url: str
    key: str = "-"
    pid: int | None = None
    billing: Callable[[], tuple[int, int]] | None = None  # (usage rows, completion tokens)
    admin: Callable[[str], tuple[int, bytes]] | None = None  # GET an admin path
    info: dict[str, str] = field(default_factory=dict)


class Contender:
    name = ""

    def start(self, base_url: str, upstream_pid: int) -> Target:
        raise NotImplementedError

    def stop(self) -> None:
        pass


class Direct(Contender):
    name = "direct"

    def start(self, base_url: str, upstream_pid: int) -> Target:
        return Target(url=base_url + "/chat/completions", pid=upstream_pid)


class NginxProxy(Contender):
    name = "nginx"

    def __init__(self) -> None:
        self.proc: Proc | None = None

    def start(self, base_url: str, upstream_pid: int) -> Target:
        rest = base_url.removeprefix("http://")
        hostport, _, path = rest.partition("/")
        port = free_port()
        servers = f"""
    upstream bench_up {{
        server {hostport};
        keepalive 256;
        keepalive_requests 10000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen {HOST}:{port} backlog=4096;
        location = /v1/chat/completions {{
            proxy_pass http://bench_up/{path}/chat/completions;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 300s;
        }}
    }}"""
        self.proc = start_nginx("proxy", servers)
        wait_port(port, self.proc, 10)
        return Target(url=f"http://{HOST}:{port}/v1/chat/completions", pid=self.proc.pid)

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()
            self.proc = None


class Relay(Contender):
    name = "relay"

    def __init__(self) -> None:
        self.proc: Proc | None = None

    def start(self, base_url: str, upstream_pid: int) -> Target:
        port = free_port()
        self.proc = Proc(
            "relay",
            [
                str(PROJECT_PY),
                str(BENCH / "bare_relay.py"),
                "--port",
                str(port),
                "--upstream",
                base_url,
            ],
        )
        wait_port(port, self.proc, 30)
        return Target(url=f"http://{HOST}:{port}/v1/chat/completions", pid=self.proc.pid)

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()
            self.proc = None


def _usage_counter(db: Path, wallet_id: str) -> Callable[[], tuple[int, int]] | None:
    """Counts the usage rows of one wallet straight from the gateway's SQLite file."""

    def count() -> tuple[int, int]:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            cols = {r[1] for r in conn.execute('PRAGMA table_info("usage")')}
            tokens = "COALESCE(SUM(completion_tokens), 0)" if "completion_tokens" in cols else "0"
            row = conn.execute(
                f'SELECT COUNT(*), {tokens} FROM "usage" WHERE wallet_id = ?', (wallet_id,)
            ).fetchone()
            return int(row[0]), int(row[1])
        finally:
            conn.close()

    try:
        count()
    except sqlite3.Error as exc:
        log(f"cannot count usage rows in {db}: {exc}")
        return None
    return count


class Gateway(Contender):
    name = "gateway"

    binary = ROOT / ".venv" / "bin" / "gateway"

    def __init__(self, db: Path | None = None, tag: str = "gateway") -> None:
        self.proc: Proc | None = None
        self.fixed_db = db
        self.tag = tag
        self.db: Path | None = None
        self.startup_s = 0.0

    def start(self, base_url: str, upstream_pid: int) -> Target:
        if not self.binary.exists():
            raise Unavailable(f"{self.binary} does not exist (pip install -e . not done?)")
        port = free_port()
        if self.fixed_db is not None:
            self.db = self.fixed_db
        else:
            self.db = RUN / "gateway" / f"{self.tag}.db"
            self.db.parent.mkdir(parents=True, exist_ok=True)
            for suffix in ("", "-wal", "-shm", "-journal", ".lock"):
                Path(f"{self.db}{suffix}").unlink(missing_ok=True)
        config = RUN / "gateway" / f"{self.tag}.toml"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(
            f"""[server]
host = "{HOST}"
port = {port}

[storage]
url = "sqlite:///{self.db}"

[[backends]]
name = "nginx"
base_url = "{base_url}"

[[routes]]
model = "bench-model"
backend = "nginx"
input_price = "0.15"
output_price = "0.60"
"""
        )
        started = time.monotonic()
        self.proc = Proc(
            self.tag,
            [str(self.binary), "serve", "--config", str(config), "--port", str(port)],
            env=child_env(GATEWAY_ADMIN_TOKEN=ADMIN_TOKEN),
        )
        wait_port(port, self.proc, 120)
        self.startup_s = time.monotonic() - started
        root = f"http://{HOST}:{port}"
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"}

        def admin(method: str, path: str, payload: dict[str, Any] | None = None) -> Any:
            body = json.dumps(payload).encode() if payload is not None else None
            for attempt in range(20):
                try:
                    status, raw = http(method, root + path, body, auth)
                except OSError as exc:
                    if attempt == 19:
                        raise Unavailable(f"admin {path}: {exc}") from exc
                    time.sleep(0.25)
                    continue
                if status >= 300:
                    raise Unavailable(f"admin {method} {path} -> {status}: {raw[:300]!r}")
                return json.loads(raw) if raw else None
            raise Unavailable(f"admin {path}: no answer")

        wallet = admin("POST", "/admin/wallets", {"name": "bench", "balance": "1000000000"})
        key = admin("POST", "/admin/keys", {"wallet_id": wallet["id"], "name": "bench"})
        return Target(
            url=root + "/v1/chat/completions",
            key=str(key["key"]),
            pid=self.proc.pid,
            billing=_usage_counter(self.db, str(wallet["id"])),
            admin=lambda path: http("GET", root + path, None, auth),
            info={"wallet_id": str(wallet["id"]), "startup_s": f"{self.startup_s:.1f}"},
        )

    def stop(self) -> None:
        if self.proc:
            self.proc.stop(grace=30)
            self.proc = None


class LiteLLM(Contender):
    name = "litellm"

    def __init__(self, binary: Path) -> None:
        self.binary = binary
        self.proc: Proc | None = None

    def start(self, base_url: str, upstream_pid: int) -> Target:
        if not self.binary.exists():
            raise Unavailable(f"{self.binary} not found: run bench/run.sh to install LiteLLM")
        port = free_port()
        config = RUN / "litellm" / "config.yaml"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(
            f"""model_list:
  - model_name: bench-model
    litellm_params:
      model: openai/bench-model
      api_base: {base_url}
      api_key: dummy
litellm_settings:
  drop_params: true
  telemetry: false
"""
        )
        master_key = "sk-bench-" + secrets.token_hex(24)
        env = child_env(
            LITELLM_MASTER_KEY=master_key,
            LITELLM_LOCAL_MODEL_COST_MAP="True",
            LITELLM_LOG="ERROR",
            LITELLM_MODE="PRODUCTION",
            DISABLE_SCHEMA_UPDATE="true",
        )
        self.proc = Proc(
            "litellm",
            [
                str(self.binary),
                "--config",
                str(config),
                "--host",
                HOST,
                "--port",
                str(port),
                "--num_workers",
                "1",
            ],
            env=env,
        )
        wait_port(port, self.proc, 180)
        return Target(
            url=f"http://{HOST}:{port}/v1/chat/completions", key=master_key, pid=self.proc.pid
        )

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()
            self.proc = None


# --------------------------------------------------------------------------------------------
# measurements


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


# --------------------------------------------------------------------------------------------
# results


@dataclass
class Row:
    """One contender in one scenario: its runs, or why it has none."""

    runs: list[Any] = field(default_factory=list)
    error: str | None = None
    chunks: int = 0  # content chunks per streamed answer, from the smoke check
    extra: dict[str, Any] = field(default_factory=dict)


Results = dict[str, dict[str, Row]]


def med(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


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


# --------------------------------------------------------------------------------------------
# the runner


@dataclass
class Options:
    seconds: int
    warmup: int
    runs: int
    scenarios: list[str]
    contenders: list[str]
    litellm: Path
    gateway: Path
    paced_streams: int
    paced_tokens: int
    paced_ramp: float
    ledger_wallets: int
    ledger_rows: int
    quick: bool


class Bench:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.results: Results = {}
        self.load_before = (0.0, 0.0, 0.0)

    def contender(self, name: str) -> Contender:
        factories: dict[str, Callable[[], Contender]] = {
            "direct": Direct,
            "nginx": NginxProxy,
            "relay": Relay,
            "gateway": Gateway,
            "litellm": lambda: LiteLLM(self.opts.litellm),
        }
        return factories[name]()

    def row(self, scenario: str, name: str) -> Row:
        return self.results.setdefault(scenario, {}).setdefault(name, Row())

    @contextlib.contextmanager
    def started(self, contender: Contender, base_url: str, upstream_pid: int) -> Iterator[Target]:
        try:
            target = contender.start(base_url, upstream_pid)
            yield target
        finally:
            contender.stop()

    def wrk_group(self, upstream: Upstream, kind: str, plan: list[tuple[str, int]]) -> None:
        """Scenarios sharing an upstream kind: each contender is started once for them all."""
        stream = kind == "sse"
        for name in self.opts.contenders:
            contender = self.contender(name)
            log(f"{kind}: starting {name}")
            try:
                with self.started(contender, upstream.base(kind), upstream.proc.pid) as target:
                    chunks = self._ready(target, stream)
                    seconds = self._calibrate(target, stream, plan[0][1])
                    for scenario, connections in plan:
                        row = self.row(scenario, name)
                        row.chunks = chunks
                        run_seconds = seconds if connections == plan[0][1] else self.opts.seconds
                        if run_seconds != self.opts.seconds:
                            row.extra["seconds"] = run_seconds
                        for i in range(self.opts.runs):
                            settle(target.pid)
                            run = wrk(
                                target,
                                stream=stream,
                                connections=connections,
                                seconds=run_seconds,
                            )
                            row.runs.append(run)
                            log(
                                f"{scenario} {name} run {i + 1}: {run.rate:,.0f}/s "
                                f"p50 {run.p50_ms:.2f} ms p99 {run.p99_ms:.2f} ms "
                                f"errors {run.non_2xx}+{run.socket_errors}"
                                + (f" billed {run.billed[0]}" if run.billed else "")
                            )
            except Unavailable as exc:
                log(f"{name} unavailable for {kind}: {exc}")
                for scenario, _ in plan:
                    row = self.row(scenario, name)
                    if not row.runs:
                        row.error = str(exc)

    def _calibrate(self, target: Target, stream: bool, connections: int) -> int:
        """Warm up; returns the run length. A contender so slow that an answer takes longer
        than a third of a run gets longer runs (at most 60 s), so that every connection
        completes a few answers in each (else wrk, which counts only completed answers, would
        report nothing or a burst)."""
        warm = wrk(target, stream=stream, connections=connections, seconds=self.opts.warmup)
        log(f"warm-up {warm.rate:,.0f}/s, p50 {warm.p50_ms:.1f} ms")
        if warm.requests < connections:
            settle(target.pid)
            warm = wrk(target, stream=stream, connections=connections, seconds=20)
            log(f"slow: calibration {warm.rate:,.0f}/s, p50 {warm.p50_ms:.1f} ms")
        latency_s = warm.p50_ms / 1000 if warm.requests else 20.0
        seconds = min(60, max(self.opts.seconds, math.ceil(3 * latency_s)))
        if seconds != self.opts.seconds:
            log(f"runs of {seconds}s for this contender (an answer takes {latency_s:.1f}s)")
        return seconds

    def _ready(self, target: Target, stream: bool, timeout: float = 60.0) -> int:
        """Retry the smoke request until the contender answers (LiteLLM warms up slowly)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return smoke(target, stream)
            except (Unavailable, OSError) as exc:
                if time.monotonic() > deadline:
                    raise Unavailable(str(exc)) from exc
                time.sleep(0.5)

    def scenario4(self) -> None:
        port = free_port()
        proc = Proc(
            "paced-upstream",
            [
                str(PROJECT_PY),
                str(BENCH / "paced_upstream.py"),
                "--port",
                str(port),
                "--tokens",
                str(self.opts.paced_tokens),
            ],
        )
        try:
            wait_port(port, proc, 20)
            base = f"http://{HOST}:{port}/v1"
            names = [n for n in self.opts.contenders if n != "litellm"]
            if "litellm" in self.opts.contenders:
                self.row(
                    "scenario4", "litellm"
                ).error = "skipped: it carries ~10-15 100-chunk streams/s, far from 20,000 chunks/s"
            for name in names:
                contender = self.contender(name)
                row = self.row("scenario4", name)
                row.extra["tokens"] = self.opts.paced_tokens
                log(f"paced: starting {name}")
                try:
                    with self.started(contender, base, proc.pid) as target:
                        self._ready(target, stream=False)
                        for i in range(self.opts.runs):
                            settle(target.pid)
                            run = paced(
                                target,
                                self.opts.paced_streams,
                                self.opts.paced_tokens,
                                self.opts.paced_ramp,
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

    def scenario5(self, upstream: Upstream) -> None:
        results = self.results.setdefault("scenario5", {})
        empty, full = results.setdefault("empty", Row()), results.setdefault("full", Row())
        label = f"{self.opts.ledger_wallets:,} wallets, {self.opts.ledger_rows:,} usage rows"
        full.extra["label"] = label
        try:
            db = self._ledger_db(upstream)
        except Unavailable as exc:
            log(f"scenario5: no ledger: {exc}")
            empty.error = full.error = str(exc)
            return
        for name, row, path in (("empty", empty, None), ("full", full, db)):
            log(f"scenario5: gateway on the {name} ledger")
            try:
                gateway = Gateway(path, tag=f"gateway-ledger-{name}")
                with self.started(gateway, upstream.base("json"), upstream.proc.pid) as target:
                    row.extra["startup_s"] = target.info.get("startup_s", "–")
                    self._ready(target, stream=False)
                    wrk(target, stream=False, connections=64, seconds=self.opts.warmup)
                    for i in range(self.opts.runs):
                        settle(target.pid)
                        run = wrk(target, stream=False, connections=64, seconds=self.opts.seconds)
                        row.runs.append(run)
                        log(f"scenario5 {name} run {i + 1}: {run.rate:,.0f}/s")
                    if path is not None:
                        meta = json.loads(db.with_suffix(".json").read_text())
                        self._query(target, row, "heavy", meta["heavy_wallet"])
                        self._query(target, row, "typical", meta["typical_wallet"])
            except Unavailable as exc:
                log(f"scenario5 {name}: {exc}")
                if not row.runs:
                    row.error = str(exc)
        with contextlib.suppress(OSError):
            for suffix in ("", "-wal", "-shm", "-journal", ".lock"):
                Path(f"{db}{suffix}").unlink(missing_ok=True)
            db.with_suffix(".json").unlink(missing_ok=True)

    def _query(self, target: Target, row: Row, which: str, wallet: str) -> None:
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

    def _ledger_db(self, upstream: Upstream) -> Path:
        """A working copy of the cached filled ledger for the gateway's current schema."""
        folder = WORK / "ledger"
        folder.mkdir(parents=True, exist_ok=True)
        fresh = RUN / "ledger-schema.db"
        for suffix in ("", "-wal", "-shm", "-journal", ".lock"):
            Path(f"{fresh}{suffix}").unlink(missing_ok=True)
        gateway = Gateway(fresh, tag="gateway-schema")
        with self.started(gateway, upstream.base("json"), upstream.proc.pid):
            pass  # started (schema created), wallet and key made, stopped
        # the admin calls above wrote a wallet and a key: start from the bare schema
        with sqlite3.connect(fresh) as conn:
            conn.execute("PRAGMA journal_mode=DELETE")
        digest = ledger.schema_hash(fresh)
        w, n = self.opts.ledger_wallets, self.opts.ledger_rows
        cached = folder / f"ledger-{digest}-{w}w-{n}u.db"
        meta = cached.with_suffix(".json")
        if not (cached.exists() and meta.exists()):
            log(f"scenario5: building the ledger ({w:,} wallets, {n:,} usage rows) for {digest}")
            for old in folder.glob("ledger-*"):
                old.unlink()
            building = folder / "building.db"
            shutil.copyfile(fresh, building)
            self._clear(building)
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

    @staticmethod
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

    def run(self) -> str:
        scenarios = self.opts.scenarios
        log(f"scenarios {', '.join(scenarios)}; contenders {', '.join(self.opts.contenders)}")
        self.load_before = os.getloadavg()
        if self.load_before[0] > 0.5:
            log(f"load average {self.load_before[0]:.2f}: other work shares this machine")
        upstream = start_upstream()
        started = time.monotonic()
        try:
            json_plan = [(s, c) for s, c in (("scenario1", 64), ("scenario3", 1)) if s in scenarios]
            if json_plan:
                self.wrk_group(upstream, "json", json_plan)
            if "scenario2" in scenarios:
                self.wrk_group(upstream, "sse", [("scenario2", 64)])
            if "scenario4" in scenarios:
                self.scenario4()
            if "scenario5" in scenarios:
                self.scenario5(upstream)
        finally:
            upstream.proc.stop()
        return self.report(time.monotonic() - started)

    def report(self, elapsed: float) -> str:
        o = self.opts
        parts = [
            f"# Benchmark, {time.strftime('%Y-%m-%d %H:%M')}",
            "",
            f"- machine: {machine()}",
            f"- software: {versions(o.litellm)}",
            f"- load: wrk, 1 thread, {o.seconds}s per run after a {o.warmup}s warm-up; "
            f"each figure is the median of {o.runs} runs (min–max); ratios are of medians "
            f"measured in this invocation{' (--quick)' if o.quick else ''}",
            f"- took {elapsed / 60:.1f} min; load average before it {self.load_before[0]:.2f} "
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
            res = self.results.get(scenario)
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
        checks = targets(self.results)
        if checks:
            parts += ["", "## The gateway against the issue's targets", "", *checks]
        return "\n".join(parts) + "\n"


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
        paced_streams=args.streams,
        paced_tokens=args.tokens or (60 if args.quick else 200),
        paced_ramp=args.ramp,
        ledger_wallets=args.wallets,
        ledger_rows=args.usage_rows,
        quick=args.quick,
    )


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
    report = Bench(opts).run()
    print(report)
    out = WORK / f"results-{time.strftime('%Y-%m-%d-%H%M')}.md"
    out.write_text(report)
    log(f"table written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
