"""Runs of text deltas read as one (gateway.protocol.deltas): they read exactly as the events
they fold, decoded one by one, would."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.protocol.deltas import LESSONS, DeltaFolder, DeltaRun, DeltaTemplate
from gateway.protocol.dialects import OpenAIDialect
from gateway.protocol.sse import Event, SSEParser

HEAD = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}


def delta(text: str | None, *, role: bool = False, index: int = 0, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"content": text}
    if role:
        body = {"role": "assistant", **body}
    choice = {"index": index, "delta": body, "finish_reason": None}
    return {**HEAD, "choices": [choice], **extra}


def event(payload: Any, *, compact: bool = True, escaped: bool = False) -> bytes:
    """A one-line event; ``compact``: JSON without spaces (as OpenAI and vLLM send it);
    ``escaped``: non-ASCII text escaped (as Python's json does by default)."""
    if isinstance(payload, str):
        return f"data: {payload}\n\n".encode()
    separators = (",", ":") if compact else (", ", ": ")
    text = json.dumps(payload, separators=separators, ensure_ascii=escaped)
    return b"data: " + text.encode() + b"\n\n"


def as_event(raw: bytes) -> Event:
    [parsed] = SSEParser().feed(raw)
    return parsed


def fold(reads: Iterable[bytes]) -> tuple[OpenAIDialect, list[list[Event]]]:
    dialect = OpenAIDialect("/chat/completions")
    parser = SSEParser()
    out = [dialect.split(parser, read) for read in reads]
    out.append(parser.flush())
    return dialect, out


def plain(reads: Iterable[bytes]) -> list[list[Event]]:
    parser = SSEParser()
    out = [parser.feed(read) for read in reads]
    out.append(parser.flush())
    return out


def words(n: int, word: str = " hi") -> bytes:
    return b"".join(event(delta(word)) for _ in range(n))


# -- learning a template --------------------------------------------------------------------------
def test_a_plain_delta_gives_its_template() -> None:
    template = DeltaTemplate.learn(as_event(event(delta("Hello"))))
    assert template is not None
    assert template.head.startswith(b'data: {"id":"chatcmpl-1"')
    assert template.prefix.endswith(b'"content":"')
    assert template.suffix.startswith(b'"},"finish_reason":null}]}')


def test_spaced_json_gives_a_template_too() -> None:
    template = DeltaTemplate.learn(as_event(event(delta("Hello"), compact=False)))
    assert template is not None
    assert template.prefix.endswith(b'"content": "')


@pytest.mark.parametrize(
    "raw",
    [
        event(delta('say "hi"')),  # the text is escaped in JSON: not a literal
        event(delta("line\nbreak")),
        event(delta("a\\b")),
        event(delta(None)),  # no text
        event(delta("x", usage={"prompt_tokens": 1})),  # not a plain delta
        event({**delta("x"), "content": "x"}),  # "content" twice
        event(delta("x", role=True) | {"note": "content"}),  # "content" also a value
        event(delta("x")).replace(b"\n\n", b"\r\n\r\n"),  # not one LF line
        b'data: {"choices":[{"delta":{"content":"\\u0078"}}]}\n\n',  # x, escaped
        event("[DONE]"),
        b": keep-alive\n\n",
    ],
    ids=lambda raw: raw[:60].decode(errors="replace"),
)
def test_no_template_where_it_would_not_read_as_the_decoder(raw: bytes) -> None:
    assert DeltaTemplate.learn(as_event(raw)) is None


def test_no_template_where_the_text_is_not_the_content() -> None:
    """The probe: the text found is somewhere the decoder does not read as the content."""
    raw = b'data: {"choices":[{"delta":{"content":"x"}}],"x":{"content":"y"}}\n\n'
    assert DeltaTemplate.learn(as_event(raw)) is None


# -- folding --------------------------------------------------------------------------------------
def test_a_read_of_deltas_is_one_run() -> None:
    stream = (
        event(delta("", role=True))
        + event(delta("Hello"))
        + words(50)
        + event(delta(" end") | {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        + event({**HEAD, "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 51}})
        + event("[DONE]")
    )
    dialect, reads = fold([stream])
    events = reads[0]
    runs = [e for e in events if isinstance(e, DeltaRun)]
    assert [type(e) is DeltaRun for e in events] == [False, False, True, False, False, False]
    assert runs[0].count == 50
    assert runs[0].piece == (0, " hi" * 50)
    assert b"".join(e.raw for e in events) == stream
    assert dialect.read_plain_run(events)[:3] == [(0, ""), (0, "Hello"), (0, " hi" * 50)]


def test_a_run_stops_at_a_text_that_json_escapes_and_goes_on_after_it() -> None:
    stream = words(3) + event(delta('"q"')) + words(4) + event(delta("\n")) + words(2)
    _, reads = fold([event(delta("", role=True)) + event(delta("a")), stream])
    kinds = [(type(e).__name__, getattr(e, "count", 1)) for e in reads[1]]
    assert kinds == [
        ("DeltaRun", 3),
        ("Event", 1),
        ("DeltaRun", 4),
        ("Event", 1),
        ("DeltaRun", 2),
    ]


def test_a_stream_read_one_event_at_a_time() -> None:
    """The usual stream generated as it is read: after its first events, each read is one
    template event, or (a text JSON escapes, a usage chunk) an event as it comes."""
    texts = ["Hi", " there", "\n\n", " you", '"', " end"]
    reads = [event(delta("", role=True)), *(event(delta(t)) for t in texts), event("[DONE]")]
    _, folded = fold(reads)
    kinds = [[type(e).__name__ for e in read] for read in folded[:-1]]
    # role (learns), "Hi" (learns), then runs of one, the escaped texts as they come
    assert kinds == [["Event"], ["Event"]] + [
        ["Event"] if t in ("\n\n", '"') else ["DeltaRun"] for t in texts[1:]
    ] + [["Event"]]
    runs = [e for read in folded for e in read if isinstance(e, DeltaRun)]
    assert [r.piece for r in runs] == [(0, " there"), (0, " you"), (0, " end")]
    assert b"".join(e.raw for read in folded for e in read) == b"".join(reads)


def test_a_stream_that_never_matches_stops_learning() -> None:
    """A per-event field that changes (OpenAI's obfuscation): no template ever matches; after
    its lessons the stream is parsed as it comes, at no extra cost."""
    reads = [event(delta("w", obfuscation="x" * i)) for i in range(LESSONS + 5)]
    folder = DeltaFolder()
    parser = SSEParser()
    for read in reads:
        assert not any(isinstance(e, DeltaRun) for e in folder.feed(parser, read))
    assert folder._lessons == 0
    assert folder._known is None


def test_a_run_unfolds_into_its_events() -> None:
    stream = event(delta("a")) + event(delta("b")) + words(10)
    _, reads = fold([stream])
    [run] = [e for e in reads[0] if isinstance(e, DeltaRun)]
    assert run.unfold() == SSEParser().feed(run.raw)
    assert len(run.unfold()) == run.count == 11


# -- the property: folded reads read as the events do, one by one --------------------------------
CLEAN = st.lists(st.sampled_from(["a", " b", "é", "日本", "😀", "\x7f", ""]), max_size=3).map(
    "".join
)
ESCAPED = st.lists(st.sampled_from(["a", '"', "\\", "\n", "\t"]), min_size=1, max_size=3).map(
    "".join
)
OTHER = st.sampled_from(
    [
        event("[DONE]"),
        b": keep-alive\n\n",
        event({**HEAD, "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}}),
        event({**HEAD, "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0}]}}]}),
        event(delta("x") | {"id": "chatcmpl-2"}),  # another envelope
        event(delta("x", index=1)),
        b"event: ping\ndata: {}\n\n",
        event(delta("x")).replace(b"\n\n", b"\r\n\r\n"),
        b'data: {"choices":[{"delta":{"content":"\\u00e9"}}]}\n\n',
        b"data: not json\n\n",
    ]
)
#: A stream: blocks of deltas the template may fold (texts JSON holds literally), between
#: deltas it must not (escaped texts) and other events.
PIECES = st.lists(
    st.one_of(
        st.lists(st.tuples(st.just("delta"), CLEAN), min_size=1, max_size=12),
        st.tuples(st.just("delta"), ESCAPED).map(lambda piece: [piece]),
        OTHER.map(lambda raw: [("other", raw)]),
    ),
    max_size=8,
).map(lambda blocks: [piece for block in blocks for piece in block])


def build(pieces: list[tuple[str, Any]], compact: bool, escaped: bool) -> bytes:
    out = [event(delta("", role=True), compact=compact)]  # as OpenAI starts a stream
    for kind, value in pieces:
        if kind == "delta":
            out.append(event(delta(value), compact=compact, escaped=escaped))
        else:
            out.append(value)
    return b"".join(out)


def readings(dialect: OpenAIDialect, events: list[Event]) -> list[Any]:
    """What the relay reads of ``events``: the plain run, then each event on its own."""
    run = dialect.read_plain_run(events)
    return run + [dialect.read_fast(e) for e in events[len(run) :]]


@settings(max_examples=400, deadline=None)
@given(pieces=PIECES, compact=st.booleans(), escaped=st.booleans(), data=st.data())
def test_folded_reads_read_as_their_events_one_by_one(
    pieces: list[tuple[str, Any]], compact: bool, escaped: bool, data: st.DataObject
) -> None:
    stream = build(pieces, compact, escaped)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=4))
    bounds = [0, *sorted(cuts), len(stream)]
    reads = [stream[a:b] for a, b in itertools.pairwise(bounds)]

    dialect, folded = fold(reads)
    expected = plain(reads)
    reference = OpenAIDialect("/chat/completions")
    for got, want in zip(folded, expected, strict=True):
        unfolded = [e for f in got for e in (f.unfold() if isinstance(f, DeltaRun) else [f])]
        assert unfolded == want, "a read's events, unfolded, are the parser's"
        for f in got:
            if isinstance(f, DeltaRun):
                one_by_one = [reference.read_fast(e) for e in f.unfold()]
                assert all(isinstance(r, tuple) for r in one_by_one), one_by_one
                assert {r[0] for r in one_by_one} == {f.piece[0]}
                assert "".join(r[1] for r in one_by_one) == f.piece[1]
        read = readings(dialect, got)
        texts = [r for r in read if isinstance(r, tuple)]
        want_texts = [r for r in readings(reference, want) if isinstance(r, tuple)]
        assert "".join(t for _, t in texts) == "".join(t for _, t in want_texts)
