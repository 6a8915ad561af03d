"""Money and key operations with their input rules, shared by the admin API and the CLI so
both validate and answer alike."""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from gateway.errors import InvalidRequest, NotFound
from gateway.keys import hash_key, new_key_id, new_secret
from gateway.money import AmountError, parse_amount
from gateway.storage import ApiKey, Store, Transfer, Wallet

__all__ = [
    "create_key",
    "create_wallet",
    "credit_wallet",
    "parse_limit",
    "transfer",
]

_MAX_NAME = 200
_MAX_MEMO = 1000
_MAX_IDEMPOTENCY_KEY = 255
_YEAR_10000 = 253402300800  # unix seconds


def _amount(value: object, field: str, *, allow_zero: bool = False) -> int:
    if value is None:
        raise InvalidRequest(f"'{field}' is required.", param=field)
    try:
        return parse_amount(value, allow_zero=allow_zero)
    except AmountError as exc:
        raise InvalidRequest(f"'{field}' {exc}.", param=field) from None


def _text(body: Mapping[str, Any], field: str, *, required: bool, limit: int) -> str | None:
    value = body.get(field)
    if value is None:
        if required:
            raise InvalidRequest(f"'{field}' is required.", param=field)
        return None
    if not isinstance(value, str) or (required and not value.strip()) or len(value) > limit:
        raise InvalidRequest(
            f"'{field}' must be a {'non-empty ' if required else ''}string of at most "
            f"{limit} characters.",
            param=field,
        )
    return value


def _positive_int(body: Mapping[str, Any], field: str) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 10**12:
        raise InvalidRequest(f"'{field}' must be a positive integer.", param=field)
    return value


def _timestamp(value: object, field: str) -> float | None:
    if value is None:
        return None
    # a number must be a time that can be written back as ISO 8601
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < _YEAR_10000:
        return float(value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            if parsed.tzinfo is not None and 0 <= parsed.timestamp() < _YEAR_10000:
                return parsed.timestamp()
    raise InvalidRequest(
        f"'{field}' must be an ISO 8601 time with a zone (e.g. 2027-01-01T00:00:00Z) "
        "or unix seconds.",
        param=field,
    )


def parse_limit(value: object, *, default: int = 100, maximum: int = 1000) -> int:
    if value is None:
        return default
    try:
        limit = int(str(value))
    except ValueError:
        raise InvalidRequest("'limit' must be an integer.", param="limit") from None
    if not 1 <= limit <= maximum:
        raise InvalidRequest(f"'limit' must be between 1 and {maximum}.", param="limit")
    return limit


async def create_wallet(store: Store, body: Mapping[str, Any]) -> Wallet:
    name = _text(body, "name", required=True, limit=_MAX_NAME)
    assert name is not None
    balance = body.get("balance")
    opening = 0 if balance is None else _amount(balance, "balance", allow_zero=True)
    return await store.create_wallet(name, opening)


async def credit_wallet(
    store: Store, wallet_id: str, body: Mapping[str, Any]
) -> tuple[Wallet, bool]:
    amount = _amount(body.get("amount"), "amount")
    key = _text(body, "idempotency_key", required=False, limit=_MAX_IDEMPOTENCY_KEY)
    memo = _text(body, "memo", required=False, limit=_MAX_MEMO)
    return await store.credit(wallet_id, amount, idempotency_key=key, memo=memo)


async def transfer(store: Store, body: Mapping[str, Any]) -> tuple[Transfer, bool]:
    source = _text(body, "from_wallet", required=True, limit=_MAX_NAME)
    target = _text(body, "to_wallet", required=True, limit=_MAX_NAME)
    assert source is not None
    assert target is not None
    amount = _amount(body.get("amount"), "amount")
    key = _text(body, "idempotency_key", required=False, limit=_MAX_IDEMPOTENCY_KEY)
    memo = _text(body, "memo", required=False, limit=_MAX_MEMO)
    return await store.transfer(source, target, amount, idempotency_key=key, memo=memo)


async def create_key(store: Store, body: Mapping[str, Any]) -> tuple[ApiKey, str]:
    wallet_id = _text(body, "wallet_id", required=True, limit=_MAX_NAME)
    name = _text(body, "name", required=True, limit=_MAX_NAME)
    assert wallet_id is not None
    assert name is not None
    models = body.get("models")
    if models is not None and (
        not isinstance(models, list)
        or not all(isinstance(m, str) and m for m in models)
        or len(models) > 1000
    ):
        raise InvalidRequest("'models' must be an array of model names.", param="models")
    spend = body.get("spend_limit")
    expires_at = _timestamp(body.get("expires_at"), "expires_at")
    if await store.get_wallet(wallet_id) is None:
        raise NotFound(f"No wallet '{wallet_id}'.", param="wallet_id")
    secret = new_secret()
    key = ApiKey(
        id=new_key_id(),
        wallet_id=wallet_id,
        name=name,
        key_hash=hash_key(secret),
        prefix=secret[:7],
        created_at=time.time(),
        models=tuple(dict.fromkeys(models)) if models is not None else None,
        rpm=_positive_int(body, "rpm"),
        tpm=_positive_int(body, "tpm"),
        spend_limit=None if spend is None else _amount(spend, "spend_limit", allow_zero=True),
        expires_at=expires_at,
    )
    return await store.create_key(key), secret
