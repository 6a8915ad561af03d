"""Security: app keys that cannot be guessed and are kept only as hashes; app keys and the admin
token that never stand in for each other; a key that sees only its own wallet; no secret in any
log line, error body, response header or metric over a run of every kind of request; no URL
or header from a client that steers the gateway; and the admin API refusing a brute force.

The module's gateway logs at ``debug`` and has suppliers whose keys are distinctive strings, one
of them an upstream that echoes the key it was sent in its error messages, as some do.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
import secrets
import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from e2e.helpers import HELLO, assert_error
from gateway_proc import ADMIN_TOKEN, GatewayFactory, poll
from raw_upstream import Play, RawRequest, RawUpstream, chunked, http_head, json_answer, sse
from upstream import UpstreamServer, free_port

pytestmark = pytest.mark.e2e

SUPPLIER_KEYS = {
    "SUPPLIER_A_KEY": "sk-supplier-a-" + secrets.token_hex(16),
    "SUPPLIER_ECHO_KEY": "sk-supplier-echo-" + secrets.token_hex(16),
    "SUPPLIER_DEAD_KEY": "sk-supplier-dead-" + secrets.token_hex(16),
}
MAX_FAILURES, WINDOW_S = 5, 2.0
MAX_BODY = 4096


class Secure:
    """The module's gateway, its suppliers, and every secret it has handed out."""

    def __init__(self, tmp: Path) -> None:
        self.polite = UpstreamServer("polite").start()
        self.trap = UpstreamServer("trap").start()  # nothing may ever call it
        self.echo = RawUpstream("echo").start()
        self.echo.play = _echo_the_key
        self.factory = GatewayFactory(tmp)
        quick = {"timeout_s": 2, "connect_timeout_s": 0.5}
        self.gateway = self.factory(
            backends=[
                {"name": "a", "base_url": self.polite.url, "api_key_env": "SUPPLIER_A_KEY"},
                {
                    "name": "echo",
                    "base_url": self.echo.url,
                    "api_key_env": "SUPPLIER_ECHO_KEY",
                    **quick,
                },
                {
                    "name": "dead",
                    "base_url": f"http://127.0.0.1:{free_port()}/v1",
                    "api_key_env": "SUPPLIER_DEAD_KEY",
                    **quick,
                },
            ],
            routes=[
                {"model": "m", "backend": "a", "input_price": "1", "output_price": "2"},
                {"model": "echo", "backend": "echo", "input_price": "1", "output_price": "2"},
                {"model": "dead", "backend": "dead", "input_price": "1", "output_price": "2"},
            ],
            env=SUPPLIER_KEYS,
            server={"max_body_bytes": MAX_BODY},
            logging={"level": "debug"},
            admin={"max_failures": MAX_FAILURES, "failure_window_s": WINDOW_S},
            routing={"failure_threshold": 1000, "cooldown_s": 1},
        )
        self.admin = self.gateway.admin()
        self.app_keys: list[str] = []
        self.seen: list[str] = []  # every response (status, headers, body) clients received

    def key(self, balance: str = "10", **opts: Any) -> tuple[str, str]:
        wallet_id = self.admin.make_wallet(balance)
        _key_id, secret = self.admin.make_key(wallet_id, **opts)
        self.app_keys.append(secret)
        return wallet_id, secret

    def client(self, local: str = "127.0.0.1", **kwargs: Any) -> httpx.Client:
        transport = httpx.HTTPTransport(local_address=local)
        return httpx.Client(
            base_url=self.gateway.url, timeout=30, trust_env=False, transport=transport, **kwargs
        )

    def record(self, response: httpx.Response) -> httpx.Response:
        self.seen.append(f"{response.status_code} {list(response.headers.items())} {response.text}")
        return response

    def stop(self) -> None:
        self.admin.close()
        self.factory.close()
        for server in (self.polite, self.trap, self.echo):
            server.stop()


def _echo_the_key(request: RawRequest) -> Play:
    """An upstream that quotes the credentials it got, in a 400 (relayed to the client), a
    401 (a failing backend) or inside a stream's error event."""
    auth = request.headers.get("authorization", "")
    script = request.json.get("script", {}) if isinstance(request.json, dict) else {}
    error = {
        "error": {
            "message": f"Incorrect API key provided: {auth}",
            "type": "x",
            "param": None,
            "code": "bad",
        }
    }
    if script.get("mode") == "stream":
        body = [
            sse({"id": "c", "choices": [{"index": 0, "delta": {"content": "hi"}}]}),
            sse(error),
            sse("[DONE]"),
        ]
        return Play(head=http_head(200, "text/event-stream", chunked=True), body=chunked(body))
    if script.get("mode") == "text":
        return json_answer(f"denied for {auth}".encode(), status=400)
    status = 401 if script.get("mode") == "401" else 400
    return json_answer(httpx.Response(200, json=error).content, status=status)


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secure]:
    setup = Secure(tmp_path_factory.mktemp("secure"))
    try:
        yield setup
    finally:
        setup.stop()


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


CHAT = {"model": "m", "messages": HELLO}


# -- app keys -----------------------------------------------------------------------------------
def test_app_keys_are_random_long_shown_once_and_stored_as_hashes(secure: Secure) -> None:
    made = [secure.key("1") for _ in range(40)]
    keys = [secret for _wallet, secret in made]
    assert len(set(keys)) == len(keys)
    for key in keys:
        assert re.fullmatch(r"gw-[A-Za-z0-9_-]{43}", key), key  # 32 random bytes, base64url
    # the random part looks random: every position varies, characters spread out
    body = [key[3:] for key in keys]
    assert all(len({k[i] for k in body}) > 10 for i in range(42))
    counts = Counter("".join(body))
    entropy = -sum(
        c / sum(counts.values()) * math.log2(c / sum(counts.values())) for c in counts.values()
    )
    assert entropy > 5.5, f"{entropy:.2f} bits per character (64 symbols: at most 6)"

    listing = secure.admin.http.get("/admin/keys").text
    shown_again = [key for key in keys if key in listing]
    assert not shown_again, "a key listing shows no secret"
    database = Path(secure.gateway.config["storage"]["url"].removeprefix("sqlite:///"))
    stored = b"".join(p.read_bytes() for p in database.parent.glob(database.name + "*"))
    for key in keys:
        assert key.encode() not in stored, "the secret is not in the database"
        assert hashlib.sha256(key.encode()).hexdigest().encode() in stored, "its hash is"


def test_app_keys_and_the_admin_token_never_stand_in_for_each_other(secure: Secure) -> None:
    _wallet, app_key = secure.key()
    with secure.client() as http:
        for path in ("/admin/wallets", "/admin/keys", "/admin/usage"):
            assert secure.record(http.get(path, headers=bearer(app_key))).status_code == 401
        for path in ("/v1/models", "/v1/wallet"):
            response = secure.record(http.get(path, headers=bearer(ADMIN_TOKEN)))
            assert response.status_code == 401
        response = secure.record(
            http.post("/v1/chat/completions", json=CHAT, headers=bearer(ADMIN_TOKEN))
        )
        assert response.status_code == 401
    # (a few failures from 127.0.0.1, under the brute-force limit: later tests use admin)
    time.sleep(WINDOW_S)


def test_a_key_sees_only_its_own_wallet(secure: Secure) -> None:
    mine, secret = secure.key("3")
    theirs, _ = secure.key("7")
    tricks: list[dict[str, Any]] = [
        {"params": {"wallet_id": theirs}},
        {"params": {"id": theirs, "wallet": theirs}},
        {
            "headers": {
                "X-Wallet-Id": theirs,
                "OpenAI-Organization": theirs,
                "OpenAI-Project": theirs,
            }
        },
        {"headers": {"X-Forwarded-User": theirs}},
    ]
    with secure.client() as http:
        for trick in tricks:
            headers = {**bearer(secret), **trick.get("headers", {})}
            response = secure.record(
                http.get("/v1/wallet", params=trick.get("params"), headers=headers)
            )
            assert response.status_code == 200
            assert response.json()["id"] == mine
            assert response.json()["balance"] == "3"
        for path in (
            f"/v1/wallet/{theirs}",
            f"/v1/wallets/{theirs}",
            f"/v1/usage?wallet_id={theirs}",
        ):
            response = secure.record(http.get(path, headers=bearer(secret)))
            assert response.status_code == 404, (path, response.text)
            assert theirs not in response.text


# -- no URL and no header steers the gateway -----------------------------------------------------
def test_nothing_in_a_request_makes_the_gateway_call_elsewhere(secure: Secure) -> None:
    secure.polite.reset()
    secure.trap.reset()
    _wallet, secret = secure.key()
    trap_host = f"127.0.0.1:{secure.trap.port}"
    bodies = [
        {
            **CHAT,
            "base_url": secure.trap.url,
            "url": secure.trap.url + "/chat/completions",
            "api_base": secure.trap.url,
            "baseURL": secure.trap.url,
            "endpoint": secure.trap.url,
        },
        {**CHAT, "model": secure.trap.url + "/chat/completions"},
        {**CHAT, "model": f"//{trap_host}/m"},
    ]
    headers = {
        "Host": trap_host,
        "X-Forwarded-Host": trap_host,
        "X-Original-URL": secure.trap.url,
        "X-Rewrite-URL": secure.trap.url,
        "Forwarded": f"host={trap_host}",
    }
    with secure.client() as http:
        statuses = [
            secure.record(
                http.post("/v1/chat/completions", json=body, headers={**bearer(secret), **headers})
            ).status_code
            for body in bodies
        ]
    assert statuses == [200, 404, 404]
    # a proxy-style absolute URL in the request line is no way out either
    request = (
        f"POST {secure.trap.url}/chat/completions HTTP/1.1\r\nHost: {trap_host}\r\n"
        f"Authorization: Bearer {secret}\r\nContent-Type: application/json\r\n"
        "Connection: close\r\n"
    )
    payload = httpx.Response(200, json=CHAT).content
    raw = (request + f"Content-Length: {len(payload)}\r\n\r\n").encode() + payload
    with socket.create_connection(("127.0.0.1", secure.gateway.port), timeout=10) as sock:
        sock.sendall(raw)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.split(b" ", 2)[1] in (b"200", b"400", b"404"), answer[:200]
    assert secure.trap.requests == [], "the trap was never called"
    assert len(secure.polite.requests) >= 1
    assert all(
        r.headers["Host"] == f"127.0.0.1:{secure.polite.port}" for r in secure.polite.requests
    )


def test_no_header_is_smuggled_upstream(secure: Secure) -> None:
    secure.polite.reset()
    _wallet, secret = secure.key()
    smuggled = {
        "Connection": "keep-alive, X-Hop-Secret",
        "X-Hop-Secret": "hop",
        "Keep-Alive": "timeout=5",
        "Proxy-Authorization": "Basic c2VjcmV0",
        "Proxy-Connection": "keep-alive",
        "TE": "trailers",
        "Trailer": "X-Checksum",
        "Upgrade": "h2c",
        "api-key": secret,
        "x-api-key": secret,
        "Cookie": f"session={secret}",
        "OpenAI-Organization": "org-someone-else",
        "OpenAI-Project": "proj-someone-else",
        "X-Forwarded-For": "10.0.0.1",
        "X-Real-IP": "10.0.0.1",
        "Forwarded": "for=10.0.0.1",
        "X-Request-Id": "client-chosen-id",
        "Expect": "100-continue",
        "X-Harmless": "kept",
    }
    with secure.client() as http:
        response = secure.record(
            http.post("/v1/chat/completions", json=CHAT, headers={**bearer(secret), **smuggled})
        )
    assert response.status_code == 200, response.text
    received = secure.polite.last.headers
    assert received["Authorization"] == f"Bearer {SUPPLIER_KEYS['SUPPLIER_A_KEY']}"
    assert received["Host"] == f"127.0.0.1:{secure.polite.port}"
    for name in smuggled:
        if name not in ("X-Harmless", "X-Request-Id"):
            assert name not in received, f"{name} reached the upstream"
    assert received["X-Harmless"] == "kept"
    assert received["X-Request-Id"] == response.headers["x-request-id"], "the gateway's own id"
    assert secret not in str(list(received.items())) + secure.polite.last.raw.decode()


# -- the admin API against a brute force ---------------------------------------------------------
def test_failed_admin_logins_are_rate_limited_per_address(secure: Secure) -> None:
    attacker, bystander = "127.0.0.2", "127.0.0.3"
    with secure.client(attacker) as http:
        for i in range(MAX_FAILURES):
            guess = http.get("/admin/wallets", headers=bearer(f"guess-{i}"))
            assert secure.record(guess).status_code == 401
        blocked = secure.record(http.get("/admin/wallets", headers=bearer(f"guess-{i + 1}")))
        assert_error(blocked, 429, "rate_limit_error", "rate_limit_exceeded")
        assert 1 <= int(blocked.headers["Retry-After"]) <= math.ceil(WINDOW_S)
        # while blocked, even the right token is refused from there: guessing learns nothing
        right = secure.record(http.get("/admin/wallets", headers=bearer(ADMIN_TOKEN)))
        assert_error(right, 429, "rate_limit_error", "rate_limit_exceeded")
        assert 1 <= int(right.headers["Retry-After"]) <= math.ceil(WINDOW_S)
    with secure.client(bystander) as http:  # another address is not affected
        assert http.get("/admin/wallets", headers=bearer(ADMIN_TOKEN)).status_code == 200
    with secure.client(attacker) as http:  # and the window passes
        poll(
            lambda: http.get("/admin/wallets", headers=bearer(ADMIN_TOKEN)).status_code,
            lambda code: code == 200,
            timeout=WINDOW_S + 2,
            interval=0.2,
            what="the attacker's window to pass",
        )


# -- secrets stay secret: a whole run of request kinds, then every byte it produced ---------------
async def _every_kind_of_request(secure: Secure, secret: str, poor: str) -> None:
    chat = {"model": "m", "messages": HELLO}
    async with httpx.AsyncClient(base_url=secure.gateway.url, timeout=30, trust_env=False) as http:
        auth = bearer(secret)
        calls: list[tuple[str, str, dict[str, Any]]] = [
            ("POST", "/v1/chat/completions", {"json": chat}),
            ("POST", "/v1/chat/completions", {"json": {**chat, "stream": True}}),
            (
                "POST",
                "/v1/chat/completions",
                {"json": {**chat, "stream": True, "stream_options": {"include_usage": True}}},
            ),
            ("POST", "/v1/completions", {"json": {"model": "m", "prompt": "hi"}}),
            ("POST", "/v1/embeddings", {"json": {"model": "m", "input": "hi"}}),
            ("GET", "/v1/models", {}),
            ("GET", "/v1/models/m", {}),
            ("GET", "/v1/wallet", {}),
            ("POST", "/v1/chat/completions", {"json": {**chat, "model": "echo"}}),  # 400 echo
            (
                "POST",
                "/v1/chat/completions",
                {"json": {**chat, "model": "echo", "script": {"mode": "text"}}},
            ),
            (
                "POST",
                "/v1/chat/completions",
                {"json": {**chat, "model": "echo", "script": {"mode": "401"}}},
            ),  # -> 502
            (
                "POST",
                "/v1/chat/completions",
                {"json": {**chat, "model": "echo", "stream": True, "script": {"mode": "stream"}}},
            ),
            ("POST", "/v1/chat/completions", {"json": {**chat, "model": "dead"}}),  # 502
            ("POST", "/v1/chat/completions", {"json": {**chat, "model": "nope"}}),  # 404
            ("POST", "/v1/chat/completions", {"content": b"{oops"}),  # 400
            (
                "POST",
                "/v1/chat/completions",
                {"json": {**chat, "messages": [{"role": "user", "content": "x" * MAX_BODY}]}},
            ),
            ("POST", "/v1/chat/completions", {"json": {**chat, "script": {"status": 500}}}),
        ]
        for method, path, kwargs in calls:
            secure.record(await http.request(method, path, headers=auth, **kwargs))
        # failures with credentials in them
        secure.record(
            await http.post("/v1/chat/completions", json=chat, headers=bearer(secret[:-1] + "x"))
        )
        secure.record(
            await http.post(
                "/v1/chat/completions", json=chat, headers=bearer(SUPPLIER_KEYS["SUPPLIER_A_KEY"])
            )
        )
        secure.record(
            await http.post(
                "/v1/chat/completions", json={**chat, "model": "m"}, headers=bearer(poor)
            )
        )  # 402
        secure.record(await http.get("/v1/wallet", headers=bearer(ADMIN_TOKEN)))
        # a client that goes away mid-stream
        slow = {**chat, "stream": True, "script": {"words": 50, "chunk_delay_s": 0.05}}
        async with http.stream("POST", "/v1/chat/completions", headers=auth, json=slow) as r:
            async for _ in r.aiter_bytes():
                break
        await asyncio.sleep(0.2)
        secure.record(await http.get("/metrics"))
        secure.record(await http.get("/healthz"))
        secure.record(await http.get("/readyz"))
    with secure.client("127.0.0.4") as admin:
        for path in ("/admin/wallets", "/admin/keys", "/admin/usage?limit=1000"):
            secure.record(admin.get(path, headers=bearer(ADMIN_TOKEN)))
            secure.record(admin.get(path, headers=bearer(ADMIN_TOKEN + "x")))
            secure.record(admin.get(path, headers=bearer(secret)))
        key_id = secure.admin.http.get("/admin/keys").json()["data"][0]["id"]
        secure.record(admin.delete(f"/admin/keys/{key_id}", headers=bearer(ADMIN_TOKEN)))


def test_no_secret_in_logs_errors_headers_or_metrics(secure: Secure) -> None:
    """Runs last: every request kind above and more, then the gateway is stopped and all it
    ever wrote (every start's stdout and stderr), every response the tests received and the
    metrics are searched for every supplier key, app key and the admin token."""
    _wallet, secret = secure.key()
    _poor_wallet, poor = secure.key("0.000001", models=["m"])
    asyncio.run(_every_kind_of_request(secure, secret, poor))
    assert secure.echo.requests, "the echoing upstream was called"
    assert any("Incorrect API key provided: Bearer ***" in seen for seen in secure.seen), (
        "the backend's error still reaches the client, its key masked"
    )
    assert any(
        SUPPLIER_KEYS["SUPPLIER_ECHO_KEY"] in r.headers.get("authorization", "")
        for r in secure.echo.requests
    ), "it got the key it echoes"
    gateway = secure.gateway
    secure.admin.close()
    assert gateway.stop() == 0
    logs = "\n".join(
        path.read_text(errors="replace")
        for path in gateway.stderr_path.parent.glob(f"{gateway.config_path.stem}.*.log")
    )
    assert "request_completed" in logs, "the logs were captured"
    assert "admin_login_failed" in logs
    everything = {"logs": logs, "responses": "\n".join(secure.seen)}
    secrets_ = {**SUPPLIER_KEYS, "admin token": ADMIN_TOKEN}
    secrets_.update({f"app key {i}": key for i, key in enumerate([*secure.app_keys, secret])})
    leaks = [
        f"{name} in {where}"
        for name, value in secrets_.items()
        for where, text in everything.items()
        if value in text
    ]
    assert not leaks, leaks
    # the near-misses (a key with one character changed) are not logged either
    assert secret[:-1] not in logs
