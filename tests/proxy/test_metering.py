"""Measuring what a request consumed (gateway.proxy.metering.Meter) from OpenAI wire shapes, as the
relay reads them through the OpenAI dialect (gateway.protocol.dialects, gateway.protocol.wire)."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.pricing import Prices, TokenCounts
from gateway.protocol import wire
from gateway.protocol.dialects import Action, OpenAIDialect, Step
from gateway.protocol.sse import Event
from gateway.proxy.metering import Meter
from gateway.tokens import TokenCounter

COUNTER = TokenCounter("o200k_base")
PRICES = Prices(input=1_000_000, output=2_000_000, cached_input=500_000)  # 1 / 2 / 0.5 per token


#: A reservation that pays for any usage these tests report (micro-credits).
PLENTY = 10**15


def _meter(prompt_tokens: int = 10) -> Meter:
    return Meter(COUNTER, PRICES, prompt_tokens=prompt_tokens)


def _paying(completion: int, prompt: int = 10) -> int:
    """A reservation that pays for the prompt and exactly ``completion`` tokens."""
    return PRICES.cost_of(prompt, completion)


DIALECT = OpenAIDialect("/chat/completions")


def _chunk(**fields: Any) -> Step:
    """One streamed chunk, read as the relay reads it."""
    body = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    body.update(fields)
    data = json.dumps(body).encode()
    return DIALECT.read_event(Event(raw=b"data: " + data + b"\n\n", data=data, event=None))


def _delta_chunk(content: str | None = None, index: int = 0, **delta: Any) -> Step:
    if content is not None:
        delta["content"] = content
    return _chunk(choices=[{"index": index, "delta": delta, "finish_reason": None}])


def _answer(content: str = "", usage: dict[str, Any] | None = None, **extra: Any) -> bytes:
    body: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
    }
    if usage is not None:
        body["usage"] = usage
    body.update(extra)
    return json.dumps(body).encode()


def _observe_answer(meter: Meter, answer: bytes) -> None:
    """What the relay does with a complete answer."""
    meter.reported, texts = DIALECT.read_answer(answer)
    meter.record(texts, 0)


def _feed(meter: Meter, step: Step) -> int:
    """What the relay does with a streamed chunk it passes on."""
    added = meter.peek(step.texts)
    meter.record(step.texts, added)
    if step.usage is not None:
        meter.reported = step.usage
    assert step.action in (Action.CONTENT, Action.USAGE)
    return added


# -- reported usage ------------------------------------------------------------------------------
def test_reported_usage_is_authoritative() -> None:
    meter = _meter(prompt_tokens=10)
    _observe_answer(
        meter,
        _answer(
            "a long answer whose own count does not matter at all",
            usage={
                "prompt_tokens": 7,
                "completion_tokens": 5,
                "total_tokens": 12,
                "prompt_tokens_details": {"cached_tokens": 3},
            },
        ),
    )
    assert meter.usage(PLENTY) == TokenCounts(prompt_tokens=7, completion_tokens=5, cached_tokens=3)
    assert meter.cost(meter.usage(PLENTY)) == 16  # 4 * 1 + 3 * 0.5 + 5 * 2 = 15.5, rounded up


def test_reported_usage_in_a_stream_is_authoritative() -> None:
    meter = _meter(prompt_tokens=10)
    _feed(meter, _delta_chunk("Hello there, friend."))
    _feed(meter, _chunk(choices=[], usage={"prompt_tokens": 12, "completion_tokens": 40}))
    assert meter.usage(PLENTY) == TokenCounts(12, 40, 0)


def test_no_report_falls_back_to_counting() -> None:
    meter = _meter(prompt_tokens=10)
    _observe_answer(meter, _answer("The quick brown fox jumps over the lazy dog."))
    expected = COUNTER.count_text("The quick brown fox jumps over the lazy dog.")
    assert meter.usage(PLENTY) == TokenCounts(10, expected, 0)


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        ({"prompt_tokens": -1, "completion_tokens": 5}, (10, 5)),
        ({"prompt_tokens": 7, "completion_tokens": -3}, (7, "counted")),
        ({"completion_tokens": 5}, (10, 5)),
        ({"prompt_tokens": 7}, (7, "counted")),
        ({}, (10, "counted")),
        ({"prompt_tokens": None, "completion_tokens": None}, (10, "counted")),
        ({"prompt_tokens": 2**41, "completion_tokens": 2**41}, (10, "counted")),
        ({"prompt_tokens": 0, "completion_tokens": 0}, (0, 0)),  # zero is a sane report
    ],
)
def test_negative_missing_or_absurd_fields_fall_back_to_counting(
    usage: dict[str, Any], expected: tuple[int, int | str]
) -> None:
    text = "Counting words, one token at a time."
    meter = _meter(prompt_tokens=10)
    _observe_answer(meter, _answer(text, usage=usage))
    prompt, completion = expected
    if completion == "counted":
        completion = COUNTER.count_text(text)
    assert meter.usage(PLENTY) == TokenCounts(prompt, completion, 0)


def test_a_report_is_trusted_up_to_what_the_reservation_pays_for() -> None:
    meter = _meter()
    _observe_answer(meter, _answer("x", usage={"prompt_tokens": 10, "completion_tokens": 1000}))
    assert meter.usage(_paying(50)).completion_tokens == 50
    assert meter.usage(_paying(50) + 1).completion_tokens == 50  # whole tokens only
    assert meter.usage(_paying(1000)).completion_tokens == 1000


def test_hidden_reasoning_is_charged_past_the_visible_count() -> None:
    """A reasoning model reports more than the text it sent (its reasoning is hidden): the
    report is trusted, not capped at the visible count, as far as the reservation pays."""
    meter = _meter()
    _observe_answer(
        meter, _answer("Yes.", usage={"prompt_tokens": 10, "completion_tokens": 20_000})
    )
    assert meter.counted_completion() == COUNTER.count_text("Yes.")
    assert meter.usage(_paying(20_000)).completion_tokens == 20_000
    assert meter.usage(_paying(4_096)).completion_tokens == 4_096


def test_a_count_past_the_reservation_is_charged_as_far_as_it_pays() -> None:
    """No report, and more text than the reservation pays for (the relay delivers no more than
    that: it cuts the rest)."""
    text = "word " * 200
    meter = _meter()
    _observe_answer(meter, _answer(text))
    assert COUNTER.count_text(text) > 20
    assert meter.usage(_paying(20)).completion_tokens == 20
    assert meter.usage(PLENTY).completion_tokens == COUNTER.count_text(text)


def test_completion_below_what_is_paid_is_kept() -> None:
    meter = _meter()
    _observe_answer(meter, _answer("x", usage={"prompt_tokens": 10, "completion_tokens": 49}))
    assert meter.usage(_paying(50)).completion_tokens == 49


def test_a_reservation_that_pays_not_even_the_prompt_pays_no_completion() -> None:
    meter = _meter(prompt_tokens=10)
    _observe_answer(meter, _answer("x", usage={"prompt_tokens": 10, "completion_tokens": 5}))
    assert meter.usage(_paying(0) - 1).completion_tokens == 0


@pytest.mark.parametrize(
    ("usage", "cached"),
    [
        (
            {
                "prompt_tokens": 5,
                "completion_tokens": 1,
                "prompt_tokens_details": {"cached_tokens": 9},
            },
            5,
        ),
        (
            {
                "prompt_tokens": 5,
                "completion_tokens": 1,
                "prompt_tokens_details": {"cached_tokens": 5},
            },
            5,
        ),
        (
            {
                "prompt_tokens": 5,
                "completion_tokens": 1,
                "prompt_tokens_details": {"cached_tokens": -2},
            },
            0,
        ),
        (
            {
                "prompt_tokens": 5,
                "completion_tokens": 1,
                "prompt_tokens_details": {"cached_tokens": None},
            },
            0,
        ),
        ({"prompt_tokens": 5, "completion_tokens": 1, "prompt_tokens_details": None}, 0),
        # no prompt report: clamped to the estimate
        ({"completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 99}}, 10),
    ],
)
def test_cached_tokens_are_clamped_to_the_prompt(usage: dict[str, Any], cached: int) -> None:
    meter = _meter(prompt_tokens=10)
    _observe_answer(meter, _answer("x", usage=usage))
    result = meter.usage(PLENTY)
    assert result.cached_tokens == cached
    assert result.cached_tokens <= result.prompt_tokens


# -- streams -------------------------------------------------------------------------------------
def test_peek_does_not_record() -> None:
    meter = _meter()
    chunk = _chunk(
        choices=[{"index": 0, "delta": {"content": "Hello, world!"}}],
        usage={"prompt_tokens": 3, "completion_tokens": 4},
    )
    added = meter.peek(chunk.texts)
    assert added == COUNTER.count_text("Hello, world!")
    assert meter.peek(chunk.texts) == added  # asking twice changes nothing
    assert meter.running_completion == 0
    assert meter.counted_completion() == 0
    assert meter.reported is None
    assert meter.usage(PLENTY) == TokenCounts(10, 0, 0)


def test_observe_chunk_records_what_peek_said() -> None:
    meter = _meter()
    first = _feed(meter, _delta_chunk("Hello"))
    second = _feed(meter, _delta_chunk(", world!"))
    assert meter.running_completion == first + second
    assert meter.counted_completion() == COUNTER.count_text("Hello, world!")
    assert meter.cost_with() == PRICES.cost_of(10, first + second)
    assert meter.cost_with(5) == PRICES.cost_of(10, first + second + 5)


def test_choices_are_counted_separately_n_greater_than_one() -> None:
    parts = {
        0: ["The answer", " is forty", "-two."],
        1: ["Forty", "two", ", I think"],
        2: [""],
    }
    meter = _meter()
    for step in range(3):
        for index, texts in parts.items():
            if step < len(texts):
                _feed(meter, _delta_chunk(texts[step], index=index))
    expected = sum(COUNTER.count_text("".join(texts)) for texts in parts.values())
    assert meter.counted_completion() == expected
    assert meter.usage(PLENTY).completion_tokens == expected


def test_choices_in_one_chunk_go_to_their_index() -> None:
    meter = _meter()
    _feed(
        meter,
        _chunk(
            choices=[
                {"index": 1, "delta": {"content": "b"}},
                {"index": 0, "delta": {"content": "a"}},
            ]
        ),
    )
    _feed(meter, _chunk(choices=[{"index": 0, "delta": {"content": "aa"}}]))
    assert meter.counted_completion() == COUNTER.count_text("aaa") + COUNTER.count_text("b")


def test_tool_call_names_and_arguments_are_counted() -> None:
    name, args_1, args_2 = "get_weather", '{"city": "Pa', 'ris", "unit": "celsius"}'
    chunks = [
        _chunk(
            choices=[
                {
                    "index": 0,
                    "delta": {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "call_1",
                                "type": "function",
                                "function": {"name": name, "arguments": ""},
                            }
                        ],
                    },
                }
            ]
        ),
        _chunk(
            choices=[
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"index": 0, "function": {"arguments": args_1}}]},
                }
            ]
        ),
        _chunk(
            choices=[
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"index": 0, "function": {"arguments": args_2}}]},
                }
            ]
        ),
    ]
    meter = _meter()
    added = [_feed(meter, chunk) for chunk in chunks]
    assert added == [
        COUNTER.count_text(name),
        COUNTER.count_text(args_1),
        COUNTER.count_text(args_2),
    ]
    assert meter.counted_completion() == COUNTER.count_text(name + args_1 + args_2)
    assert meter.counted_completion() > 0


def test_legacy_function_call_is_counted() -> None:
    meter = _meter()
    _feed(meter, _delta_chunk(function_call={"name": "lookup", "arguments": '{"q": "x"}'}))
    assert meter.counted_completion() == COUNTER.count_text('lookup{"q": "x"}')


def test_reasoning_and_refusal_are_completion_text() -> None:
    meter = _meter()
    _feed(meter, _delta_chunk(reasoning_content="Let me think."))
    _feed(meter, _delta_chunk(refusal="I can't help with that."))
    assert meter.counted_completion() == COUNTER.count_text("Let me think.I can't help with that.")


def test_legacy_completions_text_is_counted() -> None:
    meter = _meter()
    _feed(meter, _chunk(choices=[{"index": 0, "text": "Once upon", "logprobs": None}]))
    _feed(meter, _chunk(choices=[{"index": 0, "text": " a time"}]))
    assert meter.counted_completion() == COUNTER.count_text("Once upon a time")


def test_chunks_without_text_add_nothing() -> None:
    meter = _meter()
    for chunk in [
        _chunk(choices=[{"index": 0, "delta": {"role": "assistant"}}]),
        _chunk(choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}]),
        _chunk(choices=[]),
        _chunk(choices=None),
        _chunk(),
    ]:
        assert _feed(meter, chunk) == 0
    assert meter.counted_completion() == 0
    assert meter.running_completion == 0


def test_a_usage_chunk_after_content_is_authoritative() -> None:
    meter = _meter(prompt_tokens=42)
    _feed(meter, _delta_chunk("Partial answer"))
    _feed(
        meter,
        _chunk(
            choices=[],
            usage={
                "prompt_tokens": 40,
                "completion_tokens": 3,
                "prompt_tokens_details": {"cached_tokens": 8},
            },
        ),
    )
    # the usage chunk's report wins over the estimate and the count
    assert meter.usage(PLENTY) == TokenCounts(40, 3, 8)


def test_answer_with_several_choices_counts_each() -> None:
    body = {
        "choices": [
            {"index": 0, "message": {"content": "yes"}},
            {"index": 1, "message": {"content": "no"}},
        ]
    }
    meter = _meter()
    _observe_answer(meter, json.dumps(body).encode())
    assert meter.counted_completion() == COUNTER.count_text("yes") + COUNTER.count_text("no")


# -- wire ----------------------------------------------------------------------------------------
def test_decode_chunk_tolerates_unknown_fields() -> None:
    data = {
        "id": "chatcmpl-x",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gpt-4o-mini",
        "system_fingerprint": "fp_1",
        "service_tier": "default",
        "x_vendor": {"nested": [1, 2, {"deep": True}]},
        "choices": [
            {
                "index": 0,
                "delta": {
                    "role": "assistant",
                    "content": "hi",
                    "audio": None,
                    "x": 1,
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "c",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{}", "strict": True},
                        }
                    ],
                },
                "logprobs": {"content": []},
                "finish_reason": None,
                "stop_reason": None,
            }
        ],
        "usage": {
            "prompt_tokens": 3,
            "completion_tokens": 1,
            "total_tokens": 4,
            "completion_tokens_details": {"reasoning_tokens": 0},
            "prompt_tokens_details": {"cached_tokens": 2, "audio_tokens": 0},
            "prompt_cache_hit_tokens": 2,
        },
    }
    chunk = wire.decode_chunk(json.dumps(data).encode())
    assert chunk.choices is not None
    delta = chunk.choices[0].delta
    assert delta is not None
    assert delta.content == "hi"
    assert wire.message_texts(delta) == ["hi", "f", "{}"]
    assert chunk.usage is not None
    assert chunk.usage.prompt_tokens == 3
    assert chunk.usage.prompt_tokens_details is not None
    assert chunk.usage.prompt_tokens_details.cached_tokens == 2


def test_decode_chunk_keeps_an_error_event() -> None:
    chunk = wire.decode_chunk(b'{"error": {"message": "overloaded", "type": "server_error"}}')
    assert chunk.error == {"message": "overloaded", "type": "server_error"}
    assert chunk.choices is None


def test_decode_answer_tolerates_unknown_fields_and_embeddings() -> None:
    answer = wire.decode_answer(
        b'{"object": "list", "data": [{"object": "embedding", "embedding": [0.1], "index": 0}],'
        b' "model": "e", "usage": {"prompt_tokens": 5, "total_tokens": 5}}'
    )
    assert answer.choices is None
    assert answer.usage is not None
    assert answer.usage.prompt_tokens == 5
    assert answer.usage.completion_tokens is None


@pytest.mark.parametrize("data", [b"", b"not json", b"[]", b'{"choices": 5}', b"null"])
def test_decode_chunk_refuses_what_is_not_a_chunk(data: bytes) -> None:
    with pytest.raises(msgspec.DecodeError):
        wire.decode_chunk(data)
    assert issubclass(msgspec.DecodeError, ValueError)


# -- the stream's fast path ----------------------------------------------------------------------
_deltas = st.fixed_dictionaries(
    {},
    optional={
        "role": st.just("assistant"),
        "content": st.one_of(st.none(), st.text(max_size=8)),
        "reasoning_content": st.one_of(st.none(), st.text(max_size=4)),
        "refusal": st.one_of(st.none(), st.text(max_size=4)),
        "tool_calls": st.one_of(
            st.none(), st.just([{"index": 0, "function": {"name": "f", "arguments": "{}"}}])
        ),
        "function_call": st.one_of(st.none(), st.just({"name": "f"})),
    },
)
_choices = st.fixed_dictionaries(
    {"index": st.integers(0, 3)},
    optional={
        "delta": st.one_of(st.none(), _deltas),
        "message": st.one_of(st.none(), _deltas),
        "text": st.one_of(st.none(), st.text(max_size=4)),
        "finish_reason": st.sampled_from([None, "stop"]),
    },
)
_chunks = st.fixed_dictionaries(
    {},
    optional={
        "choices": st.one_of(st.none(), st.lists(_choices, max_size=3)),
        "usage": st.one_of(st.none(), st.just({"prompt_tokens": 1, "completion_tokens": 2})),
        "error": st.one_of(st.none(), st.just({"message": "overloaded"})),
    },
)


@settings(max_examples=1000, deadline=None)
@given(chunk=_chunks)
def test_the_fast_path_reads_a_chunk_as_the_full_reading_does(chunk: dict[str, Any]) -> None:
    """Whatever the fast path answers for, it reads as :meth:`read_event` does (an empty
    text is no text); every other event it reads in full."""
    data = json.dumps(chunk).encode()
    event = Event(raw=b"data: " + data + b"\n\n", data=data, event=None)
    fast = DIALECT.read_fast(event)
    step = DIALECT.read_event(event)
    if isinstance(fast, tuple):
        index, text = fast
        assert step.action is Action.CONTENT
        assert step.usage is None
        assert step.texts == (((index, text),) if text else ())
    else:
        assert fast == step


@settings(max_examples=1000, deadline=None)
@given(chunk=_chunks)
def test_the_plain_decoder_answers_as_plain_delta_does(chunk: dict[str, Any]) -> None:
    data = json.dumps(chunk).encode()
    try:
        expected = wire.plain_delta(wire.decode_chunk_strictly(data))
    except msgspec.DecodeError:
        expected = None
    try:
        got: tuple[int, str] | None = wire.decode_plain_delta(data)
    except msgspec.DecodeError:
        got = None
    assert got == expected


_event_data = st.one_of(
    _chunks.map(lambda chunk: json.dumps(chunk).encode()),
    st.sampled_from([b"[DONE]", b"not json", b'{"choices": [{"delta": {"content": "a"', b""]),
    st.just(b'{"choices": [{"index": 0, "delta": {"content": " w"}}]}'),
)


@settings(max_examples=500, deadline=None)
@given(datas=st.lists(st.one_of(st.none(), _event_data), max_size=8))
def test_a_plain_run_is_what_the_fast_path_reads_as_text(datas: list[bytes | None]) -> None:
    """The run a read opens with: the events :meth:`read_fast` reads as (index, text), up to
    the first it does not."""
    events = [
        Event(raw=b"data: " + (data or b"") + b"\n\n", data=data, event=None) for data in datas
    ]
    expected: list[tuple[int, str]] = []
    for event in events:
        fast = DIALECT.read_fast(event)
        if not isinstance(fast, tuple):
            break
        expected.append(fast)
    assert DIALECT.read_plain_run(events) == expected


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'{"choices": [{"index": 0, "delta": {"content": " word"}}]}', (0, " word")),
        (b'{"choices": [{"index": 2, "delta": {"role": "assistant"}}]}', (2, "")),
        (b'{"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}', (0, "")),
        (b'{"choices": [], "usage": {"prompt_tokens": 1}}', None),
        (b'{"choices": [{"delta": {"content": "a"}}], "usage": {"prompt_tokens": 1}}', None),
        (b'{"choices": [{"delta": {"tool_calls": [{"function": {"name": "f"}}]}}]}', None),
        (b'{"choices": [{"delta": {"content": "a"}}, {"index": 1, "delta": {}}]}', None),
        (b'{"choices": [{"index": 0, "text": "legacy"}]}', None),
        (b'{"error": {"message": "overloaded"}}', None),
        (b'{"choices": [{"delta": {"content": "a"}}], "usage": {"prompt_tokens": "many"}}', None),
        (b'{"choices": [{"delta": {"content": "a"', None),
        (b"[DONE]", None),
        (b"not json", None),
    ],
    ids=lambda v: v.decode()[:40] if isinstance(v, bytes) else repr(v),
)
def test_the_fast_path_takes_only_one_plain_delta(
    data: bytes, expected: tuple[int, str] | None
) -> None:
    """A plain delta comes back as (index, text); anything else as the full reading's Step."""
    event = Event(raw=b"data: " + data + b"\n\n", data=data, event=None)
    fast = DIALECT.read_fast(event)
    assert fast == (expected if expected is not None else DIALECT.read_event(event))


@settings(max_examples=500, deadline=None)
@given(
    run=st.lists(st.tuples(st.integers(0, 2), st.text(max_size=6)), max_size=12),
    running=st.integers(0, 40),
    reserved=st.integers(0, 5_000),
)
def test_a_run_is_recorded_as_far_as_the_reservation_surely_pays(
    run: list[tuple[int, str]], running: int, reserved: int
) -> None:
    """By the texts' UTF-8 bounds if they fit (no tokenizing), else by the exact count of
    all generated so far with the run, else as far as the bounds fit from the exact count."""
    prices = Prices(input=1_000_000, output=100_000_000, cached_input=0)

    def meter() -> Meter:
        return Meter(COUNTER, prices, prompt_tokens=3)

    def paid(completion: int) -> bool:
        return prices.cost_of(3, completion) <= reserved

    texts = [piece for piece in run if piece[1]]
    bounds = [len(text.encode()) for _, text in texts]
    everything = meter()
    everything.record(tuple(texts), 0)
    exact = everything.counted_completion()

    at_once = meter()
    at_once.running_completion = running  # over-counted so far: nothing recorded yet
    taken = at_once.record_run(run, reserved)
    recorded = meter()
    recorded.record(tuple(piece for piece in run[:taken] if piece[1]), 0)
    assert at_once.counted_completion() == recorded.counted_completion()
    if not texts or paid(running + sum(bounds)):
        assert taken == len(run)
        assert at_once.running_completion == running + sum(bounds)
    elif paid(exact):
        assert taken == len(run)
        assert at_once.running_completion == exact
    else:  # piece by piece from the exact count so far (none): the first unpaid bound stops it
        assert taken < len(run)
        assert run[taken][1]
        first = [len(text.encode()) for _, text in run[:taken] if text]
        assert at_once.running_completion == sum(first)
        assert not paid(sum(first) + len(run[taken][1].encode()))
        assert not first or paid(sum(first))


# -- the hot path's affordability check -------------------------------------------------------
@settings(max_examples=500, deadline=None)
@given(
    prompt=st.integers(0, 10**6),
    running=st.integers(0, 10**6),
    extra=st.integers(0, 10**6),
    reserved=st.integers(0, 10**9),
    input_price=st.integers(0, 10**8),
    output_price=st.integers(0, 10**8),
)
def test_fits_agrees_with_the_exact_cost(
    prompt: int, running: int, extra: int, reserved: int, input_price: int, output_price: int
) -> None:
    prices = Prices(input=input_price, output=output_price, cached_input=0)
    meter = Meter(COUNTER, prices, prompt_tokens=prompt)
    meter.running_completion = running
    assert meter.fits(extra, reserved) == (meter.cost_with(extra) <= reserved)
    # the cached figure follows a grown reservation
    assert meter.fits(extra, reserved * 2 + 7) == (meter.cost_with(extra) <= reserved * 2 + 7)
