"""Incremental server-sent-events parsing for the relay (gateway.protocol.sse)."""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.protocol.sse import Event, SSEParser, is_done

BOM = b"\xef\xbb\xbf"


def parse(chunks: Iterable[bytes]) -> list[Event]:
    parser = SSEParser()
    events: list[Event] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    events.extend(parser.flush())
    return events


def split_at(stream: bytes, cuts: Iterable[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


def reference(stream: bytes, *, eof: bool = True) -> list[Event]:
    """A slow, obviously-correct parser of a whole stream, to check SSEParser against.

    With ``eof=False``, only the events the stream so far has certainly completed: no
    unterminated trailing event, and a final CR is not yet a line end (it may start a CRLF).
    """
    if stream.startswith(BOM):
        stream = stream[len(BOM) :]
    if not eof:
        stream = stream.removesuffix(b"\r")
    pieces = re.split(rb"(\r\n|\r|\n)", stream)
    events: list[Event] = []
    raw = b""
    data: list[bytes] | None = None
    event: str | None = None

    def apply(line: bytes) -> None:
        nonlocal data, event
        if line == b"" or line.startswith(b":"):
            return
        if b":" in line:
            name, value = line.split(b":", 1)
            if value.startswith(b" "):
                value = value[1:]
        else:
            name, value = line, b""
        if name == b"data":
            data = [*(data or []), value]
        elif name == b"event":
            event = value.decode("utf-8", "replace")

    def emit(raw: bytes) -> None:
        nonlocal data, event
        events.append(Event(raw, None if data is None else b"\n".join(data), event))
        data, event = None, None

    for line, end in zip(pieces[0::2], pieces[1::2], strict=False):
        raw += line + end
        if line == b"":
            emit(raw)
            raw = b""
        else:
            apply(line)
    if eof and (raw or pieces[-1]):
        apply(pieces[-1])
        emit(raw + pieces[-1])
    return events


# --- fields ------------------------------------------------------------------------------------


def test_openai_chat_stream() -> None:
    stream = (
        b'data: {"choices":[{"delta":{"content":"Hel"}}]}\n\n'
        b'data: {"choices":[{"delta":{"content":"lo"}}]}\n\n'
        b"data: [DONE]\n\n"
    )
    events = parse([stream])
    assert [e.data for e in events] == [
        b'{"choices":[{"delta":{"content":"Hel"}}]}',
        b'{"choices":[{"delta":{"content":"lo"}}]}',
        b"[DONE]",
    ]
    assert events[0].raw == b'data: {"choices":[{"delta":{"content":"Hel"}}]}\n\n'
    assert is_done(events[-1].data or b"")
    assert b"".join(e.raw for e in events) == stream


def test_fields() -> None:
    stream = (
        b"event: response.created\n"
        b"id: 7\n"
        b"retry: 100\n"
        b"data:no-space\n"
        b"data:  two spaces\n"
        b"data\n"
        b"data:\n"
        b"data: a: b\n"
        b"unknown: field\n"
        b"\n"
    )
    [event] = parse([stream])
    assert event == Event(stream, b"no-space\n two spaces\n\n\na: b", "response.created")


def test_comment_only_blocks_have_no_data() -> None:
    assert parse([b": keep-alive\n\n"]) == [Event(b": keep-alive\n\n", None, None)]
    assert parse([b":\n\n"]) == [Event(b":\n\n", None, None)]


def test_comments_inside_an_event_are_skipped() -> None:
    [event] = parse([b"data: a\n: ping\ndata: b\n\n"])
    assert event.data == b"a\nb"


def test_event_without_data() -> None:
    assert parse([b"event: ping\n\n"]) == [Event(b"event: ping\n\n", None, "ping")]


def test_last_event_field_wins_and_is_decoded_leniently() -> None:
    [event] = parse([b"event: a\nevent: b\xff\ndata: x\n\n"])
    assert event.event == "b\ufffd"


def test_extra_blank_lines_are_empty_events() -> None:
    events = parse([b"data: a\n\n\n\r\ndata: b\n\n"])
    assert events == [
        Event(b"data: a\n\n", b"a", None),
        Event(b"\n", None, None),
        Event(b"\r\n", None, None),
        Event(b"data: b\n\n", b"b", None),
    ]


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_line_endings(eol: bytes) -> None:
    stream = b"event: e" + eol + b"data: a" + eol + b"data: b" + eol + eol + b"data: c" + eol + eol
    assert parse([stream]) == [
        Event(b"event: e" + eol + b"data: a" + eol + b"data: b" + eol + eol, b"a\nb", "e"),
        Event(b"data: c" + eol + eol, b"c", None),
    ]


def test_mixed_line_endings() -> None:
    # CR then CRLF is two line ends; LF then CR is two; CRLF is one.
    stream = b"data: a\r\r\ndata: b\n\rdata: c\r\n\ndata: d\r\n\r"
    assert parse([stream]) == [
        Event(b"data: a\r\r\n", b"a", None),
        Event(b"data: b\n\r", b"b", None),
        Event(b"data: c\r\n\n", b"c", None),
        Event(b"data: d\r\n\r", b"d", None),
    ]


def test_is_done() -> None:
    assert is_done(b"[DONE]")
    assert is_done(b" [DONE]\r\n")
    assert is_done(b"[DONE] ")
    assert not is_done(b"")
    assert not is_done(b"[done]")
    assert not is_done(b'{"text": "[DONE]"}')


# --- end of stream -----------------------------------------------------------------------------


def test_flush_returns_an_unterminated_trailing_event() -> None:
    parser = SSEParser()
    assert parser.feed(b'data: a\n\ndata: {"x":1}') == [Event(b"data: a\n\n", b"a", None)]
    assert parser.flush() == [Event(b'data: {"x":1}', b'{"x":1}', None)]
    assert parser.flush() == []


def test_flush_after_a_single_line_end() -> None:
    assert parse([b"data: a\n"]) == [Event(b"data: a\n", b"a", None)]
    assert parse([b"data: a\r"]) == [Event(b"data: a\r", b"a", None)]


def test_flush_of_a_trailing_cr_blank_line() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r\r") == []  # the last CR may start a CRLF
    assert parser.flush() == [Event(b"data: a\r\r", b"a", None)]


def test_cr_at_the_end_of_a_read_waits_for_the_next() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\n\r") == []
    assert parser.feed(b"\ndata: b\r\n\r\n") == [
        Event(b"data: a\r\n\r\n", b"a", None),
        Event(b"data: b\r\n\r\n", b"b", None),
    ]
    assert parser.flush() == []


def test_empty_stream_and_empty_reads() -> None:
    parser = SSEParser()
    assert parser.feed(b"") == []
    assert parser.flush() == []


def test_parser_is_reusable_after_flush() -> None:
    parser = SSEParser()
    parser.feed(BOM + b"data: a")
    parser.flush()
    assert parser.feed(BOM + b"data: b\n\n") == [Event(b"data: b\n\n", b"b", None)]


# --- BOM ---------------------------------------------------------------------------------------


def test_leading_bom_is_stripped() -> None:
    assert parse([BOM + b"data: a\n\n"]) == [Event(b"data: a\n\n", b"a", None)]


def test_bom_split_across_reads() -> None:
    assert parse([b"\xef", b"\xbb", b"\xbf", b"data: a\n\n"]) == [Event(b"data: a\n\n", b"a", None)]


def test_only_one_leading_bom_is_stripped() -> None:
    assert parse([BOM + BOM + b"data: a\n\n"]) == [Event(BOM + b"data: a\n\n", None, None)]
    assert parse([b"data: a\n\n" + BOM + b"data: b\n\n"])[1].raw == BOM + b"data: b\n\n"


@pytest.mark.parametrize("prefix", [b"\xef", b"\xef\xbb"])
def test_partial_bom_is_kept(prefix: bytes) -> None:
    assert parse([prefix]) == [Event(prefix, None, None)]
    assert parse([prefix, b"x\n\n"]) == [Event(prefix + b"x\n\n", None, None)]


# --- read boundaries ---------------------------------------------------------------------------

SAMPLE = (
    BOM
    + b": hello\r\n\r\n"
    + b'event: delta\rdata: {"a":\r\ndata:1}\n\n'
    + b"data: x\r\r"
    + b"data\n\n\n"
    + b"data: [DONE]\r\n\r\n"
    + b"data: tail"
)


def test_sample_matches_the_reference() -> None:
    expected = reference(SAMPLE)
    assert len(expected) == 7
    assert parse([SAMPLE]) == expected


def test_every_single_split_position() -> None:
    expected = parse([SAMPLE])
    for cut in range(len(SAMPLE) + 1):
        assert parse(split_at(SAMPLE, [cut])) == expected, cut


def test_every_pair_of_split_positions() -> None:
    expected = parse([SAMPLE])
    for first in range(len(SAMPLE) + 1):
        for second in range(first, len(SAMPLE) + 1):
            assert parse(split_at(SAMPLE, [first, second])) == expected, (first, second)


def test_one_byte_at_a_time() -> None:
    chunks = [SAMPLE[i : i + 1] for i in range(len(SAMPLE))]
    assert parse(chunks) == parse([SAMPLE])


def test_events_are_returned_by_the_read_that_completes_them() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\n") == []
    assert parser.feed(b"\ndata: b\n\ndata: c\n") == [
        Event(b"data: a\n\n", b"a", None),
        Event(b"data: b\n\n", b"b", None),
    ]
    assert parser.feed(b"\n") == [Event(b"data: c\n\n", b"c", None)]


def test_very_long_line_in_small_reads_is_linear() -> None:
    payload = b"x" * 2_000_000
    stream = b"data: " + payload + b"\n\n"
    parser = SSEParser()
    events: list[Event] = []
    began = time.perf_counter()
    for i in range(0, len(stream), 64):
        events.extend(parser.feed(stream[i : i + 64]))
    elapsed = time.perf_counter() - began
    assert events == [Event(stream, payload, None)]
    # 31k reads; rescanning the buffered line on every read would take minutes.
    assert elapsed < 5


# --- properties --------------------------------------------------------------------------------

_LINE = st.one_of(
    st.just(b""),
    st.sampled_from([b"data: [DONE]", b": keep-alive", b"data", b"data:", b"event: x", b"id: 1"]),
    st.builds(
        lambda name, sep, value: name + sep + value,
        st.sampled_from([b"data", b"event", b"id", b"retry", b"", b"x"]),
        st.sampled_from([b":", b": ", b":  ", b""]),
        st.binary(max_size=12).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    ),
    st.binary(max_size=20).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
)
_EOL = st.sampled_from([b"\n", b"\r\n", b"\r"])


@st.composite
def streams(draw: st.DrawFn, eol: st.SearchStrategy[bytes] = _EOL) -> bytes:
    lines = draw(st.lists(st.tuples(_LINE, eol), max_size=25))
    stream = b"".join(line + eol for line, eol in lines)
    if draw(st.booleans()):
        stream += draw(_LINE)  # an unterminated last line
    if draw(st.booleans()):
        stream = BOM + stream
    return stream


@settings(max_examples=500, deadline=None)
@given(data=st.data(), stream=streams())
def test_any_split_gives_the_same_events(data: st.DataObject, stream: bytes) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    whole = parse([stream])
    assert whole == reference(stream)
    assert parse(split_at(stream, cuts)) == whole
    assert b"".join(event.raw for event in whole) == stream.removeprefix(BOM)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), stream=streams())
def test_each_read_returns_every_event_it_completes(data: st.DataObject, stream: bytes) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    parser = SSEParser()
    events: list[Event] = []
    for cut, chunk in zip([*cuts, len(stream)], split_at(stream, cuts), strict=True):
        events.extend(parser.feed(chunk))
        assert events == reference(stream[:cut], eof=False)


@settings(max_examples=300, deadline=None)
@given(stream=st.binary(max_size=200), cuts=st.lists(st.integers(0, 200), max_size=10))
def test_arbitrary_bytes_round_trip(stream: bytes, cuts: list[int]) -> None:
    cuts = [cut for cut in cuts if cut <= len(stream)]
    events = parse(split_at(stream, cuts))
    assert events == reference(stream)
    assert b"".join(event.raw for event in events) == stream.removeprefix(BOM)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), stream=streams(eol=st.just(b"\n")) | streams())
def test_reads_aligned_on_events(data: st.DataObject, stream: bytes) -> None:
    # Upstreams usually send whole events per read: the parser's fast path.
    whole = parse([stream])
    bounds = list(itertools.accumulate(len(event.raw) for event in whole))
    if stream.startswith(BOM):
        bounds = [len(BOM), *(bound + len(BOM) for bound in bounds)]
    cuts = data.draw(st.lists(st.sampled_from(bounds), max_size=8)) if bounds else []
    assert parse(split_at(stream, cuts)) == whole


_DATA_LINE = st.binary(max_size=12).map(
    lambda b: b"data: " + b.replace(b"\r", b"").replace(b"\n", b"")
)


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(st.one_of(_DATA_LINE, _DATA_LINE, _LINE), min_size=1, max_size=20))
def test_reads_of_one_line_events(lines: list[bytes]) -> None:
    # The usual read, all ``data: `` one-liners, is split in one go: the same events as the
    # reference's, also when one line among them is not such an event (or is blank).
    stream = b"".join(line + b"\n\n" for line in lines)
    assert parse([stream]) == reference(stream)


def test_fast_path_reads() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\n\n") == [Event(b"data: a\n\n", b"a", None)]
    assert parser.feed(b"event: e\ndata: b\ndata: c\n\n: ka\n\ndata\n\n") == [
        Event(b"event: e\ndata: b\ndata: c\n\n", b"b\nc", "e"),
        Event(b": ka\n\n", None, None),
        Event(b"data\n\n", b"", None),
    ]
    assert parser.feed(b"\n\n") == [Event(b"\n", None, None), Event(b"\n", None, None)]
    assert parser.feed(b"data: d\n\n\ndata: e\n\n") == [
        Event(b"data: d\n\n", b"d", None),
        Event(b"\n", None, None),
        Event(b"data: e\n\n", b"e", None),
    ]
    assert parser.flush() == []
