"""Shared fixtures: the scripted upstream, the real gateway as a process, admin helpers and
openai clients pointed at the gateway.

One session-wide gateway (``gateway``) serves the tests that do not disturb each other: it
routes every model of :data:`SHARED_ROUTES` to the session's scripted upstream (``upstream``,
reset before each test) and its circuit breaker is effectively off. Tests that need their own
routing, breaker, database or process life use ``gateway_factory``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway_proc import Admin, GatewayFactory, GatewayProcess
from upstream import UpstreamServer, free_port

#: Prices are credits per 1M tokens: at "1" one token costs exactly 0.000001 credit.
SHARED_ROUTES: list[dict[str, Any]] = [
    # tokenizer named by the route
    {
        "model": "gpt-4o-mini",
        "backend": "a",
        "upstream_model": "up-model",
        "input_price": "1",
        "output_price": "2",
        "cached_input_price": "0.5",
        "tokenizer": "o200k_base",
    },
    # a second public model, for allowlists
    {"model": "gpt-4o", "backend": "a", "input_price": "3", "output_price": "4"},
    # tokenizer from upstream_model (gpt-4 -> cl100k_base)
    {
        "model": "legacy",
        "backend": "a",
        "upstream_model": "gpt-4",
        "input_price": "1",
        "output_price": "2",
    },
    # tokenizer from model (gpt-4 -> cl100k_base); upstream_model unknown to tiktoken
    {
        "model": "gpt-4",
        "backend": "a",
        "upstream_model": "up-legacy",
        "input_price": "1",
        "output_price": "2",
    },
    # neither known: o200k_base
    {
        "model": "mystery",
        "backend": "a",
        "upstream_model": "up-mystery",
        "input_price": "1",
        "output_price": "2",
    },
    # fractional prices, to see rounding up
    {"model": "rounding", "backend": "a", "input_price": "0.3", "output_price": "0.3"},
    # one token costs 0.001 credit: small wallets run out quickly
    {
        "model": "costly",
        "backend": "a",
        "input_price": "1000",
        "output_price": "1000",
        "tokenizer": "o200k_base",
    },
    {"model": "dead-model", "backend": "dead", "input_price": "1", "output_price": "2"},
    {"model": "slow-model", "backend": "slow", "input_price": "1", "output_price": "2"},
    {"model": "demo", "backend": "demo", "input_price": "1", "output_price": "2"},
    # ids with a slash, as vLLM and Hugging Face name models
    {"model": "org/model-x", "backend": "a", "input_price": "1", "output_price": "2"},
]

SHARED_MAX_BODY_BYTES = 65536


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: drives the real gateway process over HTTP")


# -- the scripted upstream -----------------------------------------------------------------------
@pytest.fixture(scope="session")
def shared_upstream() -> Iterator[UpstreamServer]:
    with UpstreamServer("a") as server:
        yield server


@pytest.fixture
def upstream(shared_upstream: UpstreamServer) -> Iterator[UpstreamServer]:
    """The shared gateway's upstream (backend ``a``), reset for this test."""
    shared_upstream.reset()
    yield shared_upstream
    shared_upstream.reset()


@pytest.fixture
def upstream_factory() -> Iterator[Callable[[str], UpstreamServer]]:
    """Fresh scripted upstreams for a test's own gateway; stopped at teardown."""
    servers: list[UpstreamServer] = []

    def make(name: str = "upstream") -> UpstreamServer:
        server = UpstreamServer(name).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


# -- gateways --------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def gateway(
    shared_upstream: UpstreamServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """The session's gateway: every model of SHARED_ROUTES on the scripted upstream ``a``."""
    factory = GatewayFactory(tmp_path_factory.mktemp("shared-gateway"))
    backends = [
        {"name": "a", "base_url": shared_upstream.url, "api_key_env": "UPSTREAM_A_KEY"},
        {"name": "dead", "base_url": f"http://127.0.0.1:{free_port()}/v1"},
        {
            "name": "slow",
            "base_url": shared_upstream.url,
            "api_key_env": "UPSTREAM_A_KEY",
            "timeout_s": 1,
        },
        {"name": "demo", "kind": "demo", "demo_delay_s": 0},
    ]
    try:
        yield factory(
            backends=backends,
            routes=SHARED_ROUTES,
            server={"max_body_bytes": SHARED_MAX_BODY_BYTES},
            routing={"failure_threshold": 1000, "cooldown_s": 1},
            # many tests knock with wrong admin tokens from one address: the brute-force
            # guard is tested on a gateway of its own (e2e/test_security.py)
            admin={"max_failures": 1_000_000},
        )
    finally:
        factory.close()


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[GatewayFactory]:
    """``gateway_factory(backends=[...], routes=[...], routing={...}, env={...}, ...)``: a
    gateway of the test's own, stopped at teardown."""
    factory = GatewayFactory(tmp_path)
    yield factory
    factory.close()


# -- the admin API of the shared gateway ----------------------------------------------------------
@pytest.fixture(scope="session")
def admin_api(gateway: GatewayProcess) -> Iterator[Admin]:
    with gateway.admin() as api:
        yield api


@pytest.fixture
def admin(admin_api: Admin) -> httpx.Client:
    """An httpx client on the shared gateway with the admin bearer token."""
    return admin_api.http


@pytest.fixture
def make_wallet(admin_api: Admin) -> Callable[..., str]:
    """``make_wallet(balance="10") -> wallet id``."""
    return admin_api.make_wallet


@pytest.fixture
def make_key(admin_api: Admin) -> Callable[..., tuple[str, str]]:
    """``make_key(wallet_id, **opts) -> (key_id, secret)``."""
    return admin_api.make_key


@pytest.fixture
def ledger_sum(admin_api: Admin) -> Callable[[str], Decimal]:
    return admin_api.ledger_sum


@pytest.fixture
def assert_books_balance(admin_api: Admin) -> Callable[[str], dict[str, Any]]:
    return admin_api.assert_books_balance


# -- clients -------------------------------------------------------------------------------------
@pytest.fixture
async def openai_client(
    request: pytest.FixtureRequest,
) -> AsyncIterator[Callable[..., openai.AsyncOpenAI]]:
    """``openai_client(secret, gateway=None) -> AsyncOpenAI`` on the gateway's ``/v1``
    (the shared one by default), without retries; closed at teardown."""
    clients: list[openai.AsyncOpenAI] = []

    def make(secret: str, gateway: GatewayProcess | None = None) -> openai.AsyncOpenAI:
        target = gateway or request.getfixturevalue("gateway")
        client = openai.AsyncOpenAI(
            base_url=f"{target.url}/v1", api_key=secret, max_retries=0, timeout=30.0
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def http(request: pytest.FixtureRequest) -> AsyncIterator[httpx.AsyncClient]:
    """A raw httpx client on the shared gateway, for what the SDK would hide."""
    target: GatewayProcess = request.getfixturevalue("gateway")
    async with httpx.AsyncClient(base_url=target.url, timeout=30.0, trust_env=False) as client:
        yield client


@pytest.fixture
def wallet_and_key(make_wallet: Callable[..., str], make_key: Callable[..., tuple[str, str]]):
    """``wallet_and_key(balance="10", **key_opts) -> (wallet_id, key_id, secret)``."""

    def make(balance: object = "10", **key_opts: object) -> tuple[str, str, str]:
        wallet_id = make_wallet(balance)
        key_id, secret = make_key(wallet_id, **key_opts)
        return wallet_id, key_id, secret

    return make
