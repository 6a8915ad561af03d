"""Records to and from the SQL engines' rows: the columns the SQLite and PostgreSQL tables
share (listed in the order of the record dataclasses' fields in :mod:`gateway.storage.base`, so
that a row converts with ``Record(*row)``), one converter each way, and the positions that a
statement fills in itself, by name.

What differs between the engines is only how a value is stored: a key's ``models`` as a JSON
array in text (SQLite) or a ``TEXT[]`` (PostgreSQL), a usage record's ``stream`` as an integer
or a boolean. The converters read both; the writers say which they write.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from gateway.storage.base import ApiKey, UsageRecord

__all__ = [
    "ENTRY_COLUMNS",
    "KEY_COLUMNS",
    "TRANSFER_COLUMNS",
    "USAGE_COLUMNS",
    "USAGE_COST",
    "USAGE_EXTRA",
    "USAGE_FIELDS",
    "USAGE_SHORTFALL",
    "WALLET_COLUMNS",
    "key_from_row",
    "key_params",
    "placeholders",
    "usage_from_row",
    "usage_params",
]

WALLET_COLUMNS = "id, name, balance, reserved, created_at"
ENTRY_COLUMNS = (
    "id, wallet_id, kind, amount, balance_after, created_at, request_id, idempotency_key, memo, ref"
)
KEY_COLUMNS = (
    "id, wallet_id, name, key_hash, prefix, created_at, models, rpm, tpm, spend_limit, spent, "
    "expires_at, revoked_at"
)
USAGE_COLUMNS = (
    "request_id, key_id, wallet_id, model, backend, prompt_tokens, completion_tokens, status, "
    "created_at, cached_tokens, cost, shortfall, stream, latency_ms, endpoint, extra"
)
TRANSFER_COLUMNS = "id, from_wallet, to_wallet, amount, created_at, idempotency_key"

USAGE_FIELDS = tuple(USAGE_COLUMNS.split(", "))
#: Where a usage record's values sit in :func:`usage_params` (settlements fill them in).
USAGE_COST = USAGE_FIELDS.index("cost")
USAGE_SHORTFALL = USAGE_FIELDS.index("shortfall")
USAGE_EXTRA = USAGE_FIELDS.index("extra")
_USAGE_STREAM = USAGE_FIELDS.index("stream")
_KEY_MODELS = KEY_COLUMNS.split(", ").index("models")
assert len(USAGE_FIELDS) - 1 == USAGE_EXTRA  # a record without extra binds all but the last


def placeholders(count: int) -> str:
    """``?, ?, ...`` for ``count`` values (SQLite's parameters)."""
    return ", ".join("?" * count)


def usage_params(usage: UsageRecord, *, stream: type[int] | type[bool] = bool) -> list[Any]:
    """A usage record's values in :data:`USAGE_COLUMNS` order (``extra`` as JSON text, or None
    when empty; ``stream`` as ``int`` for SQLite, whose driver binds a bool more slowly)."""
    return [
        usage.request_id, usage.key_id, usage.wallet_id, usage.model, usage.backend,
        usage.prompt_tokens, usage.completion_tokens, str(usage.status), usage.created_at,
        usage.cached_tokens, usage.cost, usage.shortfall, stream(usage.stream), usage.latency_ms,
        usage.endpoint, json.dumps(usage.extra) if usage.extra else None,
    ]  # fmt: skip


def usage_from_row(row: Iterable[Any]) -> UsageRecord:
    values = list(row)
    values[_USAGE_STREAM] = bool(values[_USAGE_STREAM])
    values[USAGE_EXTRA] = json.loads(values[USAGE_EXTRA]) if values[USAGE_EXTRA] else {}
    return UsageRecord(*values)


def key_params(key: ApiKey, *, models_as_json: bool) -> list[Any]:
    """A key's values in :data:`KEY_COLUMNS` order."""
    models: Any = None if key.models is None else list(key.models)
    if models is not None and models_as_json:
        models = json.dumps(models)
    return [
        key.id, key.wallet_id, key.name, key.key_hash, key.prefix, key.created_at, models,
        key.rpm, key.tpm, key.spend_limit, key.spent, key.expires_at, key.revoked_at,
    ]  # fmt: skip


def key_from_row(row: Iterable[Any]) -> ApiKey:
    values = list(row)
    models = values[_KEY_MODELS]
    if isinstance(models, str):  # SQLite: a JSON array
        models = json.loads(models)
    values[_KEY_MODELS] = None if models is None else tuple(models)
    return ApiKey(*values)
