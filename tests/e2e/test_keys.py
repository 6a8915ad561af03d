"""Keys per app: revocation refused within a second, model allowlists, rpm/tpm limits,
spend limits, expiry; what a key sees of models and of its own wallet; secrets only hashed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import openai
import pytest

from e2e.helpers import HELLO, chat
from gateway_proc import Admin, D, GatewayProcess
from upstream import UpstreamServer

pytestmark = pytest.mark.e2e

MakeKey = Callable[..., tuple[str, str, str]]
Client = Callable[..., openai.AsyncOpenAI]


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def test_a_revoked_key_is_refused_within_a_second(
    admin_api: Admin, upstream: UpstreamServer, wallet_and_key: MakeKey, openai_client: Client
) -> None:
    _wallet, key_id, secret = wallet_and_key("10")
    client = openai_client(secret)
    await chat(client)  # the key works (and may now be cached)

    revoked = admin_api.revoke_key(key_id)
    assert revoked.status_code in (200, 204), revoked.text
    revoked_at = time.monotonic()
    await asyncio.sleep(max(0.0, revoked_at + 1.0 - time.monotonic()))
    with pytest.raises(openai.AuthenticationError) as caught:
        await chat(client)
    assert caught.value.code == "invalid_api_key"
    assert len(upstream.requests) == 1


async def test_the_allowlist_limits_models_with_403(
    admin_api: Admin, upstream: UpstreamServer, wallet_and_key: MakeKey, openai_client: Client
) -> None:
    wallet_id, _key, secret = wallet_and_key("10", models=["gpt-4o-mini", "legacy"])
    client = openai_client(secret)
    await chat(client, "gpt-4o-mini")
    with pytest.raises(openai.PermissionDeniedError) as caught:
        await chat(client, "gpt-4o")
    assert caught.value.status_code == 403
    assert caught.value.type == "permission_error"
    assert len(upstream.requests) == 1
    admin_api.assert_books_balance(wallet_id)


async def test_models_lists_only_what_the_key_may_use(
    gateway: GatewayProcess, wallet_and_key: MakeKey, openai_client: Client
) -> None:
    _wallet, _key, limited_secret = wallet_and_key("10", models=["gpt-4o-mini", "legacy"])
    limited = openai_client(limited_secret)
    models = await limited.models.list()
    assert sorted(m.id for m in models.data) == ["gpt-4o-mini", "legacy"]
    assert all(m.object == "model" for m in models.data)
    assert (await limited.models.retrieve("legacy")).id == "legacy"
    with pytest.raises(openai.NotFoundError):
        await limited.models.retrieve("gpt-4o")  # exists, but not for this key
    with pytest.raises(openai.NotFoundError):
        await limited.models.retrieve("no-such-model")

    _wallet, _key, open_secret = wallet_and_key("10")
    everything = await openai_client(open_secret).models.list()
    ids = [m.id for m in everything.data]
    assert sorted(ids) == sorted({route["model"] for route in gateway.config["routes"]}), (
        "once each"
    )


async def test_a_model_id_with_a_slash_is_served_and_listed(
    upstream: UpstreamServer,
    wallet_and_key: MakeKey,
    openai_client: Client,
    http: httpx.AsyncClient,
) -> None:
    _wallet, _key, secret = wallet_and_key("10", models=["org/model-x"])
    client = openai_client(secret)
    await chat(client, "org/model-x")
    assert upstream.last.body["model"] == "org/model-x"
    assert [m.id for m in (await client.models.list()).data] == ["org/model-x"]
    assert (await client.models.retrieve("org/model-x")).id == "org/model-x"  # sent as %2F
    raw = await http.get("/v1/models/org/model-x", headers=bearer(secret))
    assert raw.status_code == 200, raw.text
    assert raw.json()["id"] == "org/model-x"


async def test_rpm_limit_answers_429_with_retry_after(
    admin_api: Admin, upstream: UpstreamServer, wallet_and_key: MakeKey, openai_client: Client
) -> None:
    wallet_id, _key, secret = wallet_and_key("10", rpm=2)
    client = openai_client(secret)
    await chat(client)
    await chat(client)
    with pytest.raises(openai.RateLimitError) as caught:
        await chat(client)
    error = caught.value
    assert error.status_code == 429
    assert error.type == "rate_limit_error"
    assert error.code == "rate_limit_exceeded"
    retry_after = error.response.headers["Retry-After"]
    assert retry_after.isdigit()
    assert 1 <= int(retry_after) <= 60
    assert len(upstream.requests) == 2
    assert len(admin_api.usage(wallet_id=wallet_id)) == 2, "the refused request is not billed"
    admin_api.assert_books_balance(wallet_id)


async def test_tpm_limit_answers_429_with_retry_after(
    admin_api: Admin, upstream: UpstreamServer, wallet_and_key: MakeKey, openai_client: Client
) -> None:
    wallet_id, _key, secret = wallet_and_key("10", tpm=30)
    client = openai_client(secret)
    await chat(client, max_tokens=5, script={"prompt_tokens": 30, "words": 5})
    admin_api.idle_wallet(wallet_id)  # the first request has settled: 35 tokens used
    with pytest.raises(openai.RateLimitError) as caught:
        await chat(client, max_tokens=5)
    assert caught.value.code == "rate_limit_exceeded"
    assert int(caught.value.response.headers["Retry-After"]) >= 1
    assert len(upstream.requests) == 1


async def test_spend_limit_reached_answers_403(
    admin_api: Admin, upstream: UpstreamServer, wallet_and_key: MakeKey, openai_client: Client
) -> None:
    wallet_id, key_id, secret = wallet_and_key("10", spend_limit="0.00005")
    client = openai_client(secret)
    await chat(client, script={"prompt_tokens": 40, "completion_tokens": 20})  # 0.00008
    admin_api.idle_wallet(wallet_id)  # the first request has settled
    with pytest.raises(openai.PermissionDeniedError) as caught:
        await chat(client)
    assert caught.value.type == "permission_error"
    assert len(upstream.requests) == 1
    keys = {k["id"]: k for k in admin_api.http.get("/admin/keys").json()["data"]}
    assert D(keys[key_id]["spend_limit"]) == Decimal("0.00005")
    admin_api.assert_books_balance(wallet_id)


async def test_an_expired_key_is_refused(
    admin_api: Admin,
    upstream: UpstreamServer,
    make_wallet: Callable[..., str],
    http: httpx.AsyncClient,
) -> None:
    wallet_id = make_wallet("10")
    expires = datetime.now(UTC) + timedelta(seconds=1)
    _key, secret = admin_api.make_key(
        wallet_id, expires_at=expires.isoformat().replace("+00:00", "Z")
    )
    _past_key, past_secret = admin_api.make_key(wallet_id, expires_at="2020-01-01T00:00:00Z")
    body = {"model": "gpt-4o-mini", "messages": HELLO}
    refused = await http.post("/v1/chat/completions", json=body, headers=bearer(past_secret))
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"

    fresh = await http.post("/v1/chat/completions", json=body, headers=bearer(secret))
    assert fresh.status_code == 200, fresh.text
    await asyncio.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds() + 0.05))
    expired = await http.post("/v1/chat/completions", json=body, headers=bearer(secret))
    assert expired.status_code == 401
    assert expired.json()["error"]["code"] == "invalid_api_key"
    assert len(upstream.requests) == 1


async def test_the_wallet_endpoint_shows_the_callers_own_wallet(
    admin_api: Admin, wallet_and_key: MakeKey, openai_client: Client, http: httpx.AsyncClient
) -> None:
    wallet_id, _key, secret = wallet_and_key("12.5")
    wallet_and_key("99")  # someone else's
    response = await http.get("/v1/wallet", headers=bearer(secret))
    assert response.status_code == 200
    wallet = response.json()
    assert wallet["id"] == wallet_id
    assert (wallet["balance"], wallet["reserved"], wallet["available"]) == ("12.5", "0", "12.5")

    await chat(openai_client(secret), script={"prompt_tokens": 100, "completion_tokens": 0})
    admin_api.idle_wallet(wallet_id)
    after = (await http.get("/v1/wallet", headers=bearer(secret))).json()
    assert (after["balance"], after["reserved"], after["available"]) == (
        "12.4999",
        "0",
        "12.4999",
    )
    unauthenticated = await http.get("/v1/wallet")
    assert unauthenticated.status_code == 401


def test_keys_are_stored_only_as_hashes(
    gateway: GatewayProcess, admin_api: Admin, wallet_and_key: MakeKey
) -> None:
    _wallet, _key_id, secret = wallet_and_key("1", name="hashed")
    listing = admin_api.http.get("/admin/keys")
    assert secret not in listing.text, "the listing never shows the secret"
    assert all("key" not in k for k in listing.json()["data"])
    database = Path(gateway.config["storage"]["url"].removeprefix("sqlite:///"))
    for path in database.parent.glob(database.name + "*"):
        assert secret.encode() not in path.read_bytes(), f"the secret is stored in {path.name}"


async def test_concurrent_requests_stay_inside_the_spend_limit(
    admin_api: Admin, upstream: UpstreamServer, wallet_and_key: MakeKey, openai_client: Client
) -> None:
    # each request reserves its prompt and 20 completion tokens (~0.00005); the limit pays
    # for about ten of the forty sent at once. The upstream honours max_tokens and reports
    # no usage, so what is charged is the gateway's own count, which its reservation covered.
    wallet_id, key_id, secret = wallet_and_key("10", spend_limit="0.0005")
    client = openai_client(secret)
    script = {"words": 20, "usage": False, "ignore_max_tokens": False}
    results = await asyncio.gather(
        *(chat(client, script=script, max_tokens=20) for _ in range(40)),
        return_exceptions=True,
    )
    refused = [r for r in results if isinstance(r, openai.PermissionDeniedError)]
    served = [r for r in results if not isinstance(r, BaseException)]
    assert len(refused) + len(served) == 40, [r for r in results if isinstance(r, Exception)]
    assert served
    assert refused
    admin_api.idle_wallet(wallet_id)
    keys = {k["id"]: k for k in admin_api.http.get("/admin/keys").json()["data"]}
    usage = admin_api.http.get("/admin/usage", params={"key_id": key_id}).json()["data"]
    assert D(keys[key_id]["spent"]) <= Decimal("0.0005"), [
        (u["status"], u["cost"], u["prompt_tokens"], u["completion_tokens"]) for u in usage
    ]
    admin_api.assert_books_balance(wallet_id)
