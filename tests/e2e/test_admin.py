"""The admin API: wallets, credits with idempotency keys, transfers, the ledger, keys and usage,
all behind the admin token."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from decimal import Decimal

import httpx
import pytest

from e2e.helpers import chat
from gateway_proc import ADMIN_TOKEN, Admin, D, GatewayFactory, GatewayProcess
from upstream import UpstreamServer

pytestmark = pytest.mark.e2e

WALLET_FIELDS = {"id", "name", "balance", "reserved", "available"}
MakeKey = Callable[..., tuple[str, str, str]]


def error_of(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    return dict(error)


# -- wallets -----------------------------------------------------------------------------------
def test_wallets_create_list_show(admin: httpx.Client) -> None:
    created = admin.post("/admin/wallets", json={"name": "acme", "balance": "12.5"})
    assert created.status_code == 201, created.text
    wallet = created.json()
    assert set(wallet) >= WALLET_FIELDS
    assert (wallet["name"], wallet["balance"], wallet["reserved"], wallet["available"]) == (
        "acme",
        "12.5",
        "0",
        "12.5",
    )

    shown = admin.get(f"/admin/wallets/{wallet['id']}")
    assert shown.status_code == 200
    assert shown.json() == wallet

    listed = admin.get("/admin/wallets")
    assert listed.status_code == 200
    assert wallet in listed.json()["data"]

    empty = admin.post("/admin/wallets", json={"name": "empty"}).json()
    assert (empty["balance"], empty["available"]) == ("0", "0")
    numeric = admin.post("/admin/wallets", json={"name": "numeric", "balance": 2.25}).json()
    assert numeric["balance"] == "2.25", "numbers are accepted on input"


def test_unknown_wallet_is_404(admin: httpx.Client) -> None:
    error_of(admin.get("/admin/wallets/no-such-wallet"), 404)
    error_of(admin.post("/admin/wallets/no-such-wallet/credits", json={"amount": "1"}), 404)
    error_of(admin.get("/admin/wallets/no-such-wallet/ledger"), 404)


@pytest.mark.parametrize(
    "body",
    [
        {"balance": "1"},  # no name
        {"name": "x", "balance": "-1"},
        {"name": "x", "balance": "0.0000001"},  # finer than a micro-credit
        {"name": "x", "balance": "lots"},
        {"name": "x", "balance": True},
    ],
)
def test_bad_wallets_are_400(admin: httpx.Client, body: dict[str, object]) -> None:
    error = error_of(admin.post("/admin/wallets", json=body), 400)
    assert error["type"] == "invalid_request_error"


# -- credits -----------------------------------------------------------------------------------
def test_credits_with_an_idempotency_key_credit_once(
    admin_api: Admin, make_wallet: Callable[..., str]
) -> None:
    wallet_id = make_wallet("1")
    key = f"invoice-{uuid.uuid4()}"
    first = admin_api.credit(wallet_id, "2.5", idempotency_key=key, memo="invoice 42")
    assert first.status_code == 201, first.text
    assert set(first.json()) >= WALLET_FIELDS
    assert first.json()["balance"] == "3.5"

    replay = admin_api.credit(wallet_id, "2.5", idempotency_key=key, memo="invoice 42")
    assert replay.status_code == 200, replay.text
    assert replay.json()["balance"] == "3.5"
    assert admin_api.wallet(wallet_id)["balance"] == "3.5"

    plain = admin_api.credit(wallet_id, 1)  # no key: every call credits
    assert plain.status_code == 201
    assert admin_api.credit(wallet_id, 1).json()["balance"] == "5.5"
    assert len(admin_api.ledger(wallet_id)) == 4  # opening balance, keyed credit, two plain
    admin_api.assert_books_balance(wallet_id)


@pytest.mark.parametrize("amount", ["0", "-5", "1.0000001", "abc", None])
def test_bad_credits_are_400(
    admin_api: Admin, make_wallet: Callable[..., str], amount: object
) -> None:
    wallet_id = make_wallet("1")
    error = error_of(admin_api.credit(wallet_id, amount), 400)
    assert error["type"] == "invalid_request_error"
    assert admin_api.wallet(wallet_id)["balance"] == "1"


# -- transfers ---------------------------------------------------------------------------------
def test_transfers_move_money_once(
    admin: httpx.Client, admin_api: Admin, make_wallet: Callable[..., str]
) -> None:
    source, target = make_wallet("5"), make_wallet("1")
    key = f"move-{uuid.uuid4()}"
    body = {"from_wallet": source, "to_wallet": target, "amount": "1.25", "idempotency_key": key}
    moved = admin.post("/admin/transfers", json=body)
    assert moved.status_code == 201, moved.text
    assert D(moved.json()["amount"]) == Decimal("1.25")

    replay = admin.post("/admin/transfers", json=body)
    assert replay.status_code in (200, 201), replay.text
    assert admin_api.wallet(source)["balance"] == "3.75"
    assert admin_api.wallet(target)["balance"] == "2.25"

    source_entry, target_entry = admin_api.ledger(source)[0], admin_api.ledger(target)[0]
    assert (source_entry["amount"], target_entry["amount"]) == ("-1.25", "1.25")
    admin_api.assert_books_balance(source)
    admin_api.assert_books_balance(target)


def test_a_transfer_the_source_cannot_pay_moves_nothing(
    admin: httpx.Client, admin_api: Admin, make_wallet: Callable[..., str]
) -> None:
    source, target = make_wallet("1"), make_wallet("1")
    refused = admin.post(
        "/admin/transfers", json={"from_wallet": source, "to_wallet": target, "amount": "1.5"}
    )
    assert 400 <= refused.status_code < 500, refused.text
    assert "error" in refused.json()
    for bad in (
        {"from_wallet": source, "to_wallet": "no-such-wallet", "amount": "0.5"},
        {"from_wallet": source, "to_wallet": source, "amount": "0.5"},
        {"from_wallet": source, "to_wallet": target, "amount": "-0.5"},
    ):
        response = admin.post("/admin/transfers", json=bad)
        assert 400 <= response.status_code < 500, (bad, response.text)
    assert admin_api.wallet(source)["balance"] == "1"
    assert admin_api.wallet(target)["balance"] == "1"
    assert len(admin_api.ledger(source)) == len(admin_api.ledger(target)) == 1


# -- the ledger --------------------------------------------------------------------------------
async def test_the_ledger_is_newest_first_with_signed_amounts(
    admin_api: Admin,
    upstream: UpstreamServer,
    wallet_and_key: MakeKey,
    make_wallet: Callable[..., str],
    openai_client: Callable[..., object],
) -> None:
    wallet_id, _key, secret = wallet_and_key("5")
    admin_api.credit(wallet_id, "2")
    other = make_wallet("0")
    moved = admin_api.http.post(
        "/admin/transfers", json={"from_wallet": wallet_id, "to_wallet": other, "amount": "1"}
    )
    assert moved.status_code == 201
    _answer, request_id = await chat(
        openai_client(secret), script={"prompt_tokens": 100, "completion_tokens": 50}
    )
    admin_api.idle_wallet(wallet_id)

    entries = admin_api.ledger(wallet_id)
    assert [e["amount"] for e in entries] == ["-0.0002", "-1", "2", "5"]
    assert [e["balance_after"] for e in entries] == ["5.9998", "6", "7", "5"]
    assert entries[0]["request_id"] == request_id
    assert entries[0]["kind"] != entries[-1]["kind"]
    for entry in entries:
        assert set(entry) >= {"id", "kind", "amount", "balance_after", "created_at"}
    assert [e["id"] for e in admin_api.ledger(wallet_id, limit=2)] == [e["id"] for e in entries[:2]]
    admin_api.assert_books_balance(wallet_id)


# -- keys --------------------------------------------------------------------------------------
def test_keys_create_show_the_secret_once(
    admin: httpx.Client, make_wallet: Callable[..., str]
) -> None:
    wallet_id = make_wallet("1")
    created = admin.post(
        "/admin/keys",
        json={
            "wallet_id": wallet_id,
            "name": "app",
            "models": ["gpt-4o-mini"],
            "rpm": 60,
            "tpm": 10000,
            "spend_limit": "5",
            "expires_at": "2099-01-01T00:00:00Z",
        },
    )
    assert created.status_code == 201, created.text
    key = created.json()
    assert {"id", "key"} <= set(key)
    secret = key["key"]
    assert isinstance(secret, str)
    assert len(secret) >= 32

    listed = admin.get("/admin/keys")
    assert listed.status_code == 200
    assert secret not in listed.text
    mine = [k for k in listed.json()["data"] if k["id"] == key["id"]]
    assert len(mine) == 1
    assert "key" not in mine[0]
    assert mine[0]["name"] == "app"
    assert mine[0]["wallet_id"] == wallet_id

    error_of(admin.post("/admin/keys", json={"wallet_id": "no-such-wallet", "name": "x"}), 404)
    error_of(admin.post("/admin/keys", json={"wallet_id": wallet_id}), 400)
    error_of(admin.post("/admin/keys", json={"wallet_id": wallet_id, "name": "x", "rpm": -1}), 400)
    error_of(admin.delete("/admin/keys/no-such-key"), 404)


# -- usage -------------------------------------------------------------------------------------
async def test_usage_filters_by_wallet_and_key_and_limits(
    admin_api: Admin,
    upstream: UpstreamServer,
    make_wallet: Callable[..., str],
    make_key: MakeKey,
    openai_client: Callable[..., object],
) -> None:
    wallet_id, other_wallet = make_wallet("10"), make_wallet("10")
    first_key, first_secret = make_key(wallet_id, name="first")
    second_key, second_secret = make_key(wallet_id, name="second")
    _other_key, other_secret = make_key(other_wallet, name="other")
    ids = []
    for secret in (first_secret, second_secret, first_secret, other_secret):
        ids.append((await chat(openai_client(secret)))[1])
    admin_api.idle_wallet(wallet_id)
    admin_api.idle_wallet(other_wallet)

    by_wallet = admin_api.usage(wallet_id=wallet_id)
    assert [u["request_id"] for u in by_wallet] == [ids[2], ids[1], ids[0]], "newest first"
    by_key = admin_api.usage(key_id=first_key)
    assert [u["request_id"] for u in by_key] == [ids[2], ids[0]]
    assert [u["request_id"] for u in admin_api.usage(key_id=second_key)] == [ids[1]]
    assert [u["request_id"] for u in admin_api.usage(wallet_id=wallet_id, limit=1)] == [ids[2]]
    record = by_wallet[0]
    assert set(record) >= {
        "request_id",
        "key_id",
        "wallet_id",
        "model",
        "backend",
        "prompt_tokens",
        "completion_tokens",
        "cost",
        "status",
    }
    assert (record["key_id"], record["wallet_id"], record["model"]) == (
        first_key,
        wallet_id,
        "gpt-4o-mini",
    )
    assert isinstance(record["cost"], str)


# -- the admin token ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/admin/wallets"),
        ("POST", "/admin/wallets"),
        ("GET", "/admin/wallets/w"),
        ("POST", "/admin/wallets/w/credits"),
        ("POST", "/admin/transfers"),
        ("GET", "/admin/wallets/w/ledger"),
        ("GET", "/admin/keys"),
        ("POST", "/admin/keys"),
        ("DELETE", "/admin/keys/k"),
        ("GET", "/admin/usage"),
    ],
)
def test_the_admin_api_needs_the_admin_token(
    gateway: GatewayProcess, wallet_and_key: MakeKey, method: str, path: str
) -> None:
    _wallet, _key, app_secret = wallet_and_key("1")
    with httpx.Client(base_url=gateway.url, trust_env=False) as http:
        for headers in (
            {},
            {"Authorization": "Bearer wrong-token"},
            {"Authorization": f"Bearer {app_secret}"},  # an app key does not open it
            {"Authorization": f"Basic {ADMIN_TOKEN}"},
        ):
            response = http.request(method, path, headers=headers, json={"name": "x"})
            error = error_of(response, 401)
            assert error["type"] == "invalid_request_error"
            assert error["code"] == "invalid_api_key"


def test_no_admin_token_set_closes_the_admin_api(
    gateway_factory: GatewayFactory, upstream: UpstreamServer
) -> None:
    closed = gateway_factory(
        backends=[{"name": "a", "base_url": upstream.url}],
        routes=[{"model": "m", "backend": "a", "input_price": "1", "output_price": "1"}],
        admin_token=None,
    )
    with httpx.Client(base_url=closed.url, trust_env=False) as http:
        for headers in ({}, {"Authorization": f"Bearer {ADMIN_TOKEN}"}):
            error_of(http.get("/admin/wallets", headers=headers), 401)


def test_the_admin_token_variable_can_be_renamed(
    gateway_factory: GatewayFactory, upstream: UpstreamServer
) -> None:
    renamed = gateway_factory(
        backends=[{"name": "a", "base_url": upstream.url}],
        routes=[{"model": "m", "backend": "a", "input_price": "1", "output_price": "1"}],
        admin={"token_env": "OPS_TOKEN"},
        env={"OPS_TOKEN": "ops-secret"},
    )
    with httpx.Client(base_url=renamed.url, trust_env=False) as http:
        default = http.get("/admin/wallets", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        error_of(default, 401)  # GATEWAY_ADMIN_TOKEN is set, but not the one named
        ops = http.get("/admin/wallets", headers={"Authorization": "Bearer ops-secret"})
        assert ops.status_code == 200, ops.text
