"""Exact money: credits as integers of micro-credits, never floats.

Amounts travel as decimal strings (``"12.5"``); numbers are accepted on input. Prices are
credits per 1M tokens, so the cost of one token at price ``p`` is ``p`` micro-credits:
``cost_micro = ceil(sum(tokens * price_micro) / 1_000_000)`` with prices kept in micro-credits
per 1M tokens (exact integers too).
"""

from __future__ import annotations

import re
from decimal import Context, Decimal, InvalidOperation, localcontext

__all__ = [
    "MAX_MICRO",
    "MICRO",
    "AmountError",
    "ceil_div",
    "format_micro",
    "parse_amount",
    "parse_price",
]

MICRO = 1_000_000
_DECIMAL = re.compile(r"^[0-9]+(\.[0-9]+)?$")
#: The largest amount, and the largest balance a wallet may hold: well inside int64 (PostgreSQL's
#: BIGINT; SQLite turns an integer past 2^63 into a float).
MAX_MICRO = 10**18
_MAX_CREDITS = Decimal(MAX_MICRO) / MICRO
_MAX_WHOLE_DIGITS = 13  # 10**18 micro-credits has 13 digits of whole credits
_EXACT = Context(prec=64)  # holds every digit an accepted amount can have


class AmountError(ValueError):
    """An amount or price that is not a non-negative decimal exact to 1e-6."""


def _to_decimal(value: object) -> Decimal:
    if isinstance(value, bool):
        raise AmountError("must be a decimal string or number, not a boolean")
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise AmountError("must be a finite number")
        return Decimal(repr(value))
    if isinstance(value, str):
        text = value.strip()
        if not _DECIMAL.match(text):
            raise AmountError(f'{value!r} is not a decimal number like "12.5"')
        whole, _, fraction = text.partition(".")
        if len(whole.lstrip("0")) > _MAX_WHOLE_DIGITS:
            raise AmountError("is too large")
        if len(fraction.rstrip("0")) > 6:
            raise AmountError("has more than 6 decimal places (the unit is 1e-6 credit)")
        try:
            return Decimal(text)
        except InvalidOperation as exc:  # pragma: no cover - the regex already guards
            raise AmountError(f"{value!r} is not a decimal number") from exc
    raise AmountError("must be a decimal string or number")


def parse_amount(value: object, *, allow_zero: bool = False) -> int:
    """Parse a credit amount into micro-credits; exact to 1e-6, never negative."""
    dec = _to_decimal(value)
    if dec < 0:
        raise AmountError("must not be negative")
    if dec > _MAX_CREDITS:
        raise AmountError("is too large")
    with localcontext(_EXACT):
        micro = dec.scaleb(6)  # exact: the context holds every digit an amount may have
        if micro != micro.to_integral_value():
            raise AmountError("has more than 6 decimal places (the unit is 1e-6 credit)")
    result = int(micro)
    if result > MAX_MICRO:
        raise AmountError("is too large")
    if result == 0 and not allow_zero:
        raise AmountError("must be greater than zero")
    return result


def parse_price(value: object) -> int:
    """Parse a price (credits per 1M tokens) into micro-credits per 1M tokens."""
    return parse_amount(value, allow_zero=True)


def ceil_div(numerator: int, denominator: int) -> int:
    """Integer division rounding up (for non-negative operands)."""
    return -(-numerator // denominator)


def format_micro(micro: int) -> str:
    """Render micro-credits as a decimal string without trailing zeros: 12500000 -> "12.5"."""
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(micro), MICRO)
    if frac == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{frac:06d}".rstrip("0")
