"""Several gateway processes on one PostgreSQL schema (and one Redis), for real.

Each test gets a schema of its own (``gw_e2e_<random>``), dropped at teardown, so runs on one
server cannot collide; Redis buckets are keyed by key ids, which are random. Without a reachable
PostgreSQL (or Redis, where needed) the tests skip with the reason, except under ``CI=true``,
where they fail. ``GATEWAY_TEST_POSTGRES_URL`` / ``GATEWAY_TEST_REDIS_URL`` override the URLs.

What is shown, through the real processes and their HTTP surface:

- no overdraft across instances: 240 concurrent requests (streamed and not) on one wallet over
  two instances, the wallet running out mid-way; the balance is polled during the run;
- an instance SIGKILLed mid-stream: the OTHER instance releases its reservation once the lease
  has passed, recorded as ``abandoned``, and keeps serving meanwhile;
- keys and credits: a key made through A works on B at once, a credit through A is spendable
  through B at once, a revocation through A is refused by B within the key cache's second;
- rpm limits shared through Redis, and failing open when Redis is down;
- ``gateway serve --workers 2`` on PostgreSQL (and its refusal on SQLite);
- ``gateway migrate`` then ``serve`` with ``migrate_on_start = false``, and that setting on an
  empty schema failing clearly;
- PostgreSQL unreachable (through a TCP proxy the test cuts): ``/readyz`` 503, requests 503
  ``storage_unavailable`` with nothing forwarded, and service again once it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import socket
import subprocess
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis

from e2e.helpers import (
    HELLO,
    HELLO_TOKENS,
    MILLI_ROUTE,
    POSTGRES_URL,
    REACHABLE,
    assert_error,
    assert_error_event,
    parse_sse,
    unreachable,
)
from gateway_proc import (
    ADMIN_TOKEN,
    D,
    GatewayFactory,
    GatewayProcess,
    poll,
    run_cli,
    write_config,
)
from upstream import UpstreamServer, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

REDIS_URL = os.environ.get("GATEWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379")

#: One token costs exactly 0.001 credit, so a few hundred requests drain a wallet of a credit.
ROUTE = MILLI_ROUTE
WORDS = 5  # completion tokens of each scripted answer
REQUEST_COST = Decimal(HELLO_TOKENS + WORDS) / 1000  # 0.013: prompt 8 + completion 5


def _require_redis() -> None:
    if "redis" not in REACHABLE:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
        try:
            client.ping()
            REACHABLE["redis"] = None
        except (redis.RedisError, OSError) as exc:
            REACHABLE["redis"] = f"{type(exc).__name__}: {exc}"
        finally:
            client.close()
    if REACHABLE["redis"] is not None:
        unreachable("redis", REDIS_URL)


# -- fixtures ------------------------------------------------------------------------------------
@pytest.fixture
async def db(pg_schema: str) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection to the test's schema, for what the API does not show."""
    conn = await asyncpg.connect(
        POSTGRES_URL, timeout=5, server_settings={"search_path": f'"{pg_schema}"'}
    )
    yield conn
    await conn.close()


Cluster = Callable[..., tuple[list[GatewayProcess], UpstreamServer]]


@pytest.fixture
def cluster(
    pg_schema: str,
    gateway_factory: GatewayFactory,
    upstream_factory: Callable[[str], UpstreamServer],
) -> Cluster:
    """``cluster(n=2, storage={...}, **sections) -> (gateways, upstream)``: ``n`` gateways on
    the test's schema, serving the model ``m`` from one scripted upstream. They are stopped
    before the schema is dropped (``pg_schema`` is set up first, so torn down last)."""

    def start(
        n: int = 2, storage: dict[str, Any] | None = None, **sections: Any
    ) -> tuple[list[GatewayProcess], UpstreamServer]:
        upstream = upstream_factory("a")
        gateways = []
        for _ in range(n):
            gateway = gateway_factory(
                backends=[{"name": "a", "base_url": upstream.url, "api_key_env": "UPSTREAM_A_KEY"}],
                routes=[ROUTE],
                storage={
                    "url": POSTGRES_URL,
                    "schema": pg_schema,
                    "pool_size": 8,
                    **(storage or {}),
                },
                routing={"failure_threshold": 1000, "cooldown_s": 1},
                **sections,
            )
            gateways.append(gateway)
        return gateways, upstream

    return start


def _client(gateway: GatewayProcess, secret: str | None = None, **kwargs: Any) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {secret or ADMIN_TOKEN}"}
    return httpx.AsyncClient(
        base_url=gateway.url, headers=headers, timeout=30.0, trust_env=False, **kwargs
    )


def _chat_body(*, stream: bool = False, **script: Any) -> dict[str, Any]:
    return {"model": "m", "messages": HELLO, "stream": stream, "max_tokens": 8, "script": script}


def _metric(text: str, name: str) -> float:
    """The sum of a metric's samples in Prometheus text."""
    pattern = re.compile(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+-]+)$", re.MULTILINE)
    return sum(float(value) for value in pattern.findall(text))


# -- no overdraft across instances ---------------------------------------------------------------
async def test_two_instances_one_wallet_never_overdrawn(
    cluster: Cluster, db: asyncpg.Connection
) -> None:
    (a, b), upstream = cluster(2)
    upstream.defaults = {"prompt_tokens": HELLO_TOKENS, "words": WORDS}
    upstream.delay_s = 0.02  # requests overlap

    opening = Decimal("1.3")  # pays for about 100 of the 240 requests
    with a.admin() as admin:
        wallet_id = admin.make_wallet(str(opening))
        _key, secret = admin.make_key(wallet_id)

    lowest: list[Decimal] = []  # balance and available, as both instances saw them mid-run
    done = asyncio.Event()
    in_flight = 0  # requests under way now
    mid_run = 0  # samples taken while some were (the run may be over in a few turns of a
    # loop busy with 240 requests: a count of samples alone proved nothing, and failed once)

    async def watch_api() -> None:  # what the instances answer, alternately
        clients = [_client(a), _client(b)]
        try:
            for turn in itertools.count():
                if done.is_set():
                    return
                wallet = (await clients[turn % 2].get(f"/admin/wallets/{wallet_id}")).json()
                lowest.extend((D(wallet["balance"]), D(wallet["available"])))
                sampled()
                await asyncio.sleep(0.01)
        finally:
            for client in clients:
                await client.aclose()

    async def watch_db() -> None:  # the rows themselves, in micro-credits
        while not done.is_set():
            row = await db.fetchrow(
                "SELECT balance, reserved FROM wallets WHERE id = $1", wallet_id
            )
            assert row is not None
            lowest.extend(
                Decimal(v) / 1_000_000 for v in (row["balance"], row["balance"] - row["reserved"])
            )
            sampled()
            await asyncio.sleep(0.005)

    def sampled() -> None:
        nonlocal mid_run
        mid_run += in_flight > 0

    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    clients = [_client(a, secret, limits=limits), _client(b, secret, limits=limits)]

    async def one(i: int) -> tuple[int, int, str, str]:
        nonlocal in_flight
        in_flight += 1
        try:
            return await request(i)
        finally:
            in_flight -= 1

    async def request(i: int) -> tuple[int, int, str, str]:
        """(instance, status, request id, outcome: ok / cut_off / refused)."""
        client, stream = clients[i % 2], i % 4 >= 2
        body = _chat_body(stream=stream, chunk_delay_s=0.005)
        if not stream:
            response = await client.post("/v1/chat/completions", json=body)
            outcome = {200: "ok", 402: "refused"}.get(response.status_code, response.text)
            if outcome == "refused":
                assert_error(response, 402, "insufficient_quota", "insufficient_quota")
            return i % 2, response.status_code, response.headers["x-request-id"], outcome
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            text = (await response.aread()).decode()
        if response.status_code != 200:
            outcome = "refused" if response.status_code == 402 else text
            if outcome == "refused":
                assert_error(response, 402, "insufficient_quota", "insufficient_quota")
        else:
            events = parse_sse(text)
            errors = [e for e in events if isinstance(e, dict) and "error" in e]
            if errors:
                assert errors == events[-1:], "one error event ends the stream"
                assert_error_event(errors[0], "insufficient_quota", "insufficient_quota")
                outcome = "cut_off"
            else:
                assert events[-1] == "[DONE]", events
                outcome = "ok"
        return i % 2, response.status_code, response.headers["x-request-id"], outcome

    watchers = [asyncio.create_task(watch_api()), asyncio.create_task(watch_db())]
    try:
        results = await asyncio.gather(*(one(i) for i in range(240)))
    finally:
        done.set()
        await asyncio.gather(*watchers)
        for client in clients:
            await client.aclose()

    outcomes = [r[3] for r in results]
    assert set(outcomes) <= {"ok", "cut_off", "refused"}, [o for o in outcomes if len(o) > 8]
    assert outcomes.count("refused") + outcomes.count("cut_off") > 0, "the wallet ran out"
    assert outcomes.count("ok") >= 50, outcomes
    assert {r[0] for r in results if r[3] == "ok"} == {0, 1}, "both instances served"
    assert mid_run >= 2, "the wallet was watched during the run"
    assert min(lowest) >= 0, f"balance or available below zero: {min(lowest)}"

    with b.admin() as admin:
        wallet = admin.idle_wallet(wallet_id, timeout=15)
        usage = admin.usage(wallet_id=wallet_id)
        ledger = admin.ledger(wallet_id)
        admin.assert_books_balance(wallet_id)
    balance = D(wallet["balance"])
    assert D(wallet["reserved"]) == 0, wallet
    assert balance >= 0, wallet
    assert sum(D(e["amount"]) for e in ledger) == balance

    charges = [e for e in ledger if e["kind"] == "charge"]
    charged = {e["request_id"]: -D(e["amount"]) for e in charges}
    assert len(charged) == len(charges), "one charge per request"
    costs = {u["request_id"]: D(u["cost"]) for u in usage if D(u["cost"]) > 0}
    assert charged == costs, "every usage record with a cost has its ledger entry and vice versa"
    assert opening - balance == sum(charged.values(), Decimal(0))

    served = {r[2]: r[3] for r in results if r[1] == 200}
    by_id = {u["request_id"]: u for u in usage}
    for request_id, outcome in served.items():
        assert by_id[request_id]["status"] == outcome, (outcome, by_id[request_id])
        assert D(by_id[request_id]["cost"]) > 0
    for request_id in (r[2] for r in results if r[3] == "refused"):
        assert request_id not in charged
    assert await db.fetchval("SELECT count(*) FROM reservations") == 0


# -- an instance killed mid-stream -------------------------------------------------------------
LEASE_S = 3.0


async def test_killed_instance_reservation_released_by_the_other(cluster: Cluster) -> None:
    (a, b), _upstream = cluster(2, storage={"reservation_lease_s": LEASE_S, "sweep_interval_s": 1})
    with a.admin() as admin:
        wallet_id = admin.make_wallet("10")
        _key, secret = admin.make_key(wallet_id)

    async with _client(a, secret) as on_a, _client(b, secret) as on_b:
        settled = await on_b.post("/v1/chat/completions", json=_chat_body(prompt_tokens=8))
        assert settled.status_code == 200, settled.text
        with b.admin() as admin:
            before = admin.idle_wallet(wallet_id)
        assert D(before["balance"]) == 10 - REQUEST_COST

        started = time.time()
        body = _chat_body(stream=True, words=1000, chunk_delay_s=0.05)
        del body["max_tokens"]
        async with on_a.stream("POST", "/v1/chat/completions", json=body) as response:
            in_flight = response.headers["x-request-id"]
            chunks = 0
            async for line in response.aiter_lines():
                chunks += line.startswith("data: {")
                if chunks == 3:
                    break
            a.kill()
        with b.admin() as admin:
            held = admin.wallet(wallet_id)
        assert D(held["reserved"]) > 0, "the dead instance's reservation is still held"
        assert time.time() < started + LEASE_S, "too slow to see the hold before its lease"

        # the surviving instance serves while the dead one's hold is pending ...
        during = await on_b.post("/v1/chat/completions", json=_chat_body(prompt_tokens=8))
        assert during.status_code == 200, during.text

        # ... and releases it once the lease has passed (sweeping every second)
        with b.admin() as admin:
            idle = poll(
                lambda: admin.wallet(wallet_id),
                lambda w: D(w["reserved"]) == 0,
                timeout=LEASE_S + 10,
                interval=0.1,
                what="the other instance to release the dead one's reservation",
            )
            released = time.time()
            record = admin.usage_record(in_flight)
            after = await on_b.post("/v1/chat/completions", json=_chat_body(prompt_tokens=8))
            assert after.status_code == 200, after.text
            admin.assert_books_balance(wallet_id)
            final = admin.idle_wallet(wallet_id)
    assert released >= started + LEASE_S, "released before its lease ended"
    assert released <= started + LEASE_S + 6, "released long after its lease ended"
    assert record["status"] == "abandoned", record
    assert D(record["cost"]) == 0, record
    assert D(idle["balance"]) == 10 - 2 * REQUEST_COST, "nothing charged for the dead stream"
    assert D(final["balance"]) == 10 - 3 * REQUEST_COST
    poll(  # B's sweeper released it (its log lines go out up to 20 ms late)
        b.output,
        lambda out: "expired_reservations_released" in out,
        timeout=2,
        what="B's sweeper to log the release",
    )


# -- keys and credits across instances ---------------------------------------------------------
async def test_keys_and_credits_made_through_one_instance_hold_on_the_other(
    cluster: Cluster,
) -> None:
    (a, b), _upstream = cluster(2)
    with a.admin() as admin_a:
        wallet_id = admin_a.make_wallet("0")
        key_id, secret = admin_a.make_key(wallet_id)

    async with _client(b, secret) as on_b:
        # a key created through A works on B at once (B never saw it: nothing cached)
        mine = await on_b.get("/v1/wallet")
        assert mine.status_code == 200, mine.text
        assert mine.json()["balance"] == "0"
        refused = await on_b.post("/v1/chat/completions", json=_chat_body(prompt_tokens=8))
        assert_error(refused, 402, "insufficient_quota", "insufficient_quota")

        # a credit through A is visible and spendable through B at once
        with a.admin() as admin_a:
            assert admin_a.credit(wallet_id, "1").status_code == 201
        seen = await on_b.get("/v1/wallet")
        assert seen.json()["balance"] == "1", seen.text
        spent = await on_b.post("/v1/chat/completions", json=_chat_body(prompt_tokens=8))
        assert spent.status_code == 200, spent.text

        # a revocation through A: B, whose cache holds the key (it just served it), refuses it
        # within the key cache's TTL. The bound: B's entry expires 1 s after the moment B began
        # reading it, which was before the revocation committed, so every request B receives
        # 1 s after the revocation reads the key afresh. The last check is at 1.1 s, not 1.0 s,
        # to leave room for scheduling on a loaded machine.
        with a.admin() as admin_a:
            assert admin_a.revoke_key(key_id).status_code == 200
        revoked_at = time.monotonic()
        seen_by_b: list[tuple[float, int]] = []
        while (elapsed := time.monotonic() - revoked_at) < 1.1:
            seen_by_b.append((elapsed, (await on_b.get("/v1/wallet")).status_code))
            await asyncio.sleep(0.02)
        await asyncio.sleep(max(0.0, revoked_at + 1.1 - time.monotonic()))
        final = await on_b.get("/v1/wallet")

    assert final.status_code == 401, final.text
    assert final.json()["error"]["code"] == "invalid_api_key"
    statuses = [status for _, status in seen_by_b]
    assert set(statuses) <= {200, 401}, seen_by_b
    if 401 in statuses:  # once refused, refused for good
        assert 200 not in statuses[statuses.index(401) :], seen_by_b
    with b.admin() as admin_b:
        admin_b.assert_books_balance(wallet_id)
        assert D(admin_b.wallet(wallet_id)["balance"]) == 1 - REQUEST_COST


# -- rate limits shared through Redis ------------------------------------------------------------
async def test_rpm_shared_through_redis(cluster: Cluster) -> None:
    _require_redis()
    # a generous timeout: on a machine busy with other tests a call can take longer than the
    # default 0.25 s, and one slow answer lets the requests of the next second through unlimited
    (a, b), _upstream = cluster(2, ratelimit={"redis_url": REDIS_URL, "timeout_s": 2.0})
    rpm = 6  # one request back every 10 s: none comes back during the test
    with a.admin() as admin:
        wallet_id = admin.make_wallet("10")
        key_id, secret = admin.make_key(wallet_id, rpm=rpm)
        _warm, warm_secret = admin.make_key(wallet_id, name="warm-up", rpm=1000)

    async with (
        _client(a, secret) as on_a,
        _client(b, secret) as on_b,
        _client(a, warm_secret) as warm_a,
        _client(b, warm_secret) as warm_b,
        _client(a) as ops_a,
        _client(b) as ops_b,
    ):
        # connections to Redis opened first, so that none times out in the burst below
        warm = [warm_a, warm_b]
        await asyncio.gather(
            *(warm[i % 2].post("/v1/chat/completions", json=_chat_body()) for i in range(rpm))
        )
        instances = [on_a, on_b]
        burst = await asyncio.gather(
            *(instances[i % 2].post("/v1/chat/completions", json=_chat_body()) for i in range(rpm))
        )
        statuses = [r.status_code for r in burst]
        limited = burst[-1]
        for i in range(rpm):  # then one at a time, until refused
            if statuses[-1] == 429:
                break
            limited = await instances[i % 2].post("/v1/chat/completions", json=_chat_body())
            statuses.append(limited.status_code)
        # ... and refused by the other instance as well
        other = instances[len(statuses) % 2]
        again = await other.post("/v1/chat/completions", json=_chat_body())
        failed_open = sum(
            [
                _metric((await ops.get("/metrics")).text, "gateway_ratelimit_fail_open_total")
                for ops in (ops_a, ops_b)
            ]
        )
    # every request Redis answered for took one unit of the one shared bucket (a request that
    # Redis was too slow for passes uncounted: that is failing open, counted in /metrics)
    assert failed_open <= 1, f"Redis failed {failed_open} times: the limits were not shared"
    assert statuses == [200] * (rpm + int(failed_open)) + [429], statuses
    for refused in (limited, again):
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert 1 <= int(refused.headers["retry-after"]) <= 60 // rpm
    with a.admin() as admin:
        admin.assert_books_balance(wallet_id)
        records = admin.usage(key_id=key_id)
        assert len(records) == rpm + failed_open, "a refused request leaves no usage record"


async def test_redis_down_limits_fail_open(cluster: Cluster) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    (a, b), _upstream = cluster(2, ratelimit={"redis_url": dead})
    with a.admin() as admin:
        wallet_id = admin.make_wallet("10")
        _key, secret = admin.make_key(wallet_id, rpm=2)

    async with _client(a, secret) as on_a, _client(b, secret) as on_b, _client(a) as ops_a:
        for i in range(6):  # three times the rpm, over both instances
            response = await (on_a, on_b)[i % 2].post(
                "/v1/chat/completions", json=_chat_body(prompt_tokens=8)
            )
            assert response.status_code == 200, response.text
        async with _client(b) as ops_b:
            counted = [
                _metric((await ops.get("/metrics")).text, "gateway_ratelimit_fail_open_total")
                for ops in (ops_a, ops_b)
            ]
    assert counted == [3.0, 3.0], counted
    for gateway in (a, b):
        assert "ratelimit_store_unavailable" in gateway.output()
    with a.admin() as admin:
        admin.assert_books_balance(wallet_id)
        assert D(admin.wallet(wallet_id)["balance"]) == 10 - 6 * REQUEST_COST


# -- gateway serve --workers N -------------------------------------------------------------------
def _workers(pid: int) -> list[int]:
    """The worker processes uvicorn's supervisor ``pid`` spawned (not its resource tracker)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    found = []
    for child in map(int, children):
        with contextlib.suppress(FileNotFoundError):
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(FileNotFoundError):  # a zombie is dead
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    return False


async def test_serve_workers_on_postgres(
    pg_schema: str, tmp_path: Path, upstream_factory: Callable[[str], UpstreamServer]
) -> None:
    upstream = upstream_factory("a")
    config = {
        "storage": {"url": POSTGRES_URL, "schema": pg_schema, "pool_size": 4},
        "backends": [{"name": "a", "base_url": upstream.url}],
        "routes": [ROUTE],
    }
    gateway = GatewayProcess(write_config(tmp_path, config), config=config, args=["--workers", "2"])
    gateway.start()
    try:
        workers = poll(
            lambda: _workers(gateway.proc.pid),  # type: ignore[union-attr]
            lambda pids: len(pids) == 2,
            timeout=20,
            what="two worker processes",
        )
        poll(
            gateway.output,
            lambda out: out.count('"gateway_started"') == 2,
            timeout=20,
            what="both workers to start",
        )
        with gateway.admin() as admin:
            wallet_id = admin.make_wallet("10")
            _key, secret = admin.make_key(wallet_id)
        # fresh connections, so the kernel hands them to either worker
        async with _client(gateway, secret, limits=httpx.Limits(max_keepalive_connections=0)) as c:
            answers = await asyncio.gather(
                *(
                    c.post(
                        "/v1/chat/completions", json=_chat_body(stream=i % 2 == 1, prompt_tokens=8)
                    )
                    for i in range(40)
                )
            )
        assert [r.status_code for r in answers] == [200] * 40
        with gateway.admin() as admin:
            admin.assert_books_balance(wallet_id)
            assert D(admin.wallet(wallet_id)["balance"]) == 10 - 40 * REQUEST_COST
    finally:
        code = gateway.stop(timeout=20)
    assert code == 0, gateway.output()[-3000:]
    assert gateway.output().count('"gateway_stopped"') == 2, "both workers shut down cleanly"
    assert not any(_alive(pid) for pid in workers)


def test_serve_workers_refused_on_sqlite(tmp_path: Path) -> None:
    config = {
        "storage": {"url": f"sqlite:///{tmp_path / 'gateway.db'}"},
        "backends": [{"name": "a", "base_url": "http://127.0.0.1:9/v1"}],
        "routes": [ROUTE],
    }
    path = write_config(tmp_path, config)
    done = run_cli(path, "serve", "--workers", "2", "--port", str(free_port()))
    assert done.returncode != 0
    assert '--workers > 1 needs [storage] url = "postgresql://..."' in done.stderr, done.stderr
    assert not (tmp_path / "gateway.db").exists(), "refused before touching storage"


# -- gateway migrate, migrate_on_start = false -----------------------------------------------------
async def test_migrate_then_serve_without_migrating(
    pg_schema: str, tmp_path: Path, upstream_factory: Callable[[str], UpstreamServer]
) -> None:
    upstream = upstream_factory("a")
    config = {
        "storage": {"url": POSTGRES_URL, "schema": pg_schema, "migrate_on_start": False},
        "backends": [{"name": "a", "base_url": upstream.url}],
        "routes": [ROUTE],
    }
    path = write_config(tmp_path, config)
    migrated = run_cli(path, "migrate", "--json")
    assert migrated.returncode == 0, migrated.stderr
    assert json.loads(migrated.stdout) == {"status": "migrated", "storage": "postgresql"}
    again = run_cli(path, "migrate")
    assert again.returncode == 0, again.stderr

    gateway = GatewayProcess(path, config=config).start()
    try:
        with gateway.admin() as admin:
            wallet_id = admin.make_wallet("1")
            _key, secret = admin.make_key(wallet_id)
        async with _client(gateway, secret) as client:
            answer = await client.post("/v1/chat/completions", json=_chat_body(prompt_tokens=8))
            assert answer.status_code == 200, answer.text
        with gateway.admin() as admin:
            admin.assert_books_balance(wallet_id)
    finally:
        assert gateway.stop() == 0


@pytest.mark.parametrize("workers", [1, 2])
async def test_serve_without_migrating_on_an_empty_schema_fails_clearly(
    pg_schema: str, db: asyncpg.Connection, tmp_path: Path, workers: int
) -> None:
    await db.execute(f'CREATE SCHEMA "{pg_schema}"')
    config = {
        "storage": {"url": POSTGRES_URL, "schema": pg_schema, "migrate_on_start": False},
        "backends": [{"name": "a", "base_url": "http://127.0.0.1:9/v1"}],
        "routes": [ROUTE],
    }
    path = write_config(tmp_path, config)
    args = ["serve", "--port", str(free_port()), "--workers", str(workers)]
    try:
        done = run_cli(path, *args, timeout=30)
    except subprocess.TimeoutExpired:  # pragma: no cover - the failure being tested for
        pytest.fail("the gateway served on a schema without tables")
    assert done.returncode == 1, done.stderr[-3000:]
    assert "has no gateway schema: run `gateway migrate`" in done.stderr, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, "one clear line, not a traceback"
    tables = await db.fetchval(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1", pg_schema
    )
    assert tables == 0, "nothing was created"


async def test_serve_with_postgres_down_fails_clearly(tmp_path: Path) -> None:
    config = {
        "storage": {"url": f"postgresql://postgres@127.0.0.1:{free_port()}/test"},
        "backends": [{"name": "a", "base_url": "http://127.0.0.1:9/v1"}],
        "routes": [ROUTE],
    }
    done = run_cli(write_config(tmp_path, config), "serve", "--workers", "2", timeout=30)
    assert done.returncode == 1, done.stderr[-3000:]
    assert done.stderr.startswith("gateway: storage unavailable: cannot connect to PostgreSQL")
    assert "Traceback" not in done.stderr


# -- PostgreSQL unreachable ----------------------------------------------------------------------
class TcpProxy:
    """A loopback TCP relay to ``target`` that a test can cut (every connection reset, the port
    refusing) and restore on the same port: PostgreSQL going away without stopping the server
    other tests share. With ``delay_s``, every read is held ``delay_s / 2`` each way: a server
    whose every answer comes ``delay_s`` late."""

    def __init__(self, target: tuple[str, int], delay_s: float = 0.0) -> None:
        self.target = target
        self.delay_s = delay_s
        self.port = free_port()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None

    def start(self) -> TcpProxy:
        listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets |= {client, server}
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                if self.delay_s:
                    time.sleep(self.delay_s / 2)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):  # wakes the blocked accept(): stop listening
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
                sock.close()  # linger 0: a reset, as when the server dies

    close = cut


async def test_a_slow_redis_is_waited_for_as_long_as_timeout_s_says(cluster: Cluster) -> None:
    """Redis answering 0.4 s late: with the default timeout (0.25 s) the limits fail open; with
    ``[ratelimit] timeout_s = 3`` they hold."""
    _require_redis()
    where = urllib.parse.urlsplit(REDIS_URL)
    proxy = TcpProxy((where.hostname or "127.0.0.1", where.port or 6379), delay_s=0.4).start()
    try:
        slow_redis = f"redis://127.0.0.1:{proxy.port}/0"
        (patient,), _ = cluster(1, ratelimit={"redis_url": slow_redis, "timeout_s": 3.0})
        (hasty,), _ = cluster(1, ratelimit={"redis_url": slow_redis})
        with patient.admin() as admin:
            wallet_id = admin.make_wallet("10")
            _, patient_secret = admin.make_key(wallet_id, rpm=2)
            _, hasty_secret = admin.make_key(wallet_id, rpm=2)
        for gateway, secret, statuses, failed_open in (
            (patient, patient_secret, [200, 200, 429], 0.0),
            (hasty, hasty_secret, [200, 200, 200], 3.0),
        ):
            async with _client(gateway, secret) as client, _client(gateway) as ops:
                seen = [
                    (await client.post("/v1/chat/completions", json=_chat_body())).status_code
                    for _ in range(3)
                ]
                metrics = (await ops.get("/metrics")).text
            assert seen == statuses, (gateway, seen)
            assert _metric(metrics, "gateway_ratelimit_fail_open_total") == failed_open
    finally:
        proxy.close()


async def test_postgres_unreachable_refuses_and_recovers(
    pg_schema: str,
    gateway_factory: GatewayFactory,
    upstream_factory: Callable[[str], UpstreamServer],
) -> None:
    """PostgreSQL gone: /readyz 503, requests 503 storage_unavailable and nothing reaches the
    upstream (nothing is served free); back: the same process serves again."""
    target = urllib.parse.urlsplit(POSTGRES_URL)
    proxy = TcpProxy((target.hostname or "127.0.0.1", target.port or 5432)).start()
    userinfo = target.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@127.0.0.1:{proxy.port}" if userinfo else f"127.0.0.1:{proxy.port}"
    proxied = urllib.parse.urlunsplit(target._replace(netloc=netloc))
    upstream = upstream_factory("a")
    try:
        gateway = gateway_factory(
            backends=[{"name": "a", "base_url": upstream.url, "api_key_env": "UPSTREAM_A_KEY"}],
            routes=[ROUTE],
            storage={"url": proxied, "schema": pg_schema, "pool_size": 4},
        )
        with gateway.admin() as admin:
            wallet_id = admin.make_wallet("10")
            _key, secret = admin.make_key(wallet_id)
        async with _client(gateway, secret) as client, _client(gateway) as ops:
            assert (await client.post("/v1/chat/completions", json=_chat_body())).status_code == 200
            served = len(upstream.requests)

            proxy.cut()
            assert (await ops.get("/readyz")).status_code == 503
            assert (await ops.get("/healthz")).status_code == 200
            for body in (_chat_body(), _chat_body(stream=True)):
                refused = await client.post("/v1/chat/completions", json=body)
                assert refused.status_code == 503, refused.text
                assert refused.json()["error"]["code"] == "storage_unavailable"
            await asyncio.sleep(1.1)  # past the key cache: the key lookup fails too
            refused = await client.post("/v1/chat/completions", json=_chat_body())
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "storage_unavailable"
            assert len(upstream.requests) == served, "nothing forwarded without the ledger"

            proxy.start()
            ready = await ops.get("/readyz")
            assert ready.status_code == 200, ready.text
            again = await client.post("/v1/chat/completions", json=_chat_body(prompt_tokens=8))
            assert again.status_code == 200, again.text
        with gateway.admin() as admin:
            admin.assert_books_balance(wallet_id)
    finally:
        proxy.close()
