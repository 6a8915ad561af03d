"""Several instances: requests/s through one gateway on SQLite, one on PostgreSQL and two on
PostgreSQL, under the same load, and the time a request spends in the ledger on each engine.

    .venv/bin/python bench/instances.py                 # 3 runs of 10 s per setup, 64 clients
    .venv/bin/python bench/instances.py --runs 5 --duration 20 --connections 128
    .venv/bin/python bench/instances.py --only ledger   # or: --only http

Needs PostgreSQL (``--postgres``, default ``postgresql://postgres@127.0.0.1:5432/test``); every
run works in schemas of its own (``gw_bench_<random>``), dropped at the end.

**HTTP**: the real ``gateway serve`` processes (full metering: a wallet and an app key made
through the admin API, every request reserved, settled and logged) in front of a minimal aiohttp
upstream answering a fixed chat completion (its own process, uvloop). The load is non-streaming
``POST /v1/chat/completions`` from a fixed number of concurrent clients: wrk when it is on the
PATH (one wrk per instance, the clients split evenly between them: a client-side round robin by
connection), else an aiohttp client sending request *i* to instance *i mod n*. Each setup gets a
2 s warm-up, then ``--runs`` runs of ``--duration`` seconds.

**Ledger**: the Store API driven directly (no HTTP), one wallet and one key per engine, as a
request drives it: ``reserve`` then ``settle`` (a charge, a usage record, the key's spend). One
at a time: the latency of the pair (median and p99 over ``--pairs`` pairs); then
``--connections`` concurrent requests on the same wallet (the contended case): pairs/s and the
median pair.

Every figure is the median of the runs with their min-max in brackets. The machine's other work
skews it all: the load average is printed first. This is a benchmark, not a test: nothing
asserts a timing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ADMIN_TOKEN = "bench-admin-token"
HOST = "127.0.0.1"
MODEL = "bench-model"
REQUEST = {
    "model": MODEL,
    "messages": [
        {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
        {"role": "user", "content": "What is the capital of France, and why is it famous?"},
    ],
    "max_tokens": 64,
}
ANSWER = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1_700_000_000,
    "model": MODEL,
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Paris, for the Eiffel Tower and art."},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 40, "completion_tokens": 10, "total_tokens": 50},
}


def log(message: str) -> None:
    sys.stderr.write(f"[instances] {message}\n")
    sys.stderr.flush()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def spread(values: Sequence[float], digits: int = 0) -> str:
    """``median [min-max]`` (with an en dash)."""
    if not values:
        return "n/a"
    fmt = f"{{:,.{digits}f}}"
    median = fmt.format(statistics.median(values))
    return f"{median} [{fmt.format(min(values))}–{fmt.format(max(values))}]"


# -- the upstream ------------------------------------------------------------------------------
def serve_upstream(port: int) -> None:
    """A fixed chat completion for every POST (run in its own process: ``--upstream PORT``)."""
    import uvloop
    from aiohttp import web

    body = json.dumps(ANSWER).encode()

    async def chat(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/", lambda _: web.Response(text="ok"))  # type: ignore[arg-type,return-value]
    uvloop.install()
    web.run_app(app, host=HOST, port=port, access_log=None, print=None)


# -- processes -----------------------------------------------------------------------------------
class Proc:
    def __init__(self, name: str, command: list[str], logdir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.log_path = logdir / f"{name}.log"
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)

    def wait_http(self, url: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{tail}")
            try:
                with urllib.request.urlopen(url, timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} not answering {url}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextlib.contextmanager
def running(procs: list[Proc]) -> Iterator[list[Proc]]:
    try:
        yield procs
    finally:
        for proc in procs:
            proc.stop()


def gateway_config(path: Path, storage: dict[str, Any], upstream_port: int) -> Path:
    lines = ["[server]", f'host = "{HOST}"', "", "[storage]"]
    for key, value in storage.items():
        lines.append(f"{key} = {json.dumps(value)}")
    lines += [
        "",
        "[[backends]]",
        'name = "up"',
        f'base_url = "http://{HOST}:{upstream_port}/v1"',
        "",
        "[[routes]]",
        f'model = "{MODEL}"',
        'backend = "up"',
        'input_price = "0.15"',
        'output_price = "0.60"',
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def start_gateway(name: str, config: Path, logdir: Path) -> tuple[Proc, str]:
    port = free_port()
    env = {**os.environ, "GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN}
    command = [sys.executable, "-m", "gateway", "serve", "--config", str(config)]
    proc = Proc(name, [*command, "--port", str(port)], logdir, env)
    url = f"http://{HOST}:{port}"
    proc.wait_http(f"{url}/healthz")
    return proc, url


def admin(url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url + path,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return dict(json.loads(response.read()))


def wallets_and_keys(url: str, count: int) -> list[str]:
    """``count`` wallets with a key each; the keys' secrets."""
    secrets_ = []
    for i in range(count):
        wallet = admin(url, "/admin/wallets", {"name": f"bench-{i}", "balance": "1000000000"})
        key = admin(url, "/admin/keys", {"wallet_id": wallet["id"], "name": f"bench-{i}"})
        secrets_.append(str(key["key"]))
    return secrets_


def process_cpu(pids: Sequence[int]) -> float:
    """CPU seconds (user + system) the processes ``pids`` have used so far."""
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def cpu_times() -> tuple[int, int]:
    """The machine's (busy, total) jiffies from /proc/stat (zeros where there is none)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    except OSError:
        return 0, 0
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


# -- load --------------------------------------------------------------------------------------
@dataclass
class Load:
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    cpu_busy: float = 0.0  # the machine's CPU busy share during the run, 0..1
    gateway_cores: float = 0.0  # CPU the gateway processes used, in cores

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


_LUA = """
local body = %(body)s
local keys = {%(keys)s}
local turn = 0
request = function()  -- each request with the next key (wallet), in turn
  turn = turn + 1
  local headers = {["Content-Type"] = "application/json",
                   ["Authorization"] = "Bearer " .. keys[turn %% #keys + 1]}
  return wrk.format("POST", nil, headers, body)
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"requests": %%d, "us": %%d, "errors": %%d, "p50_us": %%d}\\n',
    summary.requests, summary.duration,
    e.connect + e.read + e.write + e.status + e.timeout, latency:percentile(50)))
end
"""


def wrk_load(urls: Sequence[str], keys: Sequence[str], connections: int, seconds: float) -> Load:
    """One wrk per instance, the clients split evenly, all at once."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        listed = ", ".join(json.dumps(k) for k in keys)
        script.write(_LUA % {"body": json.dumps(json.dumps(REQUEST)), "keys": listed})
    try:
        share = [connections // len(urls) + (i < connections % len(urls)) for i in range(len(urls))]
        procs = [
            subprocess.Popen(
                [
                    "wrk",
                    "-t1",
                    f"-c{n}",
                    f"-d{seconds:g}s",
                    "--timeout",
                    "10s",
                    "-s",
                    script.name,
                    f"{url}/v1/chat/completions",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for url, n in zip(urls, share, strict=True)
        ]
        outputs = [proc.communicate(timeout=seconds + 60)[0] for proc in procs]
    finally:
        os.unlink(script.name)
    results = []
    for output in outputs:
        line = next((x for x in output.splitlines() if x.startswith('{"requests"')), None)
        if line is None:
            raise RuntimeError(f"wrk said:\n{output}")
        results.append(json.loads(line))
    requests = sum(r["requests"] for r in results)
    p50 = sum(r["p50_us"] * r["requests"] for r in results) / max(1, requests) / 1000
    return Load(
        requests=requests,
        errors=sum(r["errors"] for r in results),
        seconds=max(r["us"] for r in results) / 1e6,
        p50_ms=p50,
    )


async def _aiohttp_load(
    urls: Sequence[str], keys: Sequence[str], connections: int, seconds: float
) -> Load:
    import aiohttp

    body = json.dumps(REQUEST).encode()
    headers = {"Content-Type": "application/json"}
    latencies: list[float] = []
    errors = 0
    turn = 0
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        started = time.perf_counter()
        deadline = started + seconds

        async def client() -> None:
            nonlocal errors, turn
            while time.perf_counter() < deadline:
                url = urls[turn % len(urls)]  # round robin, request by request
                auth = {"Authorization": f"Bearer {keys[turn % len(keys)]}"}
                turn += 1
                begin = time.perf_counter()
                try:
                    async with session.post(
                        f"{url}/v1/chat/completions", data=body, headers=auth
                    ) as response:
                        await response.read()
                        ok = response.status == 200
                except aiohttp.ClientError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - begin)
                else:
                    errors += 1

        await asyncio.gather(*(client() for _ in range(connections)))
        elapsed = time.perf_counter() - started
    p50 = statistics.median(latencies) * 1000 if latencies else 0.0
    return Load(len(latencies), errors, elapsed, p50)


def load(
    urls: Sequence[str],
    keys: Sequence[str],
    connections: int,
    seconds: float,
    pids: Sequence[int] = (),
) -> Load:
    busy, total = cpu_times()
    used = process_cpu(pids)
    if shutil.which("wrk"):
        result = wrk_load(urls, keys, connections, seconds)
    else:
        result = asyncio.run(_aiohttp_load(urls, keys, connections, seconds))
    busy_after, total_after = cpu_times()
    result.cpu_busy = (busy_after - busy) / max(1, total_after - total)
    result.gateway_cores = (process_cpu(pids) - used) / result.seconds
    return result


# -- PostgreSQL schemas --------------------------------------------------------------------------
class Schemas:
    """Fresh schema names on ``url``; every one dropped by :meth:`drop_all`."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.names: list[str] = []

    def new(self) -> str:
        name = "gw_bench_" + secrets.token_hex(5)
        self.names.append(name)
        return name

    async def _drop(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.url, timeout=5)
        try:
            for name in self.names:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        finally:
            await conn.close()

    def drop_all(self) -> None:
        if self.names:
            asyncio.run(self._drop())


# -- the HTTP setups ---------------------------------------------------------------------------
@dataclass
class Row:
    label: str
    wallets: int
    loads: list[Load]


def bench_http(args: argparse.Namespace, work: Path, schemas: Schemas) -> list[Row]:
    upstream_port = free_port()
    upstream = Proc(
        "upstream",
        [sys.executable, __file__, "--upstream", str(upstream_port)],
        work,
        dict(os.environ),
    )
    setups: list[tuple[str, str, int, Callable[[], dict[str, Any]]]] = [
        ("1 instance, SQLite", "sqlite", 1, lambda: {"url": f"sqlite:///{work / 'gateway.db'}"}),
        (
            "1 instance, PostgreSQL",
            "pg1",
            1,
            lambda: {"url": args.postgres, "schema": schemas.new()},
        ),
        (
            "2 instances, PostgreSQL, round robin",
            "pg2",
            2,
            lambda: {"url": args.postgres, "schema": schemas.new()},
        ),
    ]
    rows = []
    with running([upstream]):
        upstream.wait_http(f"http://{HOST}:{upstream_port}/", timeout=15)
        for label, name, count, storage in setups:
            config = gateway_config(work / f"{name}.toml", storage(), upstream_port)
            gateways: list[Proc] = []
            with running(gateways):
                urls = []
                for i in range(count):
                    proc, url = start_gateway(f"{name}-{i}", config, work)
                    gateways.append(proc)
                    urls.append(url)
                keys = wallets_and_keys(urls[0], max(args.wallets))
                for wallets in args.wallets:
                    what = f"{label}, {wallets} wallet(s)"
                    log(f"{what}: warm-up")
                    load(urls, keys[:wallets], args.connections, 2)
                    loads = []
                    for run in range(args.runs):
                        time.sleep(1)
                        pids = [g.proc.pid for g in gateways]
                        result = load(urls, keys[:wallets], args.connections, args.duration, pids)
                        log(
                            f"{what}: run {run + 1}: {result.rps:,.0f} requests/s, "
                            f"CPU {result.cpu_busy:.0%} busy, gateways {result.gateway_cores:.2f}"
                        )
                        loads.append(result)
                    rows.append(Row(label, wallets, loads))
    return rows


# -- the ledger --------------------------------------------------------------------------------
@dataclass
class LedgerRun:
    one_median_ms: float
    one_p99_ms: float
    reserve_ms: float
    settle_ms: float
    one_wallet_pairs_s: float  # ``connections`` requests at once on one wallet
    one_wallet_median_ms: float
    many_wallets_pairs_s: float  # the same, each client on a wallet of its own


async def _ledger_run(
    open_store: Callable[[], Awaitable[Any]], pairs: int, connections: int
) -> LedgerRun:
    from gateway.keys import hash_key, new_key_id, new_secret
    from gateway.storage.base import ApiKey, UsageRecord

    store = await open_store()
    try:
        wallets, keys = [], []
        for i in range(connections):
            wallet = await store.create_wallet(f"bench-{i}", 10**15)
            secret = new_secret()
            key = ApiKey(
                new_key_id(), wallet.id, "bench", hash_key(secret), secret[:7], time.time()
            )
            wallets.append(wallet)
            keys.append(await store.create_key(key))

        async def pair(n: int = 0) -> tuple[float, float]:
            wallet, key = wallets[n], keys[n]
            request_id = "req_" + secrets.token_hex(12)
            begin = time.perf_counter()
            held = await store.reserve(
                wallet_id=wallet.id, key_id=key.id, request_id=request_id,
                minimum=100, maximum=40_000, lease_s=900,
            )  # fmt: skip
            reserved = time.perf_counter()
            assert held is not None
            usage = UsageRecord(
                request_id, key.id, wallet.id, MODEL, "up", 40, 10, "ok", time.time(),
                latency_ms=5,
            )  # fmt: skip
            await store.settle(held, usage, 12)
            return reserved - begin, time.perf_counter() - reserved

        for _ in range(min(50, pairs)):  # warm the pool, caches and plans
            await pair()
        one = [await pair() for _ in range(pairs)]
        totals = sorted(r + s for r, s in one)

        per_client = max(1, pairs * 4 // connections)

        async def concurrently(spread: bool) -> tuple[float, list[float]]:
            """(pairs/s, each pair's seconds) with ``connections`` clients at once."""
            times: list[float] = []

            async def client(n: int) -> None:
                for _ in range(per_client):
                    r, s = await pair(n if spread else 0)
                    times.append(r + s)

            started = time.perf_counter()
            await asyncio.gather(*(client(n) for n in range(connections)))
            return len(times) / (time.perf_counter() - started), times

        one_wallet, contended = await concurrently(spread=False)
        many_wallets, _ = await concurrently(spread=True)
        return LedgerRun(
            one_median_ms=statistics.median(totals) * 1000,
            one_p99_ms=totals[int(len(totals) * 0.99) - 1] * 1000,
            reserve_ms=statistics.median(r for r, _ in one) * 1000,
            settle_ms=statistics.median(s for _, s in one) * 1000,
            one_wallet_pairs_s=one_wallet,
            one_wallet_median_ms=statistics.median(contended) * 1000,
            many_wallets_pairs_s=many_wallets,
        )
    finally:
        await store.close()


def bench_ledger(
    args: argparse.Namespace, work: Path, schemas: Schemas
) -> dict[str, list[LedgerRun]]:
    from gateway.storage.postgres.store import PostgresStore
    from gateway.storage.sqlite.store import SQLiteStore

    async def sqlite() -> Any:
        path = work / f"ledger-{secrets.token_hex(4)}.db"
        store = SQLiteStore(str(path))
        await store.open()
        return store

    async def postgres() -> Any:
        store = PostgresStore(args.postgres, pool_size=10, schema=schemas.new())
        await store.open()
        return store

    engines = {"SQLite": sqlite, "PostgreSQL": postgres}
    results: dict[str, list[LedgerRun]] = {name: [] for name in engines}
    for run in range(args.runs):
        for name, open_store in engines.items():
            result = asyncio.run(_ledger_run(open_store, args.pairs, args.connections))
            log(
                f"ledger {name}: run {run + 1}: {result.one_median_ms:.3f} ms a pair, "
                f"{result.one_wallet_pairs_s:,.0f} / {result.many_wallets_pairs_s:,.0f} pairs/s "
                f"at {args.connections} on one / {args.connections} wallets"
            )
            results[name].append(result)
    return results


# -- the report --------------------------------------------------------------------------------
def report(
    args: argparse.Namespace,
    loadavg: tuple[float, float, float],
    rows: list[Row],
    ledger: dict[str, list[LedgerRun]],
) -> str:
    out = [
        f"# Several instances ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        f"{os.cpu_count()} CPUs, load average before the run "
        f"{' '.join(f'{x:.2f}' for x in loadavg)}; median of {args.runs} runs "
        "[min–max].",
    ]
    if rows:
        tool = "wrk" if shutil.which("wrk") else "aiohttp"
        out += [
            "",
            f"Non-streaming chat, {args.connections} concurrent clients ({tool}), "
            f"{args.duration:g} s runs, requests spread over 1 or more wallets (one key each):",
            "",
            "| setup | wallets | requests/s | p50 latency ms | × 1 instance SQLite "
            "| gateway CPU (cores) | machine CPU busy | errors |",
            "|---|---|---|---|---|---|---|---|",
        ]
        base = {r.wallets: statistics.median(x.rps for x in r.loads) for r in rows[::-1]}
        for row in rows:
            rps = [x.rps for x in row.loads]
            errors = sum(x.errors for x in row.loads)
            out.append(
                f"| {row.label} | {row.wallets} | {spread(rps)} "
                f"| {spread([x.p50_ms for x in row.loads], 1)} "
                f"| {statistics.median(rps) / base[row.wallets]:.2f} "
                f"| {statistics.median(x.gateway_cores for x in row.loads):.2f} "
                f"| {statistics.median(x.cpu_busy for x in row.loads):.0%} "
                f"| {errors}{' ⚠' if errors else ''} |"
            )
    if ledger:
        out += [
            "",
            f"Time in the ledger, Store API directly: reserve + settle, one request at a time "
            f"({args.pairs} pairs), then {args.connections} at once on one wallet, and on "
            f"{args.connections} wallets:",
            "",
            "| engine | reserve+settle median ms | p99 ms | reserve ms | settle ms "
            f"| {args.connections} at once, 1 wallet: pairs/s | median ms "
            f"| {args.connections} at once, {args.connections} wallets: pairs/s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, runs in ledger.items():
            out.append(
                f"| {name} | {spread([r.one_median_ms for r in runs], 3)} "
                f"| {spread([r.one_p99_ms for r in runs], 3)} "
                f"| {spread([r.reserve_ms for r in runs], 3)} "
                f"| {spread([r.settle_ms for r in runs], 3)} "
                f"| {spread([r.one_wallet_pairs_s for r in runs])} "
                f"| {spread([r.one_wallet_median_ms for r in runs], 2)} "
                f"| {spread([r.many_wallets_pairs_s for r in runs])} |"
            )
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per HTTP run")
    parser.add_argument("--connections", type=int, default=64, help="concurrent clients")
    parser.add_argument("--pairs", type=int, default=1000, help="ledger pairs one at a time")
    parser.add_argument(
        "--wallets",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[1, 64],
        help="HTTP load over this many wallets, comma-separated setups (default 1,64)",
    )
    parser.add_argument("--only", choices=("http", "ledger"))
    parser.add_argument(
        "--postgres",
        default=os.environ.get(
            "GATEWAY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
        ),
    )
    parser.add_argument("--upstream", type=int, help=argparse.SUPPRESS)  # the upstream process
    args = parser.parse_args(argv)
    if args.upstream is not None:
        serve_upstream(args.upstream)
        return 0

    sys.path.insert(0, str(ROOT / "src"))
    loadavg = os.getloadavg()
    schemas = Schemas(args.postgres)
    with tempfile.TemporaryDirectory(prefix="gw-instances-") as tmp:
        work = Path(tmp)
        try:
            rows = bench_http(args, work, schemas) if args.only != "ledger" else []
            ledger = bench_ledger(args, work, schemas) if args.only != "http" else {}
        finally:
            schemas.drop_all()
    sys.stdout.write(report(args, loadavg, rows, ledger))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
