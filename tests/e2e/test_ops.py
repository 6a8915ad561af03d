"""Operations: health and readiness, Prometheus metrics, config errors that name the file, the
key and the problem, and a clean exit on SIGTERM."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from e2e.helpers import chat, eventually
from gateway_proc import ADMIN_TOKEN, GatewayFactory, GatewayProcess
from upstream import UpstreamServer

pytestmark = pytest.mark.e2e

WalletAndKey = Callable[..., tuple[str, str, str]]
OpenAIFactory = Callable[..., openai.AsyncOpenAI]


async def test_health_and_readiness(http: httpx.AsyncClient) -> None:
    assert (await http.get("/healthz")).status_code == 200
    assert (await http.get("/readyz")).status_code == 200


Sample = tuple[str, frozenset[tuple[str, str]]]  # a sample's name and labels


async def _samples(http: httpx.AsyncClient) -> dict[Sample, float]:
    """The counters' samples and the histograms' counts now, from ``/metrics``."""
    response = await http.get("/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[Sample, float] = {}
    for family in text_string_to_metric_families(response.text):
        suffix = {"counter": "_total", "histogram": "_count"}.get(family.type)
        for sample in family.samples:
            if suffix is not None and sample.name.endswith(suffix):
                samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def _changes(before: dict[Sample, float], after: dict[Sample, float]) -> dict[Sample, float]:
    return {
        sample: value - before.get(sample, 0.0)
        for sample, value in after.items()
        if value != before.get(sample, 0.0)
    }


def _labels(**labels: str) -> frozenset[tuple[str, str]]:
    return frozenset(labels.items())


async def test_metrics_count_requests_and_tokens(
    http: httpx.AsyncClient,
    upstream: UpstreamServer,
    wallet_and_key: WalletAndKey,
    openai_client: OpenAIFactory,
) -> None:
    """One request moves the counters by exactly its own figures. Earlier tests counted on
    this gateway too, so what is compared is what changed across the request, on a model that
    one other test uses (its requests settled before it ended: none moves the counters now)."""
    model = "mystery"  # 1 micro-credit a prompt token, 2 a completion token
    _wallet, _key, secret = wallet_and_key("10")
    before = await _samples(http)
    await chat(openai_client(secret), model, script={"prompt_tokens": 7, "completion_tokens": 3})

    ok = _labels(endpoint="chat.completions", model=model, status="ok")
    expected = {
        ("gateway_requests_total", ok): 1,
        ("gateway_tokens_total", _labels(model=model, backend="a", kind="prompt")): 7,
        ("gateway_tokens_total", _labels(model=model, backend="a", kind="completion")): 3,
        ("gateway_credits_charged_micro_total", _labels(model=model, backend="a")): 7 + 2 * 3,
    }
    # the metrics are counted just after the answer is sent
    after = await eventually(
        lambda: _samples(http),
        lambda now: expected.items() <= _changes(before, now).items(),
        what="the request's metrics",
    )
    changed = _changes(before, after)
    assert {s: v for s, v in changed.items() if ("model", model) in s[1]} == expected, changed
    # one duration observed for each request counted on the endpoint, this one included
    requests_on_chat = sum(
        v
        for (name, labels), v in changed.items()
        if name == "gateway_requests_total" and ("endpoint", "chat.completions") in labels
    )
    durations = ("gateway_request_duration_seconds_count", _labels(endpoint="chat.completions"))
    assert changed[durations] == requests_on_chat >= 1, changed


# -- config errors -----------------------------------------------------------------------------
GOOD_BACKEND = '[[backends]]\nname = "a"\nbase_url = "http://127.0.0.1:9/v1"\n'
GOOD_ROUTE = '[[routes]]\nmodel = "m"\nbackend = "a"\ninput_price = "1"\noutput_price = "2"\n'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[server]\nhots = "127.0.0.1"\n' + GOOD_BACKEND + GOOD_ROUTE, ["server", "hots"]),
        ('[server]\nport = "eighty"\n' + GOOD_BACKEND + GOOD_ROUTE, ["server", "port"]),
        ("[server]\nmax_body_bytes = -5\n" + GOOD_BACKEND + GOOD_ROUTE, ["max_body_bytes"]),
        (GOOD_BACKEND + GOOD_ROUTE.replace('"a"', '"nope"'), ["routes", "backend", "nope"]),
        (GOOD_BACKEND + GOOD_ROUTE.replace('input_price = "1"\n', ""), ["routes", "input_price"]),
        (GOOD_BACKEND + GOOD_ROUTE.replace('"1"', '"one"'), ["routes", "input_price"]),
        (GOOD_BACKEND + 'colour = "blue"\n' + GOOD_ROUTE, ["backends", "colour"]),
        (GOOD_BACKEND.replace("http://127.0.0.1:9/v1", "ftp://x") + GOOD_ROUTE, ["base_url"]),
        ("[server\nport = 1\n", []),  # not TOML
    ],
    ids=[
        "unknown-key",
        "wrong-type",
        "bad-value",
        "unknown-backend",
        "missing-price",
        "bad-price",
        "unknown-backend-key",
        "bad-url",
        "invalid-toml",
    ],
)
def test_a_bad_config_names_the_file_the_key_and_the_problem(
    tmp_path: Path, text: str, expected: list[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(path), "--port", "1"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "bad.toml" in output, output
    for word in expected:
        assert word in output, f"{word!r} not in: {output}"
    assert "Traceback" not in output, "a config error is a message, not a crash"


def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(tmp_path / "nowhere.toml")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert "nowhere.toml" in result.stdout + result.stderr


# -- process life ------------------------------------------------------------------------------
async def test_sigterm_stops_an_idle_gateway_cleanly(
    gateway_factory: GatewayFactory, upstream: UpstreamServer
) -> None:
    gateway = gateway_factory(
        backends=[{"name": "a", "base_url": upstream.url}],
        routes=[{"model": "m", "backend": "a", "input_price": "1", "output_price": "2"}],
    )
    with gateway.admin() as admin:
        wallet_id = admin.make_wallet("1")
        _key, secret = admin.make_key(wallet_id)
    async with openai.AsyncOpenAI(
        base_url=f"{gateway.url}/v1", api_key=secret, max_retries=0
    ) as client:
        await chat(client, "m")
    assert gateway.stop() == 0, f"SIGTERM did not stop the gateway\n{gateway.output()[-3000:]}"


async def test_host_and_port_flags_override_the_file(gateway: GatewayProcess) -> None:
    assert gateway.config["server"]["port"] != gateway.port
    async with httpx.AsyncClient(trust_env=False) as http:
        assert (await http.get(f"http://127.0.0.1:{gateway.port}/healthz")).status_code == 200
