"""The admin API (``Authorization: Bearer <admin token>``), closed when no token is set."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import structlog
from litestar import Request, Response, delete, get, post
from litestar.handlers import HTTPRouteHandler

from gateway.admin import operations
from gateway.admin.views import key_json, ledger_json, transfer_json, usage_json, wallet_json
from gateway.api.common import json_body, json_response
from gateway.errors import AuthenticationError, NotFound, RateLimited
from gateway.keys import bearer_token, same_secret
from gateway.services import Services

__all__ = ["FailedLogins", "admin_handlers"]

log = structlog.get_logger("gateway.admin")

_MAX_ADDRESSES = 100_000


class FailedLogins:
    """Failed admin logins per source address in a sliding window: an address with
    ``limit`` failures within ``window_s`` is refused (429) until the oldest leaves it."""

    def __init__(
        self, limit: int, window_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._limit, self._window, self._clock = limit, window_s, clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, address: str) -> deque[float] | None:
        times = self._failures.get(address)
        if times is not None:
            horizon = self._clock() - self._window
            while times and times[0] <= horizon:
                times.popleft()
            if not times:
                del self._failures[address]
                return None
        return times

    def check(self, address: str) -> None:
        times = self._recent(address)
        if times is not None and len(times) >= self._limit:
            wait = math.ceil(times[0] + self._window - self._clock())
            raise RateLimited(
                "Too many failed admin logins from this address: try again later.",
                retry_after=wait,
            )

    def failed(self, address: str) -> None:
        if len(self._failures) >= _MAX_ADDRESSES:
            for stale in [a for a in self._failures if self._recent(a) is None]:
                self._failures.pop(stale, None)
            if len(self._failures) >= _MAX_ADDRESSES:
                self._failures.clear()
        times = self._recent(address)
        if times is None:
            times = self._failures[address] = deque()
        times.append(self._clock())


def admin_handlers(services: Services) -> list[HTTPRouteHandler]:
    store = services.store
    settings = services.config.admin
    logins = FailedLogins(settings.max_failures, settings.failure_window_s)

    def authorize(request: Request[Any, Any, Any]) -> None:
        expected = services.admin_token
        if not expected:
            raise AuthenticationError(
                f"The admin API is closed: no admin token is configured (set {settings.token_env})."
            )
        address = request.client.host if request.client is not None else "unknown"
        logins.check(address)
        given = bearer_token(request.headers.get("authorization"))
        if given is None or not same_secret(given, expected):
            logins.failed(address)
            log.warning("admin_login_failed", client=address)
            raise AuthenticationError("A valid admin token is required.")

    @post("/admin/wallets", status_code=201)
    async def create_wallet(request: Request[Any, Any, Any]) -> Response[bytes]:
        authorize(request)
        wallet = await operations.create_wallet(store, await json_body(request))
        return json_response(wallet_json(wallet), 201)

    @get("/admin/wallets")
    async def list_wallets(request: Request[Any, Any, Any]) -> Response[bytes]:
        authorize(request)
        return json_response({"data": [wallet_json(w) for w in await store.list_wallets()]})

    @get("/admin/wallets/{wallet_id:str}")
    async def show_wallet(request: Request[Any, Any, Any]) -> Response[bytes]:
        authorize(request)
        wallet_id: str = request.path_params["wallet_id"]
        wallet = await store.get_wallet(wallet_id)
        if wallet is None:
            raise NotFound(f"No wallet '{wallet_id}'.")
        return json_response(wallet_json(wallet))

    @post("/admin/wallets/{wallet_id:str}/credits", status_code=201)
    async def credit(request: Request[Any, Any, Any]) -> Response[bytes]:
        authorize(request)
        wallet_id: str = request.path_params["wallet_id"]
        wallet, created = await operations.credit_wallet(store, wallet_id, await json_body(request))
        return json_response(wallet_json(wallet), 201 if created else 200)

    @post("/admin/transfers", status_code=201)
    async def transfer(request: Request[Any, Any, Any]) -> Response[bytes]:
        authorize(request)
        done, created = await operations.transfer(store, await json_body(request))
        return json_response(transfer_json(done), 201 if created else 200)

    @get("/admin/wallets/{wallet_id:str}/ledger")
    async def ledger(request: Request[Any, Any, Any]) -> Response[bytes]:
        authorize(request)
        wallet_id: str = request.path_params["wallet_id"]
        limit = operations.parse_limit(request.query_params.get("limit"))
        if await store.get_wallet(wallet_id) is None:
            raise NotFound(f"No wallet '{wallet_id}'.")
        entries = await store.ledger(wallet_id, limit)
        return json_response({"data": [ledger_json(e) for e in entries]})

    @post("/admin/keys", status_code=201)
    async def create_key(request: Request[Any, Any, Any]) -> Response[bytes]:
        authorize(request)
        key, secret = await operations.create_key(store, await json_body(request))
        return json_response(key_json(key, secret), 201)

    @get("/admin/keys")
    async def list_keys(request: Request[Any, Any, Any]) -> Response[bytes]:
        authorize(request)
        wallet_id = request.query_params.get("wallet_id") or None
        keys = await store.list_keys(wallet_id=wallet_id)
        return json_response({"data": [key_json(k) for k in keys]})

    @delete("/admin/keys/{key_id:str}", status_code=200)
    async def revoke_key(request: Request[Any, Any, Any]) -> Response[bytes]:
        authorize(request)
        key_id: str = request.path_params["key_id"]
        key = await store.revoke_key(key_id, time.time())
        if key is None:
            raise NotFound(f"No key '{key_id}'.")
        services.keys.forget(key.key_hash)
        return json_response(key_json(key))

    @get("/admin/usage")
    async def usage(request: Request[Any, Any, Any]) -> Response[bytes]:
        authorize(request)
        params = request.query_params
        records = await store.list_usage(
            wallet_id=params.get("wallet_id") or None,
            key_id=params.get("key_id") or None,
            limit=operations.parse_limit(params.get("limit")),
        )
        return json_response({"data": [usage_json(u) for u in records]})

    return [
        create_wallet,
        list_wallets,
        show_wallet,
        credit,
        transfer,
        ledger,
        create_key,
        list_keys,
        revoke_key,
        usage,
    ]
