"""Choosing a backend (gateway.proxy.routing.Router) and skipping failing ones
(gateway.proxy.breaker.CircuitBreaker, on a fake clock)."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from gateway.config import Config, parse_config
from gateway.proxy.breaker import CircuitBreaker
from gateway.proxy.routing import Router

BACKENDS = """
[[backends]]
name = "a"
base_url = "http://a.invalid/v1"

[[backends]]
name = "b"
base_url = "http://b.invalid/v1"

[[backends]]
name = "c"
kind = "demo"
"""


def _route(model: str, backend: str, input_price: str, output_price: str, **extra: str) -> str:
    lines = [
        "[[routes]]",
        f'model = "{model}"',
        f'backend = "{backend}"',
        f'input_price = "{input_price}"',
        f'output_price = "{output_price}"',
    ]
    lines += [f'{key} = "{value}"' for key, value in extra.items()]
    return "\n".join(lines) + "\n"


def _config(*routes: str, routing: str = "") -> Config:
    return parse_config(BACKENDS + "\n".join(routes) + textwrap.dedent(routing))


def _backends(routes: list[Any]) -> list[str]:
    return [route.backend.name for route in routes]


# -- Router --------------------------------------------------------------------------------------
def test_cheapest_route_first_and_the_order_flips_with_the_mix() -> None:
    router = Router(
        _config(
            _route("m", "a", "1", "10"),  # cheap on input
            _route("m", "b", "10", "1"),  # cheap on output
        )
    )
    # prompt-heavy: a costs 1000 + 100 = 1100 micro-credits, b 10000 + 10
    assert _backends(router.ranked("m", 1000, 10)) == ["a", "b"]
    # completion-heavy: a costs 10 + 10000, b 100 + 1000
    assert _backends(router.ranked("m", 10, 1000)) == ["b", "a"]


def test_ties_keep_config_order() -> None:
    forward = Router(_config(_route("m", "b", "2", "2"), _route("m", "a", "2", "2")))
    assert _backends(forward.ranked("m", 100, 100)) == ["b", "a"]
    backward = Router(_config(_route("m", "a", "2", "2"), _route("m", "b", "2", "2")))
    assert _backends(backward.ranked("m", 100, 100)) == ["a", "b"]
    # equal totals from different prices are a tie too: 100*1 + 100*3 == 100*3 + 100*1
    mixed = Router(_config(_route("m", "b", "1", "3"), _route("m", "a", "3", "1")))
    assert _backends(mixed.ranked("m", 100, 100)) == ["b", "a"]


def test_three_routes_and_other_models_stay_apart() -> None:
    router = Router(
        _config(
            _route("m", "a", "5", "5"),
            _route("other", "a", "0", "0"),
            _route("m", "b", "1", "1"),
            _route("m", "c", "3", "3"),
        )
    )
    assert _backends(router.ranked("m", 100, 100)) == ["b", "c", "a"]
    assert _backends(router.routes("m")) == ["a", "b", "c"]  # config order
    assert _backends(router.ranked("other", 100, 100)) == ["a"]
    assert router.models == ["m", "other"]


def test_unknown_model_has_no_routes() -> None:
    router = Router(_config(_route("m", "a", "1", "1")))
    assert router.ranked("nope", 10, 10) == []
    assert router.routes("nope") == []
    assert router.ranked("M", 10, 10) == []  # names are exact


def test_empty_config_routes_nothing() -> None:
    router = Router(parse_config(""))
    assert router.models == []
    assert router.ranked("m", 1, 1) == []


def test_route_carries_what_the_relay_needs() -> None:
    router = Router(
        _config(
            _route(
                "m",
                "a",
                "0.15",
                "0.60",
                cached_input_price="0.075",
                upstream_model="up-m",
                tokenizer="cl100k_base",
            ),
            _route("n", "b", "1", "2"),
        )
    )
    [route] = router.routes("m")
    assert route.model == "m"
    assert route.upstream_model == "up-m"
    assert route.backend.base_url == "http://a.invalid/v1"
    assert (route.prices.input, route.prices.output, route.prices.cached_input) == (
        150_000,
        600_000,
        75_000,
    )
    assert route.encoding == "cl100k_base"
    assert route.prices.cost_of(1000, 500) == 150 + 300
    # ordering uses the unrounded total (micro-credits x 1e6), so tiny requests still rank
    assert route.estimate(1000, 500) == (150 + 300) * 1_000_000
    [plain] = router.routes("n")
    assert plain.upstream_model == "n"
    assert plain.prices.cached_input == plain.prices.input  # no cached price: the input price
    assert plain.encoding == "o200k_base"


def test_one_breaker_per_backend_with_the_config_s_settings() -> None:
    router = Router(
        _config(
            _route("m", "a", "1", "1"),
            _route("n", "a", "1", "1"),
            routing="""
            [routing]
            failure_threshold = 1
            cooldown_s = 5
            """,
        )
    )
    assert set(router.breakers) == {"a", "b", "c"}
    first, second = router.routes("m")[0], router.routes("n")[0]
    assert router.breaker(first) is router.breaker(second)
    router.breaker(first).record_failure()  # threshold 1
    assert router.breaker(second).state == "open"


@given(
    st.lists(
        st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 50), st.integers(0, 50)),
        min_size=1,
        max_size=3,
        unique_by=lambda route: route[0],
    ),
    st.integers(0, 10**6),
    st.integers(0, 10**6),
)
def test_ranked_is_sorted_by_estimate_then_config_order(
    routes: list[tuple[str, int, int]], prompt: int, completion: int
) -> None:
    router = Router(_config(*(_route("m", b, str(i), str(o)) for b, i, o in routes)))
    ranked = router.ranked("m", prompt, completion)
    assert sorted(_backends(ranked)) == sorted(b for b, _, _ in routes)
    keys = [(r.estimate(prompt, completion), r.order) for r in ranked]
    assert keys == sorted(keys)


# -- CircuitBreaker ------------------------------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def breaker(clock: FakeClock) -> CircuitBreaker:
    return CircuitBreaker("backend-a", failure_threshold=3, cooldown_s=30.0, clock=clock)


def _open(breaker: CircuitBreaker) -> None:
    for _ in range(3):
        breaker.record_failure()
    assert breaker.state == "open"


def test_closed_until_threshold_consecutive_failures(breaker: CircuitBreaker) -> None:
    assert breaker.state == "closed"
    assert breaker.allow()
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state == "closed"
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state == "open"
    assert not breaker.allow()


def test_success_resets_the_failure_count(breaker: CircuitBreaker) -> None:
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state == "closed"
    breaker.record_failure()
    assert breaker.state == "open"


def test_open_refuses_until_the_cooldown_passes(breaker: CircuitBreaker, clock: FakeClock) -> None:
    _open(breaker)
    clock.now += 29.9
    assert breaker.state == "open"
    assert not breaker.allow()
    clock.now += 0.1
    assert breaker.state == "half_open"
    assert breaker.allow()


def test_half_open_lets_exactly_one_probe_through(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    _open(breaker)
    clock.now += 30
    assert breaker.allow()
    assert not breaker.allow()
    assert not breaker.allow()
    clock.now += 1000  # time alone does not free the probe slot
    assert not breaker.allow()


def test_probe_success_closes(breaker: CircuitBreaker, clock: FakeClock) -> None:
    _open(breaker)
    clock.now += 30
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == "closed"
    assert all(breaker.allow() for _ in range(5))
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state == "closed"  # the count starts again from zero


def test_probe_failure_reopens_for_a_full_cooldown(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    _open(breaker)
    clock.now += 30
    assert breaker.allow()
    breaker.record_failure()  # one failure is enough for a probe
    assert breaker.state == "open"
    assert not breaker.allow()
    clock.now += 29
    assert not breaker.allow()
    clock.now += 1
    assert breaker.allow()  # a new probe
    assert not breaker.allow()


def test_failures_while_open_do_not_extend_the_cooldown(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    _open(breaker)
    clock.now += 20
    breaker.record_failure()  # a request that started before the circuit opened
    clock.now += 10
    assert breaker.state == "half_open"


def test_released_probe_frees_the_slot(breaker: CircuitBreaker, clock: FakeClock) -> None:
    _open(breaker)
    clock.now += 30
    assert breaker.allow()
    breaker.release_probe()
    assert breaker.allow()
    assert not breaker.allow()


def test_threshold_of_one(clock: FakeClock) -> None:
    breaker = CircuitBreaker("b", failure_threshold=1, cooldown_s=0.0, clock=clock)
    breaker.record_failure()
    assert breaker.state == "half_open"  # no cooldown: straight to probing
    assert breaker.allow()
    assert not breaker.allow()


def _events(logs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(entry["event"], entry.get("backend")) for entry in logs]


def test_transitions_are_logged_with_the_backend_name(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    with structlog.testing.capture_logs() as logs:
        breaker.record_failure()
        breaker.record_failure()
        assert logs == []  # nothing to say while closed
        breaker.record_failure()
        assert not breaker.allow()
        clock.now += 30
        assert breaker.allow()
        assert not breaker.allow()  # the refused second probe is not a transition
        breaker.record_failure()
        clock.now += 30
        assert breaker.allow()
        breaker.record_success()
        breaker.record_success()  # already closed: nothing new
    assert _events(logs) == [
        ("circuit_opened", "backend-a"),
        ("circuit_half_open", "backend-a"),
        ("circuit_opened", "backend-a"),
        ("circuit_half_open", "backend-a"),
        ("circuit_closed", "backend-a"),
    ]
    opened = logs[0]
    assert opened["log_level"] == "warning"
    assert opened["failures"] == 3
    assert opened["cooldown_s"] == 30.0
    assert logs[1]["log_level"] == "info"
    assert logs[-1]["log_level"] == "info"
