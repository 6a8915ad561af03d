"""The JSON shapes of the admin API, shared by the CLI's ``--json``: amounts as decimal
strings, timestamps as ISO 8601 in UTC."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from gateway.money import format_micro
from gateway.storage import ApiKey, LedgerEntry, Transfer, UsageRecord, Wallet

__all__ = ["iso", "key_json", "ledger_json", "transfer_json", "usage_json", "wallet_json"]


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def wallet_json(wallet: Wallet) -> dict[str, Any]:
    return {
        "id": wallet.id,
        "object": "wallet",
        "name": wallet.name,
        "balance": format_micro(wallet.balance),
        "reserved": format_micro(wallet.reserved),
        "available": format_micro(wallet.available),
        "created_at": iso(wallet.created_at),
    }


def ledger_json(entry: LedgerEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "wallet_id": entry.wallet_id,
        "kind": entry.kind,
        "amount": format_micro(entry.amount),
        "balance_after": format_micro(entry.balance_after),
        "request_id": entry.request_id,
        "idempotency_key": entry.idempotency_key,
        "memo": entry.memo,
        "transfer_id": entry.ref,
        "created_at": iso(entry.created_at),
    }


def transfer_json(transfer: Transfer) -> dict[str, Any]:
    return {
        "id": transfer.id,
        "object": "transfer",
        "from_wallet": transfer.from_wallet,
        "to_wallet": transfer.to_wallet,
        "amount": format_micro(transfer.amount),
        "idempotency_key": transfer.idempotency_key,
        "created_at": iso(transfer.created_at),
    }


def key_json(key: ApiKey, secret: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": key.id,
        "object": "api_key",
        "wallet_id": key.wallet_id,
        "name": key.name,
        "prefix": key.prefix,
        "models": list(key.models) if key.models is not None else None,
        "rpm": key.rpm,
        "tpm": key.tpm,
        "spend_limit": format_micro(key.spend_limit) if key.spend_limit is not None else None,
        "spent": format_micro(key.spent),
        "expires_at": iso(key.expires_at),
        "created_at": iso(key.created_at),
        "revoked": key.revoked_at is not None,
        "revoked_at": iso(key.revoked_at),
    }
    if secret is not None:
        out["key"] = secret
    return out


def usage_json(usage: UsageRecord) -> dict[str, Any]:
    return {
        "request_id": usage.request_id,
        "key_id": usage.key_id,
        "wallet_id": usage.wallet_id,
        "model": usage.model,
        "backend": usage.backend,
        "endpoint": usage.endpoint,
        "stream": usage.stream,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "cached_tokens": usage.cached_tokens,
        "cost": format_micro(usage.cost),
        "shortfall": format_micro(usage.shortfall),
        "status": usage.status,
        "error": usage.extra.get("error"),
        "latency_ms": usage.latency_ms,
        "created_at": iso(usage.created_at),
    }
