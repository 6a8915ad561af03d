"""``gateway``: serve the API, migrate storage, and manage wallets and keys without a server.

Every subcommand takes ``--config PATH`` (default: ``$GATEWAY_CONFIG``, else ``./config.toml``)
and ``--json`` (machine-readable output in the admin API's shapes).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec

from gateway.admin import operations
from gateway.admin.views import key_json, ledger_json, transfer_json, usage_json, wallet_json
from gateway.config import Config, ConfigError, load_config
from gateway.errors import GatewayError, NotFound, StorageUnavailable
from gateway.logs import configure_logging
from gateway.services import open_store
from gateway.storage import Store

__all__ = ["main"]

_CONFIG_ENV = "GATEWAY_CONFIG"


def _config_path(given: str | None) -> str:
    return given or os.environ.get(_CONFIG_ENV) or "config.toml"


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help=f"config file (default: ${_CONFIG_ENV} or ./config.toml)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="gateway", description=__doc__.split("\n")[0])
    sub = root.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the API")
    _common(serve)
    serve.add_argument("--host", help="override [server] host")
    serve.add_argument("--port", type=int, help="override [server] port")
    serve.add_argument("--workers", type=int, default=1, help="worker processes (PostgreSQL)")

    migrate = sub.add_parser("migrate", help="create or migrate the storage schema")
    _common(migrate)

    wallets = sub.add_parser("wallets", help="wallets").add_subparsers(dest="action", required=True)
    p = wallets.add_parser("create")
    _common(p)
    p.add_argument("--name", required=True)
    p.add_argument("--balance", default=None)
    _common(wallets.add_parser("list"))
    p = wallets.add_parser("show")
    _common(p)
    p.add_argument("id")
    p = wallets.add_parser("credit")
    _common(p)
    p.add_argument("id")
    p.add_argument("amount")
    p.add_argument("--idempotency-key")
    p.add_argument("--memo")
    p = wallets.add_parser("ledger")
    _common(p)
    p.add_argument("id")
    p.add_argument("--limit", type=int, default=100)

    transfers = sub.add_parser("transfer", help="move credits between wallets")
    _common(transfers)
    transfers.add_argument("from_wallet")
    transfers.add_argument("to_wallet")
    transfers.add_argument("amount")
    transfers.add_argument("--idempotency-key")
    transfers.add_argument("--memo")

    keys = sub.add_parser("keys", help="app keys").add_subparsers(dest="action", required=True)
    p = keys.add_parser("create")
    _common(p)
    p.add_argument("--wallet", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--models", help="comma-separated allowlist")
    p.add_argument("--rpm", type=int)
    p.add_argument("--tpm", type=int)
    p.add_argument("--spend-limit")
    p.add_argument("--expires-at", help="ISO 8601 time with a zone")
    p = keys.add_parser("list")
    _common(p)
    p.add_argument("--wallet")
    p = keys.add_parser("revoke")
    _common(p)
    p.add_argument("id")

    usage = sub.add_parser("usage", help="usage records, newest first")
    _common(usage)
    usage.add_argument("--wallet")
    usage.add_argument("--key")
    usage.add_argument("--limit", type=int, default=100)
    return root


def _print(data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(msgspec.json.encode(data).decode() + "\n")
        return
    rows: list[dict[str, Any]] = data.get("data", [data])
    for row in rows:
        sys.stdout.write("  ".join(f"{k}={v}" for k, v in row.items() if v is not None) + "\n")


async def _with_store(config: Config, work: Callable[[Store], Awaitable[Any]]) -> Any:
    store = open_store(config)
    await store.open(migrate=True)
    try:
        return await work(store)
    finally:
        await store.close()


async def _manage(args: argparse.Namespace, config: Config) -> tuple[Any, int]:
    """Run one money or key command; returns (output, exit code)."""
    command, action = args.command, getattr(args, "action", None)

    async def work(store: Store) -> Any:
        if command == "wallets":
            if action == "create":
                body = {"name": args.name, "balance": args.balance}
                return wallet_json(await operations.create_wallet(store, body))
            if action == "list":
                return {"data": [wallet_json(w) for w in await store.list_wallets()]}
            if action == "show":
                wallet = await store.get_wallet(args.id)
                if wallet is None:
                    raise NotFound(f"No wallet '{args.id}'.")
                return wallet_json(wallet)
            if action == "credit":
                body = {
                    "amount": args.amount,
                    "idempotency_key": args.idempotency_key,
                    "memo": args.memo,
                }
                wallet, _ = await operations.credit_wallet(store, args.id, body)
                return wallet_json(wallet)
            if action == "ledger":
                if await store.get_wallet(args.id) is None:
                    raise NotFound(f"No wallet '{args.id}'.")
                limit = operations.parse_limit(args.limit)
                return {"data": [ledger_json(e) for e in await store.ledger(args.id, limit)]}
        if command == "transfer":
            body = {
                "from_wallet": args.from_wallet,
                "to_wallet": args.to_wallet,
                "amount": args.amount,
                "idempotency_key": args.idempotency_key,
                "memo": args.memo,
            }
            done, _ = await operations.transfer(store, body)
            return transfer_json(done)
        if command == "keys":
            if action == "create":
                body = {
                    "wallet_id": args.wallet,
                    "name": args.name,
                    "models": [m.strip() for m in args.models.split(",") if m.strip()]
                    if args.models
                    else None,
                    "rpm": args.rpm,
                    "tpm": args.tpm,
                    "spend_limit": args.spend_limit,
                    "expires_at": args.expires_at,
                }
                created, secret = await operations.create_key(store, body)
                return key_json(created, secret)
            if action == "list":
                return {"data": [key_json(k) for k in await store.list_keys(wallet_id=args.wallet)]}
            if action == "revoke":
                import time

                revoked = await store.revoke_key(args.id, time.time())
                if revoked is None:
                    raise NotFound(f"No key '{args.id}'.")
                return key_json(revoked)
        if command == "usage":
            limit = operations.parse_limit(args.limit)
            records = await store.list_usage(wallet_id=args.wallet, key_id=args.key, limit=limit)
            return {"data": [usage_json(u) for u in records]}
        raise AssertionError(f"unhandled command {command} {action}")

    try:
        return await _with_store(config, work), 0
    except GatewayError as exc:
        return exc.to_dict(), 1


def _serve(args: argparse.Namespace, config: Config, path: str) -> int:
    import uvicorn

    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    if args.workers < 1:
        sys.stderr.write("gateway: --workers must be at least 1\n")
        return 2
    if args.workers > 1 and not config.storage.url.startswith(("postgresql:", "postgres:")):
        sys.stderr.write(
            'gateway: --workers > 1 needs [storage] url = "postgresql://...": a SQLite ledger '
            "is served by one process\n"
        )
        return 2
    if not config.storage.url.startswith("sqlite:"):
        try:
            asyncio.run(_check_storage(config))
        except StorageUnavailable as exc:
            sys.stderr.write(f"gateway: storage unavailable: {exc.message}\n")
            return 1
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_config": None,
        "access_log": False,
        "timeout_graceful_shutdown": config.server.graceful_shutdown_s,
        "loop": "uvloop",
        "http": "httptools",
    }
    if args.workers > 1:
        os.environ[_CONFIG_ENV] = os.path.abspath(path)
        uvicorn.run("gateway.cli:app_from_env", factory=True, workers=args.workers, **options)
        return 0
    from gateway.app import create_app

    # uvicorn drains in-flight requests on SIGTERM, then re-raises the signal for the previous
    # handler: make that a clean exit (status 0), as service managers expect.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    uvicorn.run(create_app(config, own_process=True), **options)
    return 0


async def _check_storage(config: Config) -> None:
    """Open a shared database once before serving (and migrate it, unless told not to): one
    that is down or has no schema is one clear line and exit 1, not a traceback from each
    worker (with ``--workers N`` uvicorn would even exit 0); and N workers find the schema
    migrated already."""
    store = open_store(config)
    await store.open(migrate=config.storage.migrate_on_start)
    await store.close()


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def app_from_env() -> Any:
    """The app factory for worker processes (``--workers N``)."""
    from gateway.app import create_app

    config = load_config(os.environ[_CONFIG_ENV])
    configure_logging(config.logging.level, config.logging.format)
    return create_app(config, own_process=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    path = _config_path(args.config)
    try:
        config = load_config(path)
    except ConfigError as exc:
        sys.stderr.write(f"gateway: config error: {exc}\n")
        return 2
    configure_logging(config.logging.level, config.logging.format)
    if args.command == "serve":
        try:
            return _serve(args, config, path)
        except RuntimeError as exc:
            sys.stderr.write(f"gateway: {exc}\n")
            return 1
    if args.command == "migrate":

        async def migrate(store: Store) -> Any:
            return {"status": "migrated", "storage": config.storage.url.split("://", 1)[0]}

        _print(asyncio.run(_with_store(config, migrate)), args.json)
        return 0
    output, code = asyncio.run(_manage(args, config))
    if code:
        sys.stderr.write(msgspec.json.encode(output).decode() + "\n")
    else:
        _print(output, args.json)
    return code


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
