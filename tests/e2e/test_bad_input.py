"""Bad input from clients and admins: oversized and deeply nested bodies, a wrong type in every
field the gateway reads, unicode names, huge bounds, several choices, tools. A request the
gateway refuses gets a clear OpenAI-shaped 4xx naming the field, reaches no upstream and
changes nothing; one it serves is reserved and charged for all it can generate."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest

from e2e.helpers import HELLO, HELLO_TOKENS, assert_error
from gateway_proc import Admin, D, GatewayFactory, GatewayProcess
from upstream import UpstreamServer

pytestmark = pytest.mark.e2e

MakeKey = Callable[..., tuple[str, str, str]]
CHAT: dict[str, Any] = {"model": "gpt-4o-mini", "messages": HELLO}
COMPLETION: dict[str, Any] = {"model": "gpt-4o-mini", "prompt": "hello"}
EMBEDDING: dict[str, Any] = {"model": "gpt-4o-mini", "input": "hello"}


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def refused(response: httpx.Response, status: int = 400, param: str | None = None) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["type"] == "invalid_request_error", body
    assert body["error"]["message"], body
    if param is not None:
        assert body["error"]["param"] == param, body


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


# -- wrong types, field by field ----------------------------------------------------------------
WRONG: list[tuple[str, dict[str, Any], str, Any]] = [
    # (path, valid body, field, wrong value)
    *[("/v1/chat/completions", CHAT, "model", v) for v in (None, 42, "", [], {"a": 1}, True)],
    *[
        ("/v1/chat/completions", CHAT, "messages", v)
        for v in (None, "hello", [], {}, [1], [{"content": "x"}], [{"role": 7}])
    ],
    *[("/v1/chat/completions", CHAT, "stream", v) for v in ("yes", 1, [], {})],
    *[("/v1/chat/completions", CHAT, "n", v) for v in (0, -1, 1.5, "2", True, 129, [])],
    *[("/v1/chat/completions", CHAT, "max_tokens", v) for v in (0, -5, 2.5, "10", False, [])],
    *[("/v1/chat/completions", CHAT, "max_completion_tokens", v) for v in (0, "10", 1.0)],
    *[("/v1/chat/completions", CHAT, "stream_options", v) for v in ("usage", 1, [])],
    ("/v1/chat/completions", CHAT, "stream_options.include_usage", "yes"),
    *[("/v1/chat/completions", CHAT, "tools", v) for v in ("search", {"a": 1}, [1], ["x"])],
    ("/v1/chat/completions", CHAT, "messages[0].content", 42),
    ("/v1/chat/completions", CHAT, "messages[0].content", {"text": "hi"}),
    ("/v1/chat/completions", CHAT, "messages[0].content", ["part"]),
    ("/v1/chat/completions", CHAT, "messages[0].name", 7),
    *[
        ("/v1/completions", COMPLETION, "prompt", v)
        for v in (None, 42, [], {}, [None], ["a", 1], [[]], [True])
    ],
    ("/v1/completions", COMPLETION, "max_tokens", "many"),
    ("/v1/completions", COMPLETION, "model", 3.5),
    *[("/v1/embeddings", EMBEDDING, "input", v) for v in (None, 7, [], {"x": 1}, [{"a": 1}])],
    ("/v1/embeddings", EMBEDDING, "stream", True),
]


def _with(body: dict[str, Any], field: str, value: Any) -> dict[str, Any]:
    out = {**body, "messages": [dict(m) for m in body.get("messages", [])]}
    if "messages" not in body:
        del out["messages"]
    if field == "stream_options.include_usage":
        out["stream_options"] = {"include_usage": value}
    elif field.startswith("messages[0]."):
        out["messages"][0][field.split(".", 1)[1]] = value
    elif value is None:
        out.pop(field, None)  # null where the field is required: missing
    else:
        out[field] = value
    return out


async def test_a_wrong_type_in_any_field_is_a_400_naming_it(
    http: httpx.AsyncClient, upstream: UpstreamServer, admin_api: Admin, wallet_and_key: MakeKey
) -> None:
    wallet_id, _key, secret = wallet_and_key("10")
    for path, body, field, value in WRONG:
        response = await http.post(path, json=_with(body, field, value), headers=bearer(secret))
        assert response.status_code == 400, (path, field, value, response.text)
        refused(response)
        param = response.json()["error"]["param"]
        assert param is not None, (path, field, value, response.text)
        assert param.split(".")[0].split("[")[0] == field.split(".")[0].split("[")[0], (
            field,
            response.text,
        )
    assert upstream.requests == [], "nothing went upstream"
    wallet = admin_api.assert_books_balance(wallet_id)
    assert D(wallet["balance"]) == 10
    assert admin_api.usage(wallet_id=wallet_id) == [], "nothing was recorded"


ADMIN_WRONG: list[tuple[str, str, dict[str, Any], Any]] = [
    # (method path with {w} for a wallet id, field, valid body, wrong value)
    *[("/admin/wallets", "name", {"name": "ok"}, v) for v in (None, "", "   ", 7, [], "x" * 201)],
    *[
        ("/admin/wallets", "balance", {"name": "ok"}, v)
        for v in (
            "-1",
            -1,
            "1e3",
            "abc",
            "0.0000001",
            True,
            [],
            {"v": 1},
            "NaN",
            "Infinity",
            10**30,
        )
    ],
    *[
        ("/admin/wallets/{w}/credits", "amount", {"amount": "1"}, v)
        for v in (None, "0", 0, "-2", "ten", False, [], "1.1234567")
    ],
    *[
        ("/admin/wallets/{w}/credits", "idempotency_key", {"amount": "1"}, v)
        for v in (5, [], {}, "k" * 256)
    ],
    ("/admin/wallets/{w}/credits", "memo", {"amount": "1"}, 5),
    *[
        (
            "/admin/transfers",
            "from_wallet",
            {"from_wallet": "{w}", "to_wallet": "{w2}", "amount": "1"},
            v,
        )
        for v in (None, 5, [])
    ],
    (
        "/admin/transfers",
        "to_wallet",
        {"from_wallet": "{w}", "to_wallet": "{w2}", "amount": "1"},
        {"id": "x"},
    ),
    (
        "/admin/transfers",
        "amount",
        {"from_wallet": "{w}", "to_wallet": "{w2}", "amount": "1"},
        "-1",
    ),
    *[("/admin/keys", "wallet_id", {"wallet_id": "{w}", "name": "k"}, v) for v in (None, 5, [])],
    *[("/admin/keys", "name", {"wallet_id": "{w}", "name": "k"}, v) for v in (None, "", 5)],
    *[
        ("/admin/keys", "models", {"wallet_id": "{w}", "name": "k"}, v)
        for v in ("gpt-4o", [1], [""], {"m": 1})
    ],
    *[
        ("/admin/keys", f, {"wallet_id": "{w}", "name": "k"}, v)
        for f in ("rpm", "tpm")
        for v in (0, -1, 1.5, "10", True, 10**13)
    ],
    *[
        ("/admin/keys", "spend_limit", {"wallet_id": "{w}", "name": "k"}, v)
        for v in ("-1", "lots", [], True)
    ],
    *[
        ("/admin/keys", "expires_at", {"wallet_id": "{w}", "name": "k"}, v)
        for v in (
            "tomorrow",
            "2030-01-01T00:00:00",
            True,
            [],
            -5,
            1e300,
            "0001-01-01T00:00:00+14:00",
        )
    ],
]


def test_a_wrong_admin_field_is_a_400_and_changes_nothing(
    admin_api: Admin, admin: httpx.Client
) -> None:
    wallet_id = admin_api.make_wallet("5")
    other_id = admin_api.make_wallet("5")
    wallets_before = admin.get("/admin/wallets").json()["data"]
    keys_before = admin.get("/admin/keys").json()["data"]
    for path, field, body, value in ADMIN_WRONG:
        concrete = {
            k: (v.replace("{w2}", other_id).replace("{w}", wallet_id) if isinstance(v, str) else v)
            for k, v in body.items()
        }
        concrete = (
            {**concrete, field: value}
            if value is not None
            else {k: v for k, v in concrete.items() if k != field}
        )
        response = admin.post(path.replace("{w}", wallet_id), json=concrete)
        refused(response, 400, field)
    assert admin.get("/admin/wallets").json()["data"] == wallets_before
    assert admin.get("/admin/keys").json()["data"] == keys_before
    for wallet in (wallet_id, other_id):
        assert D(admin_api.assert_books_balance(wallet)["balance"]) == 5


# -- bodies that are too big, too deep, or not what they claim ----------------------------------
async def test_bodies_too_deep_or_too_big(
    gateway_factory: GatewayFactory, upstream_factory: Callable[[str], UpstreamServer]
) -> None:
    """100,000 nested arrays (within the default 10 MiB limit) are a 400, not a crash, on every
    endpoint that reads a body; a body over the limit is a 413 on the admin API too."""
    upstream = upstream_factory("a")
    gateway = gateway_factory(
        backends=[{"name": "a", "base_url": upstream.url}],
        routes=[{"model": "m", "backend": "a", "input_price": "1", "output_price": "1"}],
    )
    with gateway.admin() as admin:
        wallet_id = admin.make_wallet("10")
        _key, secret = admin.make_key(wallet_id)
    deep = nested(100_000)
    in_messages = b'{"model": "m", "messages": [{"role": "user", "content": ' + deep + b"}]}"
    in_object = b'{"model": "m", "messages": ' + b'{"a":' * 50_000 + b"1" + b"}" * 50_000 + b"}"
    async with httpx.AsyncClient(base_url=gateway.url, trust_env=False, timeout=30) as http:
        for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"):
            for body in (deep, in_messages, in_object, nested(999), nested(1000)):
                response = await http.post(path, content=body, headers=bearer(secret))
                refused(response, 400)
        for path in (
            "/admin/wallets",
            f"/admin/wallets/{wallet_id}/credits",
            "/admin/keys",
            "/admin/transfers",
        ):
            auth = bearer(gateway.admin_token or "")
            refused(await http.post(path, content=deep, headers=auth), 400)
            big = b'{"name": "' + b"x" * (11 * 1024 * 1024) + b'"}'
            refused(await http.post(path, content=big, headers=auth), 413)
        # still serving, nothing changed
        ok = await http.post(
            "/v1/chat/completions", json={"model": "m", "messages": HELLO}, headers=bearer(secret)
        )
        assert ok.status_code == 200, ok.text
    assert len(upstream.requests) == 1
    with gateway.admin() as admin:
        assert len(admin.usage(wallet_id=wallet_id)) == 1
        admin.assert_books_balance(wallet_id)


@pytest.mark.parametrize(
    ("content", "headers"),
    [
        (b"\xff\xfe{}", {}),  # not UTF-8
        (
            b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "\\ud800"}]}',
            {},
        ),  # a lone surrogate
        (b'{"model": "gpt-4o-mini", "model": 5, "messages": []}', {}),  # a duplicate key
        (b"{" + b'"k": 1, ' * 5000 + b'"model": "x"}', {}),  # many keys
        (b'{"model": "gpt-4o-mini", "messages": [' + b"1e999999," * 5 + b"1]}", {}),
        (b"\x00" * 100, {}),
        (b'{"model": "gpt-4o-mini", "messages": []}', {"Content-Type": "text/plain"}),
    ],
    ids=[
        "not-utf8",
        "lone-surrogate",
        "duplicate-key",
        "many-keys",
        "huge-numbers",
        "nul",
        "text-plain",
    ],
)
async def test_odd_bodies_are_a_4xx_never_a_crash(
    http: httpx.AsyncClient,
    upstream: UpstreamServer,
    wallet_and_key: MakeKey,
    content: bytes,
    headers: dict[str, str],
) -> None:
    _wallet, _key, secret = wallet_and_key("10")
    response = await http.post(
        "/v1/chat/completions", content=content, headers={**bearer(secret), **headers}
    )
    assert 400 <= response.status_code < 500, response.text
    refused(response, response.status_code)
    assert (await http.get("/v1/wallet", headers=bearer(secret))).status_code == 200


# -- unicode -------------------------------------------------------------------------------------
NAMES = [
    "café ☕",
    "名前のある財布",
    "مرحبا",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "emoji 👩‍👩‍👧‍👦🏳️‍🌈",
    "tab\there",
    "zero\u200bwidth",
    "nul\u0000byte",
    "<script>alert(1)</script>",
    "'; DROP TABLE wallets; --",
    "x" * 200,
]


def test_unicode_names_round_trip(admin_api: Admin, admin: httpx.Client) -> None:
    for name in NAMES:
        wallet_id = admin_api.make_wallet("1", name=name)
        assert admin_api.wallet(wallet_id)["name"] == name
        key_id, _secret = admin_api.make_key(wallet_id, name=name)
        listed = {
            k["id"]: k
            for k in admin.get("/admin/keys", params={"wallet_id": wallet_id}).json()["data"]
        }
        assert listed[key_id]["name"] == name


async def test_unicode_model_names_and_content(
    http: httpx.AsyncClient, upstream: UpstreamServer, wallet_and_key: MakeKey
) -> None:
    _wallet, _key, secret = wallet_and_key("10")
    for model in ("模型", "gpt-4o-mini\u0000", "../../admin/wallets", "gpt‑4o‑mini"):
        response = await http.post(
            "/v1/chat/completions", json={**CHAT, "model": model}, headers=bearer(secret)
        )
        refused(response, 404)
        assert response.json()["error"]["code"] == "model_not_found"
        if "\u0000" not in model and ".." not in model:  # (clients never send those in a URL)
            response = await http.get(f"/v1/models/{model}", headers=bearer(secret))
            assert response.status_code == 404, response.text
    messages = [{"role": "user", "content": "héllo 👋 مرحبا 名前", "name": "ユーザー"}]
    response = await http.post(
        "/v1/chat/completions", json={**CHAT, "messages": messages}, headers=bearer(secret)
    )
    assert response.status_code == 200, response.text
    assert upstream.last.body["messages"] == messages


# -- bounds, choices, tools ----------------------------------------------------------------------
@pytest.mark.parametrize("bound", [10**6, 2**31, 2**63, 10**30])
@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
async def test_a_huge_bound_is_lowered_to_what_the_wallet_pays(
    http: httpx.AsyncClient,
    upstream: UpstreamServer,
    admin_api: Admin,
    wallet_and_key: MakeKey,
    bound: int,
    field: str,
) -> None:
    """On "costly" a token costs 0.001 credit: 0.05 pays for the prompt (8) and 42 tokens."""
    wallet_id, _key, secret = wallet_and_key("0.05")
    body = {
        **CHAT,
        "model": "costly",
        field: bound,
        "script": {"words": 100, "ignore_max_tokens": False, "prompt_tokens": HELLO_TOKENS},
    }
    response = await http.post("/v1/chat/completions", json=body, headers=bearer(secret))
    assert response.status_code == 200, response.text
    sent = upstream.last.body[field]
    assert 1 <= sent <= 50 - HELLO_TOKENS, sent
    wallet = admin_api.assert_books_balance(wallet_id)
    assert D(wallet["balance"]) == D("0.05") - D("0.001") * (HELLO_TOKENS + sent)


async def test_n_choices_are_all_reserved(
    http: httpx.AsyncClient,
    upstream: UpstreamServer,
    admin_api: Admin,
    wallet_and_key: MakeKey,
) -> None:
    """n=4 with max_tokens=10 reserves the prompt and 4 x 10 completion tokens; a wallet that
    can pay for fewer gets a per-choice bound that keeps all four within what it has."""
    wallet_id, _key, secret = wallet_and_key("10")
    body = {
        **CHAT,
        "model": "costly",
        "n": 4,
        "max_tokens": 10,
        "stream": True,
        "script": {"words": 3, "chunk_delay_s": 0.2},
    }
    async with http.stream(
        "POST", "/v1/chat/completions", json=body, headers=bearer(secret)
    ) as response:
        assert response.status_code == 200
        reserved = D(admin_api.wallet(wallet_id)["reserved"])
        async for _ in response.aiter_bytes():
            pass
    assert reserved == D("0.001") * (HELLO_TOKENS + 4 * 10), reserved
    admin_api.assert_books_balance(wallet_id)

    poor_id, _key, poor = wallet_and_key("0.02")  # prompt 8 + 12 tokens: 3 per choice
    body = {
        **CHAT,
        "model": "costly",
        "n": 4,
        "max_tokens": 10,
        "script": {"words": 10, "ignore_max_tokens": False, "prompt_tokens": HELLO_TOKENS},
    }
    response = await http.post("/v1/chat/completions", json=body, headers=bearer(poor))
    assert response.status_code == 200, response.text
    assert upstream.last.body["max_tokens"] == 3
    assert len(response.json()["choices"]) == 4
    wallet = admin_api.assert_books_balance(poor_id)
    assert D(wallet["balance"]) == D("0.02") - D("0.001") * (HELLO_TOKENS + 12)
    assert D(wallet["balance"]) >= 0

    broke_id, _key, broke = wallet_and_key("0.011")  # prompt 8 + 3 tokens: not one per choice
    response = await http.post("/v1/chat/completions", json={**body, "n": 4}, headers=bearer(broke))
    assert_error(response, 402, "insufficient_quota", "insufficient_quota")
    assert D(admin_api.assert_books_balance(broke_id)["balance"]) == D("0.011")


async def test_tools_pass_through_and_count_in_the_reservation(
    http: httpx.AsyncClient,
    upstream: UpstreamServer,
    admin_api: Admin,
    wallet_and_key: MakeKey,
) -> None:
    wallet_id, _key, secret = wallet_and_key("10")
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather in a city " * 20,
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    plain = {
        **CHAT,
        "model": "costly",
        "max_tokens": 5,
        "stream": True,
        "script": {"chunk_delay_s": 0.2, "words": 2},
    }
    reserved: list[Decimal] = []
    for body in (plain, {**plain, "tools": tools, "tool_choice": "auto"}):
        async with http.stream(
            "POST", "/v1/chat/completions", json=body, headers=bearer(secret)
        ) as response:
            assert response.status_code == 200
            reserved.append(D(admin_api.wallet(wallet_id)["reserved"]))
            async for _ in response.aiter_bytes():
                pass
        await asyncio.sleep(0)
    assert reserved[1] > reserved[0] + D("0.05"), "the tool definitions count in the prompt"
    assert upstream.last.body["tools"] == tools
    assert upstream.last.body["tool_choice"] == "auto"
    admin_api.assert_books_balance(wallet_id)


def test_the_shared_gateway_still_serves(gateway: GatewayProcess) -> None:
    with httpx.Client(base_url=gateway.url, trust_env=False) as http:
        assert http.get("/healthz").status_code == 200
        assert http.get("/readyz").status_code == 200
