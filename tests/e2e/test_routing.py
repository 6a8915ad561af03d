"""Routing by model and price: the cheapest route for the request first, the next one on a
connection error, timeout, 5xx or 429 before anything was sent, and a circuit breaker that skips
a backend that keeps failing until its cool-down is over."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Iterator
from decimal import Decimal

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionChunk

from e2e.helpers import HELLO, HELLO_TOKENS, chat, chat_stream, read_sse, text_of
from gateway_proc import Admin, GatewayFactory, GatewayProcess
from upstream import DEFAULT_PROMPT_TOKENS, DEFAULT_WORDS, UpstreamServer, answer_text, free_port

pytestmark = pytest.mark.e2e


class Suppliers:
    """Upstreams behind backends a, b and slow (the ``dead`` backend has nothing listening)."""

    def __init__(self) -> None:
        self.a = UpstreamServer("a").start()
        self.b = UpstreamServer("b").start()
        self.slow = UpstreamServer("slow").start()

    def reset(self) -> None:
        for server in (self.a, self.b, self.slow):
            server.reset()

    def stop(self) -> None:
        for server in (self.a, self.b, self.slow):
            server.stop()


@pytest.fixture(scope="module")
def suppliers() -> Iterator[Suppliers]:
    servers = Suppliers()
    yield servers
    servers.stop()


def backends(servers: Suppliers) -> list[dict[str, object]]:
    return [
        {"name": "a", "base_url": servers.a.url, "api_key_env": "UPSTREAM_A_KEY"},
        {"name": "b", "base_url": servers.b.url, "api_key_env": "UPSTREAM_B_KEY"},
        {"name": "dead", "base_url": f"http://127.0.0.1:{free_port()}/v1"},
        {"name": "slow", "base_url": servers.slow.url, "timeout_s": 0.5},
    ]


ROUTES: list[dict[str, object]] = [
    {"model": "m", "backend": "a", "input_price": "1", "output_price": "2"},
    {"model": "m", "backend": "b", "input_price": "3", "output_price": "4"},
    # declared dearest first: the order in the file does not matter, the price does
    {"model": "m-reversed", "backend": "b", "input_price": "3", "output_price": "4"},
    {"model": "m-reversed", "backend": "a", "input_price": "1", "output_price": "2"},
    # a is cheap on output, b on input: which is cheaper depends on the request
    {"model": "mix", "backend": "a", "input_price": "1", "output_price": "10"},
    {"model": "mix", "backend": "b", "input_price": "5", "output_price": "1"},
    {"model": "m-refused", "backend": "dead", "input_price": "0.5", "output_price": "0.5"},
    {"model": "m-refused", "backend": "b", "input_price": "3", "output_price": "4"},
    {"model": "m-timeout", "backend": "slow", "input_price": "0.5", "output_price": "0.5"},
    {"model": "m-timeout", "backend": "b", "input_price": "3", "output_price": "4"},
]


@pytest.fixture(scope="module")
def routed(
    suppliers: Suppliers, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """A gateway over a, b, dead and slow whose breaker never opens in these tests."""
    factory = GatewayFactory(tmp_path_factory.mktemp("routing"))
    try:
        yield factory(
            backends=backends(suppliers),
            routes=ROUTES,
            routing={"failure_threshold": 1000, "cooldown_s": 30},
        )
    finally:
        factory.close()


@pytest.fixture
def servers(suppliers: Suppliers) -> Iterator[Suppliers]:
    suppliers.reset()
    yield suppliers
    suppliers.reset()


@pytest.fixture(scope="module")
def routed_admin(routed: GatewayProcess) -> Iterator[Admin]:
    with routed.admin() as api:
        yield api


@pytest.fixture
async def account(
    routed: GatewayProcess, routed_admin: Admin
) -> AsyncIterator[tuple[str, openai.AsyncOpenAI]]:
    wallet_id = routed_admin.make_wallet("10")
    _key_id, secret = routed_admin.make_key(wallet_id)
    async with openai.AsyncOpenAI(
        base_url=f"{routed.url}/v1", api_key=secret, max_retries=0, timeout=30.0
    ) as client:
        yield wallet_id, client


Account = tuple[str, openai.AsyncOpenAI]


# -- the cheapest route ------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["m", "m-reversed"])
async def test_the_cheapest_route_serves(
    routed: GatewayProcess, routed_admin: Admin, servers: Suppliers, account: Account, model: str
) -> None:
    wallet_id, client = account
    answer, request_id = await chat(client, model)
    assert answer.choices[0].message.content == answer_text(DEFAULT_WORDS)
    assert len(servers.a.requests) == 1
    assert servers.b.requests == []
    assert servers.a.last.headers["Authorization"] == "Bearer sk-upstream-a"
    routed_admin.assert_charged(
        routed,
        wallet_id,
        request_id,
        model=model,
        backend="a",
        prompt=DEFAULT_PROMPT_TOKENS,
        completion=DEFAULT_WORDS,
    )


async def test_the_cheapest_route_depends_on_the_request(
    routed: GatewayProcess, routed_admin: Admin, servers: Suppliers, account: Account
) -> None:
    """For HELLO (8 prompt tokens): max_tokens 1 costs 18 on a and 41 on b; max_tokens 100
    costs 1008 on a and 140 on b."""
    wallet_id, client = account
    script = {"prompt_tokens": HELLO_TOKENS, "words": 1}
    _answer, short_id = await chat(client, "mix", script=script, max_tokens=1)
    _answer, long_id = await chat(client, "mix", script=script, max_tokens=100)
    assert routed_admin.usage_record(short_id)["backend"] == "a"
    assert routed_admin.usage_record(long_id)["backend"] == "b"
    routed_admin.assert_charged(
        routed, wallet_id, long_id, model="mix", backend="b", prompt=HELLO_TOKENS, completion=1
    )


# -- failover before anything was sent ---------------------------------------------------------
@pytest.mark.parametrize("status", [500, 502, 503, 429])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_an_upstream_error_fails_over_to_the_next_route(
    routed: GatewayProcess,
    routed_admin: Admin,
    servers: Suppliers,
    account: Account,
    status: int,
    stream: bool,
) -> None:
    wallet_id, client = account
    servers.a.fail_next, servers.a.fail_status, servers.a.retry_after = 1, status, 1
    script = {"words": 5, "completion_tokens": 5}
    if stream:
        chunks, request_id = await chat_stream(client, "m", script=script)
        assert text_of(chunks) == answer_text(5)
    else:
        answer, request_id = await chat(client, "m", script=script)
        assert answer.choices[0].message.content == answer_text(5)
    assert len(servers.a.requests) == 1
    assert len(servers.b.requests) == 1
    assert servers.b.last.headers["Authorization"] == "Bearer sk-upstream-b"
    routed_admin.assert_charged(
        routed,
        wallet_id,
        request_id,
        model="m",
        backend="b",  # charged at the prices of the route that served
        prompt=DEFAULT_PROMPT_TOKENS,
        completion=5,
    )
    routed_admin.assert_books_balance(wallet_id)


@pytest.mark.parametrize("status", [400, 422])
async def test_a_client_error_from_the_upstream_is_not_failed_over(
    routed_admin: Admin, servers: Suppliers, account: Account, status: int
) -> None:
    """Only connection errors, timeouts, 5xx and 429 move on: a 4xx is the request's own fault
    and would fail the same everywhere. The client gets it; nothing is charged."""
    wallet_id, client = account
    with pytest.raises(openai.APIStatusError) as caught:
        await chat(client, "m", script={"status": status})
    assert caught.value.status_code == status
    assert len(servers.a.requests) == 1
    assert servers.b.requests == []
    wallet = routed_admin.assert_books_balance(wallet_id)
    assert Decimal(wallet["balance"]) == 10


async def test_a_refused_connection_fails_over(
    routed: GatewayProcess, routed_admin: Admin, servers: Suppliers, account: Account
) -> None:
    wallet_id, client = account
    chunks, request_id = await chat_stream(client, "m-refused")
    assert text_of(chunks) == answer_text(DEFAULT_WORDS)
    assert len(servers.b.requests) == 1
    assert routed_admin.usage_record(request_id)["backend"] == "b"
    routed_admin.assert_books_balance(wallet_id)


async def test_a_timeout_fails_over(
    routed: GatewayProcess, routed_admin: Admin, servers: Suppliers, account: Account
) -> None:
    wallet_id, client = account
    servers.slow.delay_s = 3  # the "slow" backend's timeout_s is 0.5
    answer, request_id = await chat(client, "m-timeout")
    assert answer.choices[0].message.content == answer_text(DEFAULT_WORDS)
    assert len(servers.slow.requests) == 1
    assert len(servers.b.requests) == 1
    assert routed_admin.usage_record(request_id)["backend"] == "b"
    routed_admin.assert_books_balance(wallet_id)


async def test_every_route_failing_is_a_502_and_charges_nothing(
    routed: GatewayProcess, routed_admin: Admin, servers: Suppliers, account: Account
) -> None:
    wallet_id, client = account
    servers.a.status = servers.b.status = 500
    for call in (chat, chat_stream):
        with pytest.raises(openai.APIStatusError) as caught:
            await call(client, "m")
        assert caught.value.status_code == 502
        assert caught.value.type == "api_error"
    assert len(servers.a.requests) == len(servers.b.requests) == 2
    wallet = routed_admin.assert_books_balance(wallet_id)
    assert Decimal(wallet["balance"]) == 10


async def test_no_failover_once_the_stream_has_started(
    routed: GatewayProcess, routed_admin: Admin, servers: Suppliers, account: Account
) -> None:
    """The upstream drops the connection after 3 words: the client has them already, so the
    gateway ends the stream with an error event instead of trying b, and charges the 3 words."""
    wallet_id, client = account
    raw = await client.chat.completions.with_raw_response.create(
        model="m",
        messages=HELLO,  # type: ignore[arg-type]
        stream=True,
        extra_body={"script": {"words": 10, "drop_after": 3}},
    )
    received: list[ChatCompletionChunk] = []

    async def consume() -> None:
        async for chunk in raw.parse():
            received.append(chunk)

    with pytest.raises(openai.APIError):
        await consume()
    assert text_of(received) == answer_text(3)
    assert servers.b.requests == []
    record = routed_admin.usage_record(raw.headers["x-request-id"])
    assert record["status"] != "ok"
    routed_admin.assert_charged(
        routed,
        wallet_id,
        raw.headers["x-request-id"],
        model="m",
        backend="a",
        prompt=HELLO_TOKENS,
        completion=3,
        status=None,
    )
    routed_admin.assert_books_balance(wallet_id)


async def test_the_error_after_the_start_is_an_sse_error_event(
    routed: GatewayProcess, routed_admin: Admin, servers: Suppliers
) -> None:
    wallet_id = routed_admin.make_wallet("10")
    _key, secret = routed_admin.make_key(wallet_id)
    body = {"model": "m", "messages": HELLO, "stream": True, "script": {"drop_after": 2}}
    async with (
        httpx.AsyncClient(base_url=routed.url, trust_env=False) as http,
        http.stream(
            "POST",
            "/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {secret}"},
        ) as response,
    ):
        assert response.status_code == 200
        events = await read_sse(response)
    errors = [e for e in events if isinstance(e, dict) and "error" in e]
    assert len(errors) == 1, events
    error = errors[0]["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert error["type"] == "api_error"
    assert isinstance(error["message"], str)
    assert error["message"]


# -- the circuit breaker -----------------------------------------------------------------------
async def test_a_failing_backend_is_skipped_then_probed_after_the_cooldown(
    gateway_factory: GatewayFactory,
    upstream_factory: Callable[[str], UpstreamServer],
) -> None:
    a, b = upstream_factory("a"), upstream_factory("b")
    gateway = gateway_factory(
        backends=[
            {"name": "a", "base_url": a.url, "api_key_env": "UPSTREAM_A_KEY"},
            {"name": "b", "base_url": b.url, "api_key_env": "UPSTREAM_B_KEY"},
        ],
        routes=ROUTES[:2],
        routing={"failure_threshold": 2, "cooldown_s": 1},
    )
    with gateway.admin() as admin:
        wallet_id = admin.make_wallet("10")
        _key, secret = admin.make_key(wallet_id)
        async with openai.AsyncOpenAI(
            base_url=f"{gateway.url}/v1", api_key=secret, max_retries=0
        ) as client:
            a.status = 500
            for _ in range(2):  # two consecutive failures open a's circuit
                await chat(client, "m")
            assert len(a.requests) == 2
            for _ in range(3):  # skipped while open: b serves without a being tried
                _answer, request_id = await chat(client, "m")
                assert admin.usage_record(request_id)["backend"] == "b"
            assert len(a.requests) == 2
            assert len(b.requests) == 5
            assert (
                'gateway_backend_circuit_open{backend="a"} 1.0' in admin.http.get("/metrics").text
            )

            a.status = None
            await asyncio.sleep(1.2)  # the cool-down (1 s) is over: a is probed again
            _answer, request_id = await chat(client, "m")
            assert len(a.requests) == 3
            assert admin.usage_record(request_id)["backend"] == "a"
            _answer, request_id = await chat(client, "m")
            assert admin.usage_record(request_id)["backend"] == "a"
            assert (
                'gateway_backend_circuit_open{backend="a"} 0.0' in admin.http.get("/metrics").text
            )
        admin.assert_books_balance(wallet_id)
    logs = gateway.output()
    assert re.search(r"circuit|breaker", logs, re.IGNORECASE), "the breaker's state is logged"
