"""The admin API (``Authorization: Bearer <admin token>``), closed when no token is set."""

from __future__ import annotations

import time
from typing import Any

from litestar import Request, Response, delete, get, post
from litestar.handlers import HTTPRouteHandler

from gateway import operations
from gateway.api.common import json_body, json_response
from gateway.errors import AuthenticationError, NotFound
from gateway.keys import bearer_token, same_secret
from gateway.services import Services
from gateway.shapes import key_json, ledger_json, transfer_json, usage_json, wallet_json

__all__ = ["admin_handlers"]


def admin_handlers(services: Services) -> list[HTTPRouteHandler]:
    store = services.store

    def authorize(request: Request[Any, Any, Any]) -> None:
        expected = services.admin_token
        given = bearer_token(request.headers.get("authorization"))
        if not expected:
            raise AuthenticationError(
                "The admin API is closed: no admin token is configured "
                f"(set {services.config.admin.token_env})."
            )
        if given is None or not same_secret(given, expected):
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
    async def show_wallet(request: Request[Any, Any, Any], wallet_id: str) -> Response[bytes]:
        authorize(request)
        wallet = await store.get_wallet(wallet_id)
        if wallet is None:
            raise NotFound(f"No wallet '{wallet_id}'.")
        return json_response(wallet_json(wallet))

    @post("/admin/wallets/{wallet_id:str}/credits", status_code=201)
    async def credit(request: Request[Any, Any, Any], wallet_id: str) -> Response[bytes]:
        authorize(request)
        wallet, created = await operations.credit_wallet(store, wallet_id, await json_body(request))
        return json_response(wallet_json(wallet), 201 if created else 200)

    @post("/admin/transfers", status_code=201)
    async def transfer(request: Request[Any, Any, Any]) -> Response[bytes]:
        authorize(request)
        done, created = await operations.transfer(store, await json_body(request))
        return json_response(transfer_json(done), 201 if created else 200)

    @get("/admin/wallets/{wallet_id:str}/ledger")
    async def ledger(request: Request[Any, Any, Any], wallet_id: str) -> Response[bytes]:
        authorize(request)
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
    async def revoke_key(request: Request[Any, Any, Any], key_id: str) -> Response[bytes]:
        authorize(request)
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
        create_wallet, list_wallets, show_wallet, credit, transfer, ledger,
        create_key, list_keys, revoke_key, usage,
    ]
