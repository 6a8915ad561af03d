"""Kill -9 soak: mixed traffic against the real gateway while it is SIGKILLed and restarted.

    python -m tests.soak --kills 12 --requests 400        # from the repository root
    python tests/soak.py --kills 12 --requests 400 --concurrency 16 --seed 7

A scripted upstream serves model ``m`` (and ``costly``, where one token costs 0.001 credit).
Several wallets, each with a key, send a few hundred requests — chat and legacy completions,
streamed and not, with and without upstream usage, several at a time — while the gateway is
killed with SIGKILL at random moments (chosen by request count, then a random delay so that
requests are in flight) and restarted on the same database. A small wallet on ``costly`` runs
out mid-way, so cut-offs and 402s are part of the mix.

Afterwards, with the gateway up again, it checks:

- no wallet's balance is negative, nothing is reserved, every wallet's ledger sums to its
  balance and chains through ``balance_after``, charges equal the usage records' costs;
- every answer the client received completely (a stream that ended with ``[DONE]``, a plain
  200 with its body) has its usage record, by ``x-request-id``, with status ``ok``, the tokens
  the upstream reported (or the gateway's count where it reported none) and the price of them;
- the money adds up across wallets: what they were given minus what they hold is what the
  usage records cost.

:func:`run_soak` returns a :class:`SoakReport` (``report.problems`` empty when all holds); the
command prints it and exits 1 on any problem. ``tests/e2e/test_soak.py`` runs a short form.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:  # run as ``python -m tests.soak`` or ``python tests/soak.py``
    sys.path.insert(0, str(_HERE))

import httpx  # noqa: E402

from gateway_proc import D, GatewayFactory, GatewayProcess, expected_cost  # noqa: E402
from upstream import UpstreamServer  # noqa: E402

__all__ = ["SoakReport", "main", "run_soak"]

ROUTES: list[dict[str, Any]] = [
    {
        "model": "m",
        "backend": "a",
        "input_price": "1",
        "output_price": "2",
        "tokenizer": "o200k_base",
    },
    {
        "model": "costly",
        "backend": "a",
        "input_price": "1000",
        "output_price": "1000",
        "tokenizer": "o200k_base",
    },
]
HELLO = [{"role": "user", "content": "hello"}]
#: Prompt tokens the gateway counts for HELLO (chat, OpenAI's recipe) and "hello" (completions).
COUNTED_PROMPT = {"chat": 8, "completions": 1}
REPORTED_PROMPT = 10  # the scripted upstream's default prompt_tokens
RICH_BALANCE = Decimal("50")
POOR_BALANCE = Decimal("0.2")  # ~200 tokens on "costly"
TOP_UP = Decimal("0.1")  # credited to the poor wallet ...
TOP_UP_EVERY = 25  # ... every this many requests


@dataclass
class Outcome:
    """One request as the client saw it."""

    index: int
    wallet_id: str
    endpoint: str  # "chat" / "completions"
    model: str
    stream: bool
    words: int
    usage: bool  # the upstream reports usage
    request_id: str | None = None
    status: int | None = None
    complete: bool = False  # the whole answer arrived
    received: int = 0  # words (one token each) the client received
    cut_off: bool = False  # a stream ended by the gateway's insufficient_quota event
    error: str | None = None  # what went wrong on the client's side


@dataclass
class SoakReport:
    requests: int = 0
    seed: int = 0
    kills: int = 0
    restarts: int = 0
    top_ups: int = 0
    wallets: int = 0
    seconds: float = 0.0
    outcomes: Counter[str] = field(default_factory=Counter)
    usage_statuses: Counter[str] = field(default_factory=Counter)
    checked_answers: int = 0
    charged: Decimal = Decimal(0)
    problems: list[str] = field(default_factory=list)
    directory: str = ""

    def render(self) -> str:
        lines = [
            f"soak: {self.requests} requests, {self.kills} SIGKILLs, {self.restarts} restarts, "
            f"{self.wallets} wallets, {self.top_ups} idempotent top-ups, {self.seconds:.1f} s, "
            f"seed {self.seed}",
            "  client outcomes: " + ", ".join(f"{k}={v}" for k, v in sorted(self.outcomes.items())),
            "  usage records:   "
            + ", ".join(f"{k}={v}" for k, v in sorted(self.usage_statuses.items())),
            f"  complete answers checked against their usage record: {self.checked_answers}",
            f"  credits charged: {self.charged}",
        ]
        if self.problems:
            lines.append(f"  PROBLEMS ({len(self.problems)}):")
            lines += [f"    - {p}" for p in self.problems[:50]]
        else:
            lines.append("  no problem found")
        if self.directory:
            lines.append(f"  gateway files: {self.directory}")
        return "\n".join(lines)


class _Soak:
    def __init__(
        self, *, requests: int, kills: int, concurrency: int, seed: int, directory: Path
    ) -> None:
        self.total = requests
        self.kills_wanted = kills
        self.concurrency = concurrency
        self.rng = random.Random(seed)
        self.directory = directory
        self.report = SoakReport(requests=requests)
        self.up = asyncio.Event()
        self.progress = asyncio.Event()  # set whenever a request starts
        self.started = 0
        self.top_ups = 0
        self.outcomes: list[Outcome] = []
        # kill when this many requests have started (distinct points, spread over the run)
        points = self.rng.sample(range(max(2, requests // 20), requests), kills) if kills else []
        self.kill_points = sorted(points)

    # -- set-up ------------------------------------------------------------------------------
    def setup(self, upstream: UpstreamServer) -> GatewayProcess:
        factory = GatewayFactory(self.directory)
        self.factory = factory
        gateway = factory(
            backends=[{"name": "a", "base_url": upstream.url, "api_key_env": "UPSTREAM_A_KEY"}],
            routes=ROUTES,
            routing={"failure_threshold": 1000, "cooldown_s": 1},
        )
        wallets = max(4, self.total // 250 + 1)
        self.report.wallets = wallets
        self.keys: list[tuple[str, str, str]] = []  # (wallet id, secret, model)
        self.given: dict[str, Decimal] = {}
        with gateway.admin() as admin:
            for i in range(wallets):
                poor = i == 0
                balance = POOR_BALANCE if poor else RICH_BALANCE
                wallet_id = admin.make_wallet(str(balance), name=f"soak-{i}")
                _key, secret = admin.make_key(wallet_id, name=f"soak-key-{i}")
                self.keys.append((wallet_id, secret, "costly" if poor else "m"))
                self.given[wallet_id] = balance
        return gateway

    # -- traffic -----------------------------------------------------------------------------
    def next_request(self) -> tuple[Outcome, dict[str, Any]] | None:
        if self.started >= self.total:
            return None
        index = self.started
        self.started += 1
        self.progress.set()
        wallet_id, secret, model = self.rng.choice(self.keys)
        endpoint = self.rng.choice(["chat", "chat", "chat", "completions"])
        stream = self.rng.random() < 0.6
        # long answers on the poor wallet, so that it runs dry mid-stream
        words = self.rng.randint(1, 40) if model == "m" else self.rng.randint(20, 300)
        usage = self.rng.random() < 0.75
        # A real upstream honours max_tokens (when a wallet pays for fewer words, fewer come);
        # half the streams ignore it, so that the gateway has to cut them off.
        ignore = stream and self.rng.random() < 0.5
        script: dict[str, Any] = {"words": words, "usage": usage, "ignore_max_tokens": ignore}
        if stream:
            script["chunk_delay_s"] = self.rng.choice([0, 0.002, 0.01])
        body: dict[str, Any] = {"model": model, "stream": stream, "script": script}
        if endpoint == "chat":
            body["messages"] = HELLO
        else:
            body["prompt"] = "hello"
        if stream and self.rng.random() < 0.5:
            body["stream_options"] = {"include_usage": True}
        outcome = Outcome(index, wallet_id, endpoint, model, stream, words, usage)
        self.outcomes.append(outcome)
        return outcome, {"body": body, "secret": secret}

    async def worker(self, gateway: GatewayProcess) -> None:
        async with httpx.AsyncClient(timeout=30, trust_env=False) as http:
            while True:
                await self.up.wait()
                job = self.next_request()
                if job is None:
                    return
                outcome, spec = job
                await self.send(http, gateway, outcome, spec)

    async def send(
        self,
        http: httpx.AsyncClient,
        gateway: GatewayProcess,
        outcome: Outcome,
        spec: dict[str, Any],
    ) -> None:
        path = "/v1/chat/completions" if outcome.endpoint == "chat" else "/v1/completions"
        headers = {"Authorization": f"Bearer {spec['secret']}"}
        try:
            async with http.stream(
                "POST", gateway.url + path, json=spec["body"], headers=headers
            ) as response:
                outcome.status = response.status_code
                outcome.request_id = response.headers.get("x-request-id")
                raw = b"".join([chunk async for chunk in response.aiter_bytes()])
        except httpx.HTTPError as exc:
            outcome.error = type(exc).__name__
            return
        if outcome.status != 200:
            return
        if not outcome.stream:
            try:
                answer = httpx.Response(200, content=raw).json()
            except ValueError:
                outcome.error = "unreadable body"
                return
            outcome.complete = bool(answer.get("choices"))
            for choice in answer.get("choices") or []:
                text = (choice.get("message") or {}).get("content") or choice.get("text") or ""
                outcome.received += text.count("hello")
            return
        events = _data_lines(raw)
        errors = [e for e in events if e.startswith('{"error"')]
        outcome.cut_off = any("insufficient_quota" in e for e in errors)
        outcome.complete = bool(events) and events[-1] == "[DONE]" and not errors
        outcome.received = sum(e.count("hello") for e in events if e.startswith("{"))

    async def killer(self, gateway: GatewayProcess) -> None:
        for point in self.kill_points:
            while self.started < point:
                self.progress.clear()
                await self.progress.wait()
            await asyncio.sleep(self.rng.uniform(0, 0.25))  # land among requests in flight
            self.up.clear()
            await asyncio.to_thread(gateway.kill)
            self.report.kills += 1
            await asyncio.sleep(self.rng.uniform(0, 0.2))
            await asyncio.to_thread(gateway.start)
            self.report.restarts += 1
            self.up.set()

    async def topper(self, gateway: GatewayProcess) -> None:
        """Credit the poor wallet every TOP_UP_EVERY requests, with an idempotency key, retried
        (through kills) until the gateway answers: each top-up must land exactly once."""
        wallet_id = self.keys[0][0]
        headers = {"Authorization": f"Bearer {gateway.admin_token}"}
        async with httpx.AsyncClient(timeout=10, trust_env=False, headers=headers) as http:
            while self.started < self.total:
                if self.started < (self.top_ups + 1) * TOP_UP_EVERY:
                    self.progress.clear()
                    await self.progress.wait()
                    continue
                body = {"amount": str(TOP_UP), "idempotency_key": f"top-up-{self.top_ups}"}
                while True:
                    await self.up.wait()
                    try:
                        response = await http.post(
                            f"{gateway.url}/admin/wallets/{wallet_id}/credits", json=body
                        )
                    except httpx.HTTPError:
                        await asyncio.sleep(0.05)
                        continue
                    if response.status_code in (200, 201):
                        break
                    self.report.problems.append(f"top-up answered {response.status_code}")
                    return
                self.top_ups += 1
                self.given[wallet_id] += TOP_UP

    async def run(self, gateway: GatewayProcess) -> None:
        self.up.set()
        workers = [asyncio.create_task(self.worker(gateway)) for _ in range(self.concurrency)]
        killer = asyncio.create_task(self.killer(gateway))
        topper = asyncio.create_task(self.topper(gateway))
        await killer
        await asyncio.gather(*workers)
        self.progress.set()
        await topper

    # -- checks ------------------------------------------------------------------------------
    def check(self, gateway: GatewayProcess) -> None:
        report = self.report
        for outcome in self.outcomes:
            if outcome.complete:
                report.outcomes["complete"] += 1
            elif outcome.cut_off:
                report.outcomes["cut_off"] += 1
            elif outcome.status is not None and outcome.status != 200:
                report.outcomes[f"http_{outcome.status}"] += 1
            elif outcome.error is not None:
                report.outcomes[f"broken:{outcome.error}"] += 1
            else:
                report.outcomes["incomplete"] += 1
        with gateway.admin() as admin:
            records: dict[str, dict[str, Any]] = {}
            for wallet_id, given in self.given.items():
                try:
                    wallet = admin.assert_books_balance(wallet_id)
                except AssertionError as exc:
                    report.problems.append(f"wallet {wallet_id}: {exc}")
                    continue
                if D(wallet["balance"]) < 0:
                    report.problems.append(f"wallet {wallet_id} is negative: {wallet}")
                credits = [e for e in admin.ledger(wallet_id) if e["kind"] == "credit"]
                if sum((D(e["amount"]) for e in credits), Decimal(0)) != given:
                    report.problems.append(
                        f"wallet {wallet_id}: credited {[e['amount'] for e in credits]}, "
                        f"given {given} ({self.top_ups} top-ups, each exactly once)"
                    )
                usage = admin.usage(wallet_id=wallet_id, limit=1000)
                if len(usage) >= 1000:
                    report.problems.append(f"wallet {wallet_id}: over 1000 usage records")
                costs = sum((D(u["cost"]) for u in usage), Decimal(0))
                if given - D(wallet["balance"]) != costs:
                    report.problems.append(
                        f"wallet {wallet_id}: given {given}, holds {wallet['balance']}, "
                        f"but its usage cost {costs}"
                    )
                report.charged += costs
                for record in usage:
                    records[record["request_id"]] = record
                    report.usage_statuses[record["status"]] += 1
        for outcome in self.outcomes:
            if outcome.complete:
                self._check_answer(gateway, outcome, records.get(outcome.request_id or ""))

    def _check_answer(
        self, gateway: GatewayProcess, outcome: Outcome, record: dict[str, Any] | None
    ) -> None:
        what = f"request #{outcome.index} ({outcome.request_id}, {outcome.endpoint}, " + (
            "stream)" if outcome.stream else "plain)"
        )
        if record is None:
            self.report.problems.append(f"{what}: answered in full but has no usage record")
            return
        self.report.checked_answers += 1
        prompt = REPORTED_PROMPT if outcome.usage else COUNTED_PROMPT[outcome.endpoint]
        expected = (prompt, outcome.received)  # the client pays for what it was sent
        got = (record["prompt_tokens"], record["completion_tokens"])
        cost = expected_cost(gateway.route(outcome.model), prompt, outcome.received)
        billed = D(record["cost"]) + D(record["shortfall"])  # shortfall: the wallet ran dry
        if record["status"] != "ok" or got != expected or billed != cost:
            self.report.problems.append(
                f"{what}: usage record {record['status']} tokens {got} cost {record['cost']} "
                f"shortfall {record['shortfall']}, expected ok {expected} {cost}"
            )


def _data_lines(raw: bytes) -> list[str]:
    out = []
    for block in raw.decode("utf-8", "replace").replace("\r\n", "\n").split("\n\n"):
        data = [line[5:].lstrip() for line in block.split("\n") if line.startswith("data:")]
        if data:
            out.append("\n".join(data))
    return out


def run_soak(
    *,
    requests: int = 400,
    kills: int = 12,
    concurrency: int = 12,
    seed: int | None = None,
    directory: Path | None = None,
) -> SoakReport:
    """Run the soak; the report's ``problems`` list what did not hold (empty: all did)."""
    if kills >= requests:
        raise ValueError("need more requests than kills")
    seed = random.randrange(1 << 30) if seed is None else seed
    owned = directory is None
    home = Path(tempfile.mkdtemp(prefix="gateway-soak-")) if directory is None else directory
    soak = _Soak(requests=requests, kills=kills, concurrency=concurrency, seed=seed, directory=home)
    started = time.monotonic()
    with UpstreamServer("soak") as upstream:
        gateway = soak.setup(upstream)
        try:
            asyncio.run(soak.run(gateway))
            if not gateway.running:
                gateway.start()
            soak.check(gateway)
        finally:
            soak.factory.close()
    soak.report.seconds = time.monotonic() - started
    if soak.report.problems or not owned:
        soak.report.directory = str(home)
    else:
        shutil.rmtree(home, ignore_errors=True)
    soak.report.seed = seed
    soak.report.top_ups = soak.top_ups
    return soak.report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--kills", type=int, default=12)
    parser.add_argument("--concurrency", type=int, default=12)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    report = run_soak(
        requests=args.requests, kills=args.kills, concurrency=args.concurrency, seed=args.seed
    )
    print(report.render())
    return 1 if report.problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
