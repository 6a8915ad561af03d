"""The CLI manages money and keys on the same storage as the server, with or without one
running, and its ``--json`` output has the admin API's shapes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from e2e.helpers import chat
from gateway_proc import GatewayFactory, GatewayProcess, run_cli
from upstream import UpstreamServer

pytestmark = pytest.mark.e2e

WALLET_FIELDS = {"id", "name", "balance", "reserved", "available"}


def cli_json(config: Path, *args: str) -> Any:
    result = run_cli(config, *args, "--json")
    assert result.returncode == 0, f"gateway {' '.join(args)}: {result.stdout}{result.stderr}"
    return json.loads(result.stdout)


@pytest.fixture
def stopped_gateway(gateway_factory: GatewayFactory, upstream: UpstreamServer) -> GatewayProcess:
    """A gateway config and database, the server not started yet."""
    return gateway_factory(
        backends=[{"name": "a", "base_url": upstream.url, "api_key_env": "UPSTREAM_A_KEY"}],
        routes=[
            {"model": "m", "backend": "a", "input_price": "1", "output_price": "2"},
            {"model": "other", "backend": "a", "input_price": "1", "output_price": "2"},
        ],
        start=False,
    )


async def test_the_cli_works_without_a_server_and_the_server_sees_it(
    stopped_gateway: GatewayProcess, upstream: UpstreamServer
) -> None:
    config = stopped_gateway.config_path
    wallet = cli_json(config, "wallets", "create", "--name", "acme", "--balance", "5")
    assert set(wallet) >= WALLET_FIELDS
    assert (wallet["name"], wallet["balance"], wallet["reserved"], wallet["available"]) == (
        "acme",
        "5",
        "0",
        "5",
    )
    wallet_id = wallet["id"]
    assert cli_json(config, "wallets", "show", wallet_id) == wallet
    assert wallet in cli_json(config, "wallets", "list")["data"]
    credited = cli_json(config, "wallets", "credit", wallet_id, "2.5")
    assert credited["balance"] == "7.5"

    key = cli_json(
        config,
        "keys",
        "create",
        "--wallet",
        wallet_id,
        "--name",
        "app",
        "--models",
        "m",
        "--rpm",
        "100",
    )
    assert {"id", "key"} <= set(key)
    listed = run_cli(config, "keys", "list", "--json")
    assert listed.returncode == 0
    assert key["key"] not in listed.stdout, "the secret is shown once"
    assert key["id"] in listed.stdout
    assert cli_json(config, "usage", "--wallet", wallet_id) == {"data": []}

    stopped_gateway.start()
    with stopped_gateway.admin() as admin:
        shown = admin.wallet(wallet_id)
        assert shown == credited, "the CLI's --json has the admin API's shape"
        api_keys = [k for k in admin.http.get("/admin/keys").json()["data"] if k["id"] == key["id"]]
        cli_keys = [k for k in json.loads(listed.stdout)["data"] if k["id"] == key["id"]]
        assert api_keys == cli_keys

        async with openai.AsyncOpenAI(
            base_url=f"{stopped_gateway.url}/v1", api_key=key["key"], max_retries=0
        ) as client:
            _answer, request_id = await chat(client, "m")
            with pytest.raises(openai.PermissionDeniedError):
                await chat(client, "other")
        admin.idle_wallet(wallet_id)

        # the CLI on the storage of a running server
        usage = cli_json(stopped_gateway.config_path, "usage", "--wallet", wallet_id)
        assert [u["request_id"] for u in usage["data"]] == [request_id]
        assert usage["data"] == admin.usage(wallet_id=wallet_id)
        cli_json(config, "wallets", "credit", wallet_id, "1")
        assert admin.wallet(wallet_id)["balance"] == "8.49998"  # 7.5 + 1 - 0.00002
        admin.assert_books_balance(wallet_id)


async def test_a_key_revoked_by_the_cli_is_refused_within_a_second(
    stopped_gateway: GatewayProcess, upstream: UpstreamServer
) -> None:
    config = stopped_gateway.config_path
    wallet_id = cli_json(config, "wallets", "create", "--name", "w", "--balance", "1")["id"]
    key = cli_json(config, "keys", "create", "--wallet", wallet_id, "--name", "app")
    stopped_gateway.start()
    async with openai.AsyncOpenAI(
        base_url=f"{stopped_gateway.url}/v1", api_key=key["key"], max_retries=0
    ) as client:
        await chat(client, "m")
        cli_json(config, "keys", "revoke", key["id"])
        revoked_at = time.monotonic()
        await asyncio.sleep(max(0.0, revoked_at + 1.0 - time.monotonic()))
        with pytest.raises(openai.AuthenticationError):
            await chat(client, "m")


def test_cli_errors_exit_non_zero(stopped_gateway: GatewayProcess, tmp_path: Path) -> None:
    config = stopped_gateway.config_path
    missing = run_cli(config, "wallets", "show", "no-such-wallet", "--json")
    assert missing.returncode != 0
    assert "no-such-wallet" in missing.stdout + missing.stderr
    bad_amount = run_cli(config, "wallets", "create", "--name", "x", "--balance", "-3", "--json")
    assert bad_amount.returncode != 0
    no_config = run_cli(tmp_path / "absent.toml", "wallets", "list", "--json")
    assert no_config.returncode != 0
    assert "absent.toml" in no_config.stdout + no_config.stderr


def test_the_config_path_can_come_from_gateway_config(stopped_gateway: GatewayProcess) -> None:
    created = cli_json(stopped_gateway.config_path, "wallets", "create", "--name", "via-env")
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "wallets", "list", "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "GATEWAY_CONFIG": str(stopped_gateway.config_path)},
        cwd=stopped_gateway.config_path.parent.parent,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert created in json.loads(result.stdout)["data"]
