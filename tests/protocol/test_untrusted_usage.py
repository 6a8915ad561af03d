"""Properties of what the gateway does with what a backend says: any usage block (any JSON,
any numbers) read from an answer or a chunk never raises and never makes the answer unreadable;
the meter's final usage is never negative, never more than the reservation pays for, its cost
never negative;
an SSE parser with an event limit never holds more than that limit."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.pricing import Prices
from gateway.protocol import wire
from gateway.protocol.dialects import Action, OpenAIDialect, ReportedUsage
from gateway.protocol.sse import Event, EventTooLarge, SSEParser
from gateway.proxy.metering import Meter
from gateway.tokens import TokenCounter

COUNTER = TokenCounter("o200k_base")
DIALECT = OpenAIDialect("/chat/completions")

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
COUNTS = st.none() | st.integers(min_value=-(10**40), max_value=10**40)
USAGE_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "prompt_tokens": COUNTS | JSON,
        "completion_tokens": COUNTS | JSON,
        "total_tokens": COUNTS | JSON,
        "prompt_tokens_details": st.fixed_dictionaries({}, optional={"cached_tokens": COUNTS})
        | JSON,
    },
)
USAGES = USAGE_FIELDS | JSON


def _answer(usage: Any) -> bytes:
    choice = {"index": 0, "message": {"role": "assistant", "content": "hello hello"}}
    return json.dumps({"choices": [choice], "usage": usage}).encode()


@settings(max_examples=300, deadline=None)
@given(usage=USAGES)
def test_any_usage_block_leaves_the_answer_readable(usage: Any) -> None:
    reported, texts = DIALECT.read_answer(_answer(usage))
    assert texts == ((0, "hello hello"),)
    if reported is not None:
        for value in (reported.prompt_tokens, reported.completion_tokens, reported.cached_tokens):
            assert value is None or type(value) is int


@settings(max_examples=300, deadline=None)
@given(usage=USAGES)
def test_any_usage_chunk_is_read_as_usage_or_content_never_raises(usage: Any) -> None:
    data = json.dumps({"choices": [], "usage": usage}).encode()
    step = DIALECT.read_event(Event(raw=b"data: " + data + b"\n\n", data=data, event=None))
    assert step.action in (Action.USAGE, Action.CONTENT)


@settings(max_examples=500, deadline=None)
@given(
    prompt=COUNTS,
    completion=COUNTS,
    cached=COUNTS,
    estimate=st.integers(min_value=0, max_value=10**6),
    reserved=st.integers(min_value=0, max_value=10**18),
    text=st.text(max_size=40),
    prices=st.tuples(*[st.integers(min_value=0, max_value=10**15)] * 3),
)
def test_the_meter_never_goes_negative_nor_past_what_is_paid(
    prompt: int | None,
    completion: int | None,
    cached: int | None,
    estimate: int,
    reserved: int,
    text: str,
    prices: tuple[int, int, int],
) -> None:
    meter = Meter(COUNTER, Prices(*prices), prompt_tokens=estimate)
    meter.record(((0, text),), meter.peek(((0, text),)))
    meter.reported = ReportedUsage(prompt, completion, cached)
    usage = meter.usage(reserved)
    assert usage.prompt_tokens >= 0
    assert usage.completion_tokens >= 0
    assert 0 <= usage.cached_tokens <= usage.prompt_tokens
    paid = meter.paid_completion(reserved)
    assert usage.completion_tokens <= paid
    # what the reservation pays for, at the estimate, is within the reservation
    assert Prices(*prices).cost_of(estimate, paid) <= reserved or paid == 0
    relayed = COUNTER.count_text(text)
    if completion is None or completion < 0 or completion > 1 << 40:  # not believable
        assert usage.completion_tokens == min(relayed, paid)
    else:
        assert usage.completion_tokens == min(completion, paid)
    assert meter.cost(usage) >= 0


@settings(max_examples=300, deadline=None)
@given(
    stream=st.binary(max_size=400),
    cuts=st.lists(st.integers(min_value=1, max_value=64), max_size=20),
    limit=st.integers(min_value=1, max_value=64),
)
def test_a_parser_with_a_limit_never_holds_more(stream: bytes, cuts: list[int], limit: int) -> None:
    parser = SSEParser(max_event_bytes=limit)
    unlimited = SSEParser()
    position = 0
    for size in [*cuts, len(stream)]:
        chunk = stream[position : position + size]
        position += size
        expected = unlimited.feed(chunk)
        try:
            got = parser.feed(chunk)
        except EventTooLarge:
            assert len(unlimited._buf) > limit
            return
        assert got == expected
        assert len(parser._buf) <= limit


def test_the_limit_is_on_one_event_not_the_stream() -> None:
    parser = SSEParser(max_event_bytes=20)
    events: list[Event] = []
    for _ in range(100):
        events += parser.feed(b"data: 0123456789\n\n")
    assert len(events) == 100
    with pytest.raises(EventTooLarge):
        parser.feed(b"data: " + b"x" * 30)
    assert wire.decode_answer(b'{"usage": {"prompt_tokens": "7"}}').usage is not None
