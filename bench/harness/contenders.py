"""The contenders: each started against an upstream base url, and stopped."""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import ADMIN_TOKEN, BENCH, HOST, PROJECT_PY, ROOT, RUN, Unavailable, log
from .processes import Proc, child_env, free_port, http, start_nginx, wait_port


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

    def __init__(
        self, db: Path | None = None, tag: str = "gateway", src: Path | None = None
    ) -> None:
        self.proc: Proc | None = None
        self.fixed_db = db
        self.tag = tag
        #: Another source tree's ``src`` first on the path: its gateway, in this venv.
        self.src = src
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
            env=child_env(
                GATEWAY_ADMIN_TOKEN=ADMIN_TOKEN,
                **({"PYTHONPATH": str(self.src / "src")} if self.src is not None else {}),
            ),
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
