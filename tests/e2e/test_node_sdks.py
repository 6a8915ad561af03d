"""The Node SDKs people point at a gateway: OpenAI's ``openai`` and Vercel's ``ai`` with
``@ai-sdk/openai`` (``generateText``, ``streamText``; the Responses flavour, ``openai(model)``,
and the chat flavour, ``openai.chat(model)``), through a gateway whose models sit on a
chat-only backend (translated) and on a Responses-native one.

``tests/node`` pins the packages (``package-lock.json``); they are installed into
``tests/node/node_modules`` with ``npm ci`` when missing or stale. Without ``node`` the test
is skipped, and says so (with ``CI=true`` it fails instead).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from e2e.helpers import skip_unless_ci
from gateway_proc import D, GatewayFactory
from upstream import DEFAULT_PROMPT_TOKENS, UpstreamServer, answer_text

pytestmark = pytest.mark.e2e

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
STAMP = NODE_DIR / "node_modules" / ".gateway-lock-sha256"
PRICES = {"input_price": "1", "output_price": "2", "tokenizer": "o200k_base"}


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        reason = "node is not installed: the Node SDK test (tests/node) cannot run"
        print(reason)
        skip_unless_ci(reason)
    return node


def _install() -> None:
    """``npm ci`` into tests/node/node_modules unless it holds this package-lock already."""
    lock = hashlib.sha256((NODE_DIR / "package-lock.json").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text().strip() == lock:
        return
    npm = shutil.which("npm")
    assert npm is not None, "node is installed but npm is not: cannot install tests/node"
    done = subprocess.run(
        [npm, "ci", "--prefer-offline", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, f"npm ci failed:\n{done.stdout}\n{done.stderr}"
    STAMP.write_text(lock)


def test_node_sdks_through_the_gateway(
    gateway_factory: GatewayFactory, upstream_factory: Callable[[str], UpstreamServer]
) -> None:
    node = _node()
    _install()
    chat_up, native_up = upstream_factory("chat"), upstream_factory("native")
    for server in (chat_up, native_up):
        server.defaults = {"words": 4, "tool_call_first": True}
    gw = gateway_factory(
        backends=[
            {"name": "chat", "base_url": chat_up.url},
            {"name": "native", "base_url": native_up.url, "responses_api": True},
        ],
        routes=[
            {"model": "node-chat", "backend": "chat", **PRICES},
            {"model": "node-native", "backend": "native", **PRICES},
        ],
    )
    with gw.admin() as admin:
        wallet_id = admin.make_wallet("10")
        _key_id, secret = admin.make_key(wallet_id)
        env = {
            **os.environ,
            "GATEWAY_BASE_URL": f"{gw.url}/v1",
            "GATEWAY_API_KEY": secret,
            "CHAT_MODEL": "node-chat",
            "NATIVE_MODEL": "node-native",
        }
        done = subprocess.run(
            [node, "sdks.mjs"],
            cwd=NODE_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, f"node failed:\n{done.stdout}\n{done.stderr}"
        results: list[dict[str, Any]] = json.loads(done.stdout.strip().splitlines()[-1])

        failed = [r for r in results if not r["ok"]]
        assert not failed, json.dumps(failed, indent=2)
        names = [r["name"] for r in results]
        assert len(names) == 14, names
        for result in results:
            assert result["text"] == answer_text(4), result
        for result in results:
            if "tool" in result["name"]:
                continue
            usage = result["usage"]
            # the openai SDK reports the API's usage, the AI SDK its own names for it
            prompt = usage.get("input_tokens", usage.get("inputTokens", usage.get("prompt_tokens")))
            completion = usage.get(
                "output_tokens", usage.get("outputTokens", usage.get("completion_tokens"))
            )
            assert (prompt, completion) == (DEFAULT_PROMPT_TOKENS, 4), result
        tooled = [r for r in results if "tool" in r["name"] and "generateText" in r["name"]]
        assert all(r["toolResults"] == ["22 degrees celsius in Paris"] for r in tooled), tooled

        usage = admin.usage(wallet_id=wallet_id)
        assert len(usage) == sum(r["calls"] for r in results), "every model call is billed"
        assert all(u["status"] == "ok" for u in usage), usage
        assert {u["endpoint"] for u in usage} == {"responses", "chat.completions"}
        assert {u["backend"] for u in usage} == {"chat", "native"}
        for record in usage:
            cost = gw.cost(record["model"], record["prompt_tokens"], record["completion_tokens"])
            assert D(record["cost"]) == cost, record
        wallet = admin.assert_books_balance(wallet_id)
        charged = sum((D(u["cost"]) for u in usage), Decimal(0))
        assert D(wallet["balance"]) == Decimal(10) - charged
        assert charged > 0
    assert {r.path for r in native_up.requests} == {"/v1/responses"}
    assert {r.path for r in chat_up.requests} == {"/v1/chat/completions"}
