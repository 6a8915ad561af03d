"""Rules every storage engine applies the same way: argument checks, the refusals for a wallet
that cannot pay, a key whose limit cannot and a balance past the largest amount, the record of
an abandoned request, and a new transfer."""

from __future__ import annotations

import secrets
import time

from gateway.errors import InsufficientQuota, InvalidRequest, PermissionDenied
from gateway.money import MAX_MICRO, format_micro
from gateway.storage.base import Reservation, Transfer, UsageRecord, UsageStatus

__all__ = [
    "abandoned",
    "cannot_pay",
    "check_bounds",
    "check_settle",
    "key_limit_reached",
    "new_transfer",
    "past_the_largest_balance",
]


def check_bounds(minimum: int, maximum: int) -> None:
    if minimum < 0 or maximum < minimum:
        raise ValueError(f"need 0 <= minimum <= maximum, got {minimum} and {maximum}")


def check_settle(reservation: Reservation, usage: UsageRecord, cost: int) -> None:
    if cost < 0:
        raise ValueError(f"cost must not be negative, got {cost}")
    if (usage.request_id, usage.wallet_id) != (reservation.request_id, reservation.wallet_id):
        raise ValueError(
            "the usage record does not belong to this reservation (request_id or wallet_id)"
        )


def cannot_pay(wallet_id: str, amount: int, available: int) -> InsufficientQuota:
    return InsufficientQuota(
        f"wallet {wallet_id!r} cannot pay {format_micro(amount)} credits "
        f"(available: {format_micro(available)})"
    )


def key_limit_reached(left: int) -> PermissionDenied:
    """The refusal for a request its key's spend limit cannot cover (``left``: what it leaves)."""
    if left <= 0:
        return PermissionDenied("This key has reached its spend limit.", code="spend_limit_reached")
    return PermissionDenied(
        f"This key's spend limit cannot cover this request ({format_micro(left)} credits left).",
        code="spend_limit_reached",
    )


def past_the_largest_balance(wallet_id: str, param: str = "amount") -> InvalidRequest:
    return InvalidRequest(
        f"this would take the balance of wallet {wallet_id!r} past the largest amount "
        f"({format_micro(MAX_MICRO)} credits)",
        param=param,
    )


def abandoned(request_id: str, key_id: str | None, wallet_id: str, now: float) -> UsageRecord:
    """The usage record of a request whose reservation was released by recovery."""
    return UsageRecord(
        request_id=request_id,
        key_id=key_id,
        wallet_id=wallet_id,
        model="unknown",
        backend=None,
        prompt_tokens=0,
        completion_tokens=0,
        status=UsageStatus.ABANDONED.value,
        created_at=now,
    )


def new_transfer(
    from_wallet: str, to_wallet: str, amount: int, idempotency_key: str | None
) -> Transfer:
    """A transfer to attempt; ``InvalidRequest`` for a non-positive amount or a self-transfer."""
    if amount <= 0:
        raise InvalidRequest("a transfer must be greater than zero", param="amount")
    if from_wallet == to_wallet:
        raise InvalidRequest("a wallet cannot transfer to itself", param="to_wallet")
    return Transfer(
        id="tr_" + secrets.token_hex(8),
        from_wallet=from_wallet,
        to_wallet=to_wallet,
        amount=amount,
        created_at=time.time(),
        idempotency_key=idempotency_key,
    )
