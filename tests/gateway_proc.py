"""The real gateway as a subprocess, and the helpers end-to-end tests drive it with.

:class:`GatewayProcess` runs ``python -m gateway serve --config PATH --port PORT`` on loopback,
waits for ``GET /healthz``, and can be SIGKILLed and restarted on the same config and database.
:class:`Admin` wraps the admin API (wallets, keys, usage) and checks that the books balance.
:func:`write_config` renders a config dict as TOML.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from typing import Any, TypeVar

import httpx

from upstream import free_port

__all__ = [
    "ADMIN_TOKEN",
    "Admin",
    "D",
    "GatewayFactory",
    "GatewayProcess",
    "expected_cost",
    "poll",
    "run_cli",
    "to_toml",
    "write_config",
]

ADMIN_TOKEN = "test-admin-token"
STARTUP_TIMEOUT_S = 20.0
MICRO = Decimal("0.000001")

T = TypeVar("T")


# -- config ------------------------------------------------------------------------------------
def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(config: Mapping[str, Any]) -> str:
    """Render ``{"server": {...}, "backends": [{...}, ...]}`` (tables of scalars) as TOML."""
    lines: list[str] = []
    for key, value in config.items():
        if not isinstance(value, Mapping | list):
            lines.append(f"{key} = {_toml_value(value)}")
    for key, value in config.items():
        if isinstance(value, Mapping):
            lines.append(f"\n[{key}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in value.items() if v is not None]
        elif isinstance(value, list) and all(isinstance(v, Mapping) for v in value):
            for table in value:
                lines.append(f"\n[[{key}]]")
                lines += [f"{k} = {_toml_value(v)}" for k, v in table.items() if v is not None]
    return "\n".join(lines) + "\n"


def write_config(directory: Path, config: Mapping[str, Any], name: str = "gateway.toml") -> Path:
    path = directory / name
    path.write_text(to_toml(config), encoding="utf-8")
    return path


# -- money -------------------------------------------------------------------------------------
def expected_cost(
    route: Mapping[str, Any], prompt: int, completion: int, cached: int = 0
) -> Decimal:
    """The contract's cost of a request at ``route``'s prices, rounded up to the micro-credit."""
    input_price = Decimal(str(route["input_price"]))
    cached_price = Decimal(str(route.get("cached_input_price") or route["input_price"]))
    output_price = Decimal(str(route["output_price"]))
    total = (prompt - cached) * input_price + cached * cached_price + completion * output_price
    return (total / 1_000_000).quantize(MICRO, rounding=ROUND_CEILING).normalize()


def D(value: object) -> Decimal:
    """A decimal-string amount from the API as a Decimal (asserting it is a string)."""
    assert isinstance(value, str), f"amounts travel as decimal strings, got {value!r}"
    return Decimal(value)


def poll(
    probe: Callable[[], T],
    until: Callable[[T], bool],
    *,
    timeout: float = 5.0,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Call ``probe`` until ``until(result)``; fail with the last result after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if until(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last: {result!r}")
        time.sleep(interval)


# -- the process -------------------------------------------------------------------------------
class GatewayProcess:
    """``python -m gateway serve`` on 127.0.0.1 with a config file and its own environment."""

    def __init__(
        self,
        config_path: Path,
        *,
        config: Mapping[str, Any] | None = None,
        env: Mapping[str, str | None] | None = None,
        admin_token: str | None = ADMIN_TOKEN,
        port: int | None = None,
        args: Sequence[str] = (),
    ) -> None:
        self.config_path = config_path
        self.config = dict(config or {})
        self.port = port or free_port()
        self.args = list(args)  # more ``serve`` options, e.g. ``("--workers", "2")``
        self.admin_token = admin_token
        self.env = dict(os.environ)
        self.env.pop("GATEWAY_ADMIN_TOKEN", None)
        if admin_token is not None:
            self.env["GATEWAY_ADMIN_TOKEN"] = admin_token
        for key, value in (env or {}).items():
            if value is None:
                self.env.pop(key, None)
            else:
                self.env[key] = value
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._log_dir = config_path.parent

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def stderr_path(self) -> Path:
        return self._log_dir / f"{self.config_path.stem}.{self.starts}.stderr.log"

    @property
    def stdout_path(self) -> Path:
        return self._log_dir / f"{self.config_path.stem}.{self.starts}.stdout.log"

    def output(self) -> str:
        """What the current (or last) process wrote to stdout and stderr."""
        return self.output_since((0, 0))

    def output_mark(self) -> tuple[int, int]:
        """How much the current process has written to stdout and stderr so far: give it to
        :meth:`output_since` to read only what comes after (a session's shared gateway has
        logged for every earlier test)."""
        stdout, stderr = (
            path.stat().st_size if path.exists() else 0
            for path in (self.stdout_path, self.stderr_path)
        )
        return stdout, stderr

    def output_since(self, mark: tuple[int, int]) -> str:
        """What the current process wrote to stdout and stderr after :meth:`output_mark`."""
        parts = []
        for path, offset in zip((self.stdout_path, self.stderr_path), mark, strict=True):
            if path.exists():
                with path.open("rb") as file:
                    file.seek(offset)
                    parts.append(file.read().decode("utf-8", errors="replace"))
        return "\n".join(parts)

    def start(self, timeout: float = STARTUP_TIMEOUT_S) -> GatewayProcess:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        command = [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--config",
            str(self.config_path),
            "--port",
            str(self.port),
            *self.args,
        ]
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(command, stdout=out, stderr=err, env=self.env)
        self._wait_healthy(timeout)
        return self

    def _wait_healthy(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=1.0, trust_env=False) as client:
            while True:
                code = self.proc.poll()
                if code is not None:
                    raise AssertionError(
                        f"gateway exited with {code} before serving\n{self._tail()}"
                    )
                try:
                    if client.get(f"{self.url}/healthz").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    self.kill()
                    raise AssertionError(
                        f"gateway not healthy after {timeout:.0f}s on {self.url}\n{self._tail()}"
                    )
                time.sleep(0.05)

    def _tail(self, limit: int = 6000) -> str:
        text = self.output()
        return f"--- gateway output ({self.config_path}) ---\n{text[-limit:]}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self) -> None:
        """Send SIGTERM without waiting."""
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout``; the exit code."""
        if self.proc is None:
            return None
        self.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        if not self.running:
            return
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def restart(self) -> GatewayProcess:
        self.stop()
        return self.start()

    def admin(self) -> Admin:
        """An admin API client (close it, or use it as a context manager)."""
        return Admin(self.url, self.admin_token or "")

    def route(self, model: str, backend: str | None = None) -> dict[str, Any]:
        """The config's route for ``model`` (on ``backend``), to price what it served."""
        for route in self.config.get("routes", []):
            if route["model"] == model and (backend is None or route["backend"] == backend):
                return dict(route)
        raise KeyError((model, backend))

    def cost(
        self, model: str, prompt: int, completion: int, cached: int = 0, backend: str | None = None
    ) -> Decimal:
        return expected_cost(self.route(model, backend), prompt, completion, cached)


class GatewayFactory:
    """Starts gateways with their own config and database under ``directory``; stops them all
    on :meth:`close`. Each config is the given sections over a SQLite file of its own."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[GatewayProcess] = []

    def __call__(
        self,
        *,
        backends: list[dict[str, Any]],
        routes: list[dict[str, Any]],
        env: Mapping[str, str | None] | None = None,
        admin_token: str | None = ADMIN_TOKEN,
        start: bool = True,
        **sections: dict[str, Any],
    ) -> GatewayProcess:
        home = self.directory / f"gateway-{len(self.started)}"
        home.mkdir(parents=True)
        config: dict[str, Any] = {
            "server": {"host": "127.0.0.1", "port": 8080},
            "storage": {"url": f"sqlite:///{home / 'gateway.db'}"},
        }
        for name, values in sections.items():
            config[name] = {**config.get(name, {}), **values}
        config["backends"] = backends
        config["routes"] = routes
        env = {"UPSTREAM_A_KEY": "sk-upstream-a", "UPSTREAM_B_KEY": "sk-upstream-b", **(env or {})}
        process = GatewayProcess(
            write_config(home, config), config=config, env=env, admin_token=admin_token
        )
        self.started.append(process)
        return process.start() if start else process

    def close(self) -> None:
        """SIGTERM every gateway at once, then wait for each (SIGKILL after 10 s)."""
        for process in self.started:
            process.terminate()
        for process in self.started:
            process.stop()


# -- the admin API -----------------------------------------------------------------------------
class Admin:
    """The admin API over httpx (sync: usable from sync fixtures and async tests alike)."""

    def __init__(self, base_url: str, token: str) -> None:
        self.http = httpx.Client(
            base_url=base_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30.0,
            trust_env=False,
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Admin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ok(self, response: httpx.Response, *statuses: int) -> Any:
        expected = statuses or (200,)
        assert response.status_code in expected, (
            f"{response.request.method} {response.request.url} -> {response.status_code}, "
            f"expected {expected}: {response.text}"
        )
        return response.json() if response.content else None

    # wallets
    def make_wallet(self, balance: object = "10", name: str = "test-wallet") -> str:
        """A new wallet (``balance=None`` leaves the optional field out); returns its id."""
        payload: dict[str, object] = {"name": name}
        if balance is not None:
            payload["balance"] = balance
        return str(self._ok(self.http.post("/admin/wallets", json=payload), 201)["id"])

    def wallet(self, wallet_id: str) -> dict[str, Any]:
        return dict(self._ok(self.http.get(f"/admin/wallets/{wallet_id}")))

    def idle_wallet(self, wallet_id: str, timeout: float = 5.0) -> dict[str, Any]:
        """The wallet once nothing is reserved on it (requests settle after their last byte)."""
        return poll(
            lambda: self.wallet(wallet_id),
            lambda w: D(w["reserved"]) == 0,
            timeout=timeout,
            what=f"wallet {wallet_id} to have nothing reserved",
        )

    def balance(self, wallet_id: str) -> Decimal:
        return D(self.idle_wallet(wallet_id)["balance"])

    def credit(self, wallet_id: str, amount: object, **extra: object) -> httpx.Response:
        return self.http.post(
            f"/admin/wallets/{wallet_id}/credits", json={"amount": amount, **extra}
        )

    def ledger(self, wallet_id: str, limit: int = 1000) -> list[dict[str, Any]]:
        body = self._ok(
            self.http.get(f"/admin/wallets/{wallet_id}/ledger", params={"limit": limit})
        )
        return list(body["data"])

    def ledger_sum(self, wallet_id: str) -> Decimal:
        return sum((D(e["amount"]) for e in self.ledger(wallet_id)), Decimal(0))

    # keys
    def make_key(self, wallet_id: str, name: str = "test-key", **opts: object) -> tuple[str, str]:
        """Create a key; returns ``(key_id, secret)``."""
        body = self._ok(
            self.http.post("/admin/keys", json={"wallet_id": wallet_id, "name": name, **opts}),
            201,
        )
        return str(body["id"]), str(body["key"])

    def revoke_key(self, key_id: str) -> httpx.Response:
        return self.http.delete(f"/admin/keys/{key_id}")

    # usage
    def usage(self, **params: object) -> list[dict[str, Any]]:
        params.setdefault("limit", 1000)
        return list(self._ok(self.http.get("/admin/usage", params=params))["data"])

    def usage_record(self, request_id: str, timeout: float = 5.0) -> dict[str, Any]:
        """The usage record of one request (written when it settles)."""
        records = poll(
            lambda: [u for u in self.usage() if u["request_id"] == request_id],
            bool,
            timeout=timeout,
            what=f"the usage record of {request_id}",
        )
        assert len(records) == 1, records
        return records[0]

    def assert_charged(
        self,
        gateway: GatewayProcess,
        wallet_id: str,
        request_id: str,
        *,
        model: str,
        prompt: int,
        completion: int,
        cached: int = 0,
        backend: str | None = None,
        status: str | None = "ok",
    ) -> dict[str, Any]:
        """The request's usage record shows these tokens, its cost is the contract's price at
        the route that served it, and the wallet's ledger carries exactly that charge."""
        record = self.usage_record(request_id)
        assert (record["prompt_tokens"], record["completion_tokens"]) == (prompt, completion), (
            record
        )
        assert record["wallet_id"] == wallet_id, record
        assert record["model"] == model, record
        if backend is not None:
            assert record["backend"] == backend, record
        if status is not None:
            assert record["status"] == status, record
        cost = gateway.cost(model, prompt, completion, cached, backend=backend)
        assert D(record["cost"]) == cost, (record, f"expected cost {cost}")
        charges = [e for e in self.ledger(wallet_id) if e.get("request_id") == request_id]
        assert -sum((D(e["amount"]) for e in charges), Decimal(0)) == cost, charges
        return record

    # invariants
    def assert_books_balance(self, wallet_id: str) -> dict[str, Any]:
        """Once idle: nothing reserved, balance >= 0, the ledger sums to the balance and chains
        through ``balance_after``, and the charges equal the usage records' costs."""
        wallet = self.idle_wallet(wallet_id)
        balance, reserved = D(wallet["balance"]), D(wallet["reserved"])
        assert balance >= 0, wallet
        assert D(wallet["available"]) == balance - reserved, wallet
        entries = self.ledger(wallet_id)
        assert sum((D(e["amount"]) for e in entries), Decimal(0)) == balance, (wallet, entries)
        if entries:
            assert D(entries[0]["balance_after"]) == balance, (wallet, entries[0])
        for newer, older in itertools.pairwise(entries):
            assert D(newer["balance_after"]) == D(older["balance_after"]) + D(newer["amount"]), (
                "ledger entries do not chain (newest first)",
                newer,
                older,
            )
        charged = -sum((D(e["amount"]) for e in entries if e["kind"] == "charge"), Decimal(0))
        costs = sum((D(u["cost"]) for u in self.usage(wallet_id=wallet_id)), Decimal(0))
        assert charged == costs, f"charges {charged} != usage costs {costs}"
        return wallet


# -- the CLI -----------------------------------------------------------------------------------
def run_cli(
    config_path: Path,
    *args: str,
    env: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    """``python -m gateway ARGS --config PATH`` (the caller adds ``--json`` where wanted)."""
    command = [sys.executable, "-m", "gateway", *args, "--config", str(config_path)]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )
