"""What tokens cost at a route's prices (gateway.pricing).

The contract: cost = ((prompt - cached) * input + cached * cached_input + completion * output)
/ 1e6, rounded UP to the micro-credit. Prices are credits per 1M tokens, kept as micro-credits
per 1M tokens, so the result is in micro-credits.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal, localcontext

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from gateway.money import MICRO, parse_price
from gateway.pricing import Prices, TokenCounts

# micro-credits per 1M tokens: up to 1,000,000 credits per 1M tokens
prices_st = st.integers(min_value=0, max_value=10**12)
tokens_st = st.integers(min_value=0, max_value=10**9)


@st.composite
def price_sets(draw: st.DrawFn) -> Prices:
    return Prices(input=draw(prices_st), output=draw(prices_st), cached_input=draw(prices_st))


def _exact_total(prices: Prices, prompt: int, completion: int, cached: int) -> int:
    """The un-divided total, in micro-credits * 1e6 (an exact integer)."""
    cached = min(max(cached, 0), max(prompt, 0))
    return (
        (prompt - cached) * prices.input
        + cached * prices.cached_input
        + (completion * prices.output)
    )


def _contract_cost(
    input_price: str,
    output_price: str,
    cached_price: str,
    prompt: int,
    completion: int,
    cached: int,
) -> int:
    """The contract's formula computed independently, in credits with Decimal, rounded up to
    the micro-credit and returned in micro-credits."""
    with localcontext() as ctx:
        ctx.prec = 200
        credits = (
            (prompt - cached) * Decimal(input_price)
            + cached * Decimal(cached_price)
            + completion * Decimal(output_price)
        ) / Decimal(1_000_000)
        micro = credits * MICRO
        return int(micro.to_integral_value(rounding=ROUND_CEILING))


# -- the formula, by example ---------------------------------------------------------------------
def test_cost_follows_the_contract_formula() -> None:
    # gpt-4o-mini at 0.15 / 0.60 / 0.075 credits per 1M tokens
    prices = Prices(
        input=parse_price("0.15"), output=parse_price("0.60"), cached_input=parse_price("0.075")
    )
    usage = TokenCounts(prompt_tokens=1000, completion_tokens=500, cached_tokens=400)
    # (600 * 0.15 + 400 * 0.075 + 500 * 0.60) / 1e6 credits = 420e-6 credits
    assert prices.cost(usage) == 420
    assert type(prices.cost(usage)) is int


def test_cost_rounds_up_to_the_micro_credit() -> None:
    prices = Prices(input=parse_price("0.3"), output=parse_price("0.3"), cached_input=0)
    assert prices.cost_of(1, 0) == 1  # 0.3 micro-credit -> 1
    assert prices.cost_of(1, 1) == 1  # 0.6 -> 1
    assert prices.cost_of(2, 2) == 2  # 1.2 -> 2
    assert prices.cost_of(10, 0) == 3  # exactly 3
    assert prices.cost_of(0, 0) == 0


def test_cost_of_is_cost_without_cache() -> None:
    prices = Prices(input=1_000_000, output=2_000_000, cached_input=500_000)
    assert prices.cost_of(10, 5) == prices.cost(TokenCounts(10, 5, 0)) == 20


def test_cached_tokens_are_charged_at_the_cached_price() -> None:
    prices = Prices(input=1_000_000, output=0, cached_input=250_000)
    assert prices.cost(TokenCounts(prompt_tokens=8, cached_tokens=4)) == 4 + 1


@pytest.mark.parametrize(("cached", "expected"), [(10, 5), (11, 5), (10**9, 5)])
def test_cached_above_prompt_is_clamped(cached: int, expected: int) -> None:
    prices = Prices(input=1_000_000, output=0, cached_input=500_000)
    assert prices.cost(TokenCounts(prompt_tokens=10, cached_tokens=cached)) == expected


def test_negative_counts_cost_nothing() -> None:
    prices = Prices(input=1_000_000, output=1_000_000, cached_input=1_000_000)
    assert prices.cost(TokenCounts(-5, -5, -5)) == 0
    assert prices.prompt_cost(-5) == 0


def test_prompt_cost() -> None:
    prices = Prices(input=parse_price("0.3"), output=10**12, cached_input=0)
    assert prices.prompt_cost(0) == 0
    assert prices.prompt_cost(1) == 1
    assert prices.prompt_cost(10) == 3
    assert prices.prompt_cost(11) == 4


# -- properties ----------------------------------------------------------------------------------
@given(price_sets(), tokens_st, tokens_st, tokens_st)
def test_cost_rounds_up_by_less_than_one_micro_credit(
    prices: Prices, prompt: int, completion: int, cached: int
) -> None:
    cost = prices.cost(TokenCounts(prompt, completion, cached))
    exact = _exact_total(prices, prompt, completion, cached)
    assert type(cost) is int
    assert cost >= 0
    assert cost * MICRO >= exact
    assert cost * MICRO < exact + MICRO


@given(
    st.decimals(min_value=0, max_value=10**6, places=6),
    st.decimals(min_value=0, max_value=10**6, places=6),
    st.decimals(min_value=0, max_value=10**6, places=6),
    tokens_st,
    tokens_st,
    tokens_st,
)
def test_cost_matches_the_contract_computed_in_decimal(
    input_price: Decimal,
    output_price: Decimal,
    cached_price: Decimal,
    prompt: int,
    completion: int,
    cached: int,
) -> None:
    texts = [f"{p:f}" for p in (input_price, output_price, cached_price)]
    prices = Prices(
        input=parse_price(texts[0]),
        output=parse_price(texts[1]),
        cached_input=parse_price(texts[2]),
    )
    clamped = min(cached, prompt)
    expected = _contract_cost(*texts, prompt, completion, clamped)
    assert prices.cost(TokenCounts(prompt, completion, cached)) == expected


@given(price_sets(), tokens_st, tokens_st, tokens_st, st.integers(min_value=1, max_value=10**6))
def test_cost_is_monotone_in_prompt_and_completion(
    prices: Prices, prompt: int, completion: int, cached: int, more: int
) -> None:
    base = prices.cost(TokenCounts(prompt, completion, cached))
    assert prices.cost(TokenCounts(prompt + more, completion, cached)) >= base
    assert prices.cost(TokenCounts(prompt, completion + more, cached)) >= base


@given(price_sets(), tokens_st, tokens_st, tokens_st, st.integers(min_value=1, max_value=10**6))
def test_more_cached_tokens_never_cost_more_when_cache_is_cheaper(
    prices: Prices, prompt: int, completion: int, cached: int, more: int
) -> None:
    assume(prices.cached_input <= prices.input)
    base = prices.cost(TokenCounts(prompt, completion, cached))
    assert prices.cost(TokenCounts(prompt, completion, cached + more)) <= base


# -- affordable_completion -----------------------------------------------------------------------
@given(
    st.integers(min_value=0, max_value=10**12),
    st.integers(min_value=1, max_value=10**12),
    st.integers(min_value=0, max_value=10**15),
    tokens_st,
)
def test_affordable_completion_is_the_largest_affordable_count(
    input_price: int, output_price: int, budget: int, prompt: int
) -> None:
    prices = Prices(input=input_price, output=output_price, cached_input=input_price)
    n = prices.affordable_completion(budget, prompt)
    assert type(n) is int
    assert n >= 0
    if prices.cost_of(prompt, 0) > budget:
        assert n == 0  # not even the prompt is affordable
        return
    assert prices.cost_of(prompt, n) <= budget
    assert prices.cost_of(prompt, n + 1) > budget


def test_affordable_completion_by_example() -> None:
    prices = Prices(input=1_000_000, output=2_000_000, cached_input=1_000_000)
    # 100 micro-credits; the prompt takes 10, each completion token 2
    assert prices.affordable_completion(100, 10) == 45
    assert prices.affordable_completion(10, 10) == 0
    assert prices.affordable_completion(5, 10) == 0
    assert prices.affordable_completion(0, 0) == 0


def test_affordable_completion_rounds_in_the_budget_s_favour() -> None:
    # 0.3 micro-credits a token: 3 micro-credits pay for 10 tokens, not 11
    prices = Prices(input=0, output=parse_price("0.3"), cached_input=0)
    assert prices.affordable_completion(3, 0) == 10
    assert prices.cost_of(0, 10) == 3
    assert prices.cost_of(0, 11) == 4


def test_free_completion_is_unbounded_when_the_prompt_is_affordable() -> None:
    prices = Prices(input=1_000_000, output=0, cached_input=1_000_000)
    n = prices.affordable_completion(10, 10)
    assert n >= 10**12
    assert prices.cost_of(10, n) <= 10


def test_free_completion_is_not_affordable_when_the_prompt_is_not() -> None:
    # cost_of(10, n) is 10 micro-credits for any n: a budget of 5 pays for no request at all,
    # as with a priced completion (which gives 0 here).
    prices = Prices(input=1_000_000, output=0, cached_input=1_000_000)
    n = prices.affordable_completion(5, 10)
    assert prices.cost_of(10, n) > 5
    assert n == 0


@given(price_sets(), st.integers(min_value=0, max_value=10**15), tokens_st)
@example(Prices(input=1_000_000, output=0, cached_input=1_000_000), 5, 10)
def test_affordable_completion_never_exceeds_the_budget(
    prices: Prices, budget: int, prompt: int
) -> None:
    n = prices.affordable_completion(budget, prompt)
    if prices.cost_of(prompt, 0) <= budget:
        assert prices.cost_of(prompt, n) <= budget
    else:
        assert n == 0


def test_prices_and_usage_are_frozen() -> None:
    prices = Prices(input=1, output=2, cached_input=3)
    usage = TokenCounts(1, 2, 3)
    with pytest.raises(AttributeError):
        prices.input = 5  # type: ignore[misc]
    with pytest.raises(AttributeError):
        usage.prompt_tokens = 5  # type: ignore[misc]
    assert TokenCounts() == TokenCounts(0, 0, 0)
