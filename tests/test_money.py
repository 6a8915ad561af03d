"""Exact money (gateway.money): decimal amounts as integers of micro-credits, never floats."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.money import MICRO, AmountError, ceil_div, format_micro, parse_amount, parse_price

#: The largest amount parse_amount accepts (10**12 credits), well inside a signed 64-bit integer.
MAX_MICRO = 10**18


def _is_exact_int(value: object) -> bool:
    return type(value) is int  # not a float, not a bool, not a Decimal


# -- parse_amount: what is accepted ------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "micro"),
    [
        ("12.5", 12_500_000),
        ("1", 1_000_000),
        ("0.000001", 1),
        ("0.1", 100_000),
        ("0.15", 150_000),
        ("123.456789", 123_456_789),
        ("1.500000", 1_500_000),  # trailing zeros beyond 6 places are still exact
        ("1000000000000", MAX_MICRO),
        (3, 3_000_000),
        (1, 1_000_000),
        (10**12, MAX_MICRO),
        (0.1, 100_000),
        (12.5, 12_500_000),
        (0.15, 150_000),
        (1e-6, 1),
        (2.000001, 2_000_001),
    ],
)
def test_parse_amount_accepts_decimals_and_numbers(value: object, micro: int) -> None:
    result = parse_amount(value)
    assert result == micro
    assert _is_exact_int(result)


def test_parse_price_is_an_amount_where_zero_is_allowed() -> None:
    assert parse_price("0") == 0
    assert parse_price("0.60") == 600_000
    with pytest.raises(AmountError):
        parse_price("-1")


# -- parse_amount: what is refused -------------------------------------------------------------
@pytest.mark.parametrize(
    "value",
    ["0.0000001", "1.1234567", "0.0000005", 1e-7, 0.1 + 0.2, "12.0000001"],
    ids=repr,
)
def test_more_than_six_decimals_is_refused(value: object) -> None:
    with pytest.raises(AmountError, match="6 decimal"):
        parse_amount(value)


@pytest.mark.parametrize(
    "value",
    [
        # Decimal's default context keeps 28 significant digits: these must not be rounded to
        # an exact micro-credit on the way.
        "1.00000000000000000000000000001",
        "0.000000" + "9" * 34,  # just under one micro-credit
        "999999999999.9999999999999999999",
    ],
)
def test_many_significant_digits_are_not_silently_rounded(value: str) -> None:
    with pytest.raises(AmountError):
        parse_amount(value)


@given(
    whole=st.integers(min_value=0, max_value=10**12 - 1),
    extra=st.integers(min_value=1, max_value=40),
    digits=st.data(),
)
def test_any_fraction_finer_than_a_micro_credit_is_refused(
    whole: int, extra: int, digits: st.DataObject
) -> None:
    micro_part = digits.draw(st.integers(min_value=0, max_value=MICRO - 1), label="micro")
    finer = digits.draw(st.integers(min_value=1, max_value=10**extra - 1), label="finer")
    finer_text = f"{finer:0{extra}d}".rstrip("0")
    text = f"{whole}.{micro_part:06d}{finer_text}"
    with pytest.raises(AmountError):
        parse_amount(text, allow_zero=True)


@pytest.mark.parametrize("value", ["-1", "-0.5", -1, -0.5, -(10**12)], ids=repr)
def test_negative_is_refused(value: object) -> None:
    with pytest.raises(AmountError):
        parse_amount(value)
    with pytest.raises(AmountError):
        parse_amount(value, allow_zero=True)


@pytest.mark.parametrize("value", ["0", "0.0", "0.000000", 0, 0.0], ids=repr)
def test_zero_is_refused_unless_allowed(value: object) -> None:
    with pytest.raises(AmountError, match="greater than zero"):
        parse_amount(value)
    result = parse_amount(value, allow_zero=True)
    assert result == 0
    assert _is_exact_int(result)


@pytest.mark.parametrize("value", [True, False])
@pytest.mark.parametrize("allow_zero", [True, False])
def test_booleans_are_refused(value: bool, allow_zero: bool) -> None:
    with pytest.raises(AmountError, match="boolean"):
        parse_amount(value, allow_zero=allow_zero)


@pytest.mark.parametrize(
    "value",
    [
        "",
        " ",
        "abc",
        "12.5 credits",
        "1e5",
        "1E-3",
        "1,5",
        "12.",
        ".5",
        "+1",
        "0x10",
        "1_000",
        "NaN",
        "nan",
        "inf",
        "Infinity",
        "--1",
        "1.2.3",
        "١٢",  # Arabic-Indic digits
        "１２",  # full-width digits
        None,
        [],
        {},
        [1],
        b"12",
        float("nan"),
        float("inf"),
        float("-inf"),
    ],
    ids=repr,
)
def test_junk_is_refused(value: object) -> None:
    with pytest.raises(AmountError):
        parse_amount(value, allow_zero=True)


def test_amount_error_is_a_value_error() -> None:
    assert issubclass(AmountError, ValueError)


@pytest.mark.parametrize(
    "value",
    ["1000000000000.000001", "1000000000001", 10**12 + 1, 10**30, "9" * 100, 1e300, 1e19],
    ids=lambda v: repr(v)[:30],
)
def test_huge_values_are_refused(value: object) -> None:
    with pytest.raises(AmountError, match="too large"):
        parse_amount(value)


# -- format_micro ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("micro", "text"),
    [
        (0, "0"),
        (1, "0.000001"),
        (10, "0.00001"),
        (100_000, "0.1"),
        (1_000_000, "1"),
        (12_500_000, "12.5"),
        (123_456_789, "123.456789"),
        (MAX_MICRO, "1000000000000"),
        (-1_500_000, "-1.5"),  # ledger amounts are signed
        (-1, "-0.000001"),
    ],
)
def test_format_micro(micro: int, text: str) -> None:
    assert format_micro(micro) == text


@given(st.integers(min_value=0, max_value=MAX_MICRO))
def test_format_then_parse_round_trips(micro: int) -> None:
    text = format_micro(micro)
    assert isinstance(text, str)
    result = parse_amount(text, allow_zero=True)
    assert result == micro
    assert _is_exact_int(result)


@given(st.integers(min_value=0, max_value=MAX_MICRO))
def test_format_micro_has_no_trailing_zeros_nor_exponent(micro: int) -> None:
    text = format_micro(micro)
    assert "e" not in text.lower()
    if "." in text:
        assert not text.endswith("0")
        assert len(text.split(".")[1]) <= 6


@given(st.integers(min_value=1, max_value=MAX_MICRO))
def test_format_micro_of_a_negative_is_the_positive_with_a_sign(micro: int) -> None:
    assert format_micro(-micro) == "-" + format_micro(micro)


@given(
    whole=st.integers(min_value=0, max_value=10**12 - 1),
    frac=st.text(alphabet="0123456789", min_size=1, max_size=6),
)
def test_parse_then_format_gives_the_canonical_text(whole: int, frac: str) -> None:
    micro = parse_amount(f"{whole}.{frac}", allow_zero=True)
    canonical = f"{whole}.{frac}".rstrip("0").rstrip(".")
    assert format_micro(micro) == canonical


# -- ceil_div ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("numerator", "denominator", "quotient"),
    [
        (0, 3, 0),
        (1, 3, 1),
        (2, 3, 1),
        (3, 3, 1),
        (4, 3, 2),
        (999_999, MICRO, 1),
        (MICRO, MICRO, 1),
        (MICRO + 1, MICRO, 2),
        (10**30 + 1, MICRO, 10**24 + 1),  # a float would lose the +1
    ],
)
def test_ceil_div(numerator: int, denominator: int, quotient: int) -> None:
    result = ceil_div(numerator, denominator)
    assert result == quotient
    assert _is_exact_int(result)


@given(st.integers(min_value=0, max_value=10**40), st.integers(min_value=1, max_value=10**20))
def test_ceil_div_is_the_smallest_quotient_that_covers(numerator: int, denominator: int) -> None:
    quotient = ceil_div(numerator, denominator)
    assert _is_exact_int(quotient)
    assert quotient * denominator >= numerator
    assert (quotient - 1) * denominator < numerator or quotient == 0
