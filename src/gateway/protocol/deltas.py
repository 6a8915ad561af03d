"""Runs of text deltas read without decoding each one.

An OpenAI-compatible stream repeats one JSON text for every delta of generated text, all but
the text itself::

    data: {"id":"chatcmpl-7","object":"chat.completion.chunk","created":1,"model":"m",
           "choices":[{"index":0,"delta":{"content":"<TEXT>"},"finish_reason":null}]}

Once one such event was decoded, the bytes before and after its text are a *template*, and an
event that is the template around a text holding nothing JSON escapes (no ``"``, ``\\`` or
control character) is that text's delta, without decoding it. A run of them in one upstream read
is found with ``bytes`` methods, a read at a time, and folded into one :class:`DeltaRun` event:
its raw bytes are the run's, its text their texts joined. On the bench's 100-chunk streams this
took the gateway's CPU per stream from ~800 to ~690 µs: no Event, no decoded struct per chunk.

A template is only taken where it provably reads as the decoder would: the event's data is one
line, its text appears literally as the string value of the only ``"content"`` in it, and the
same bytes around another text decode to that other text (so that string is the delta's content,
and nothing else the decoder reads depends on it). A stream whose events differ in more than
their text (a per-event ``obfuscation`` field, a ``created`` that changes) gets no run: each
stream learns from at most its first few events, and keeps a template once one has matched.
"""

from __future__ import annotations

import re
from itertools import repeat
from operator import itemgetter
from typing import Final

import msgspec

from gateway.protocol import wire
from gateway.protocol.sse import Event, SSEParser

__all__ = ["DeltaFolder", "DeltaRun", "DeltaTemplate"]

_KEY: Final = b'"content"'
#: What comes between the key and its string value's text (JSON allows whitespace around ``:``).
_VALUE: Final = re.compile(rb'[ \t\n\r]*:[ \t\n\r]*"')
#: What a JSON string holds escaped, or not at all: a text with none of it appears literally.
_ESCAPED: Final = re.compile(rb'["\\\x00-\x1f]')
_DATA: Final = b"data: "
_GAP: Final = b"\n\ndata: "  # one event's blank line and the next one's field
#: Templates a stream may learn before one has matched (its first events: a role-only delta,
#: then the usual one).
LESSONS: Final = 3


class DeltaRun(Event, frozen=True, gc=False):
    """Consecutive text deltas of one choice, each relayed as received, as one event."""

    piece: tuple[int, str]
    """(choice index, the texts joined)."""
    count: int
    """How many events."""

    def unfold(self) -> list[Event]:
        """The events it holds, one by one."""
        return SSEParser().feed(self.raw)


class DeltaTemplate:
    """The bytes around the text of a stream's usual delta event."""

    __slots__ = ("head", "index", "prefix", "suffix", "tail")

    def __init__(self, prefix: bytes, suffix: bytes, index: int) -> None:
        self.prefix = prefix
        self.suffix = suffix
        self.index = index
        self.head = _DATA + prefix
        self.tail = suffix + b"\n\n"

    @classmethod
    def learn(cls, event: Event) -> DeltaTemplate | None:
        """The template of ``event``, if it is a one-line plain delta whose template reads as
        the decoder reads it (see the module's docstring); else None."""
        data = event.data
        if data is None or data[:1] != b"{" or event.raw != _DATA + data + b"\n\n":
            return None
        try:
            index, text = wire.decode_plain_delta(data)
        except (msgspec.DecodeError, RecursionError):
            return None
        literal = text.encode()
        if _ESCAPED.search(literal):
            return None
        at = data.find(_KEY)
        if at < 0 or data.find(_KEY, at + 1) >= 0:
            return None
        value = _VALUE.match(data, at + len(_KEY))
        if value is None:
            return None
        start = value.end()
        if not data.startswith(literal + b'"', start):
            return None
        prefix, suffix = data[:start], data[start + len(literal) :]
        probe = "x" if text != "x" else "y"
        try:
            if wire.decode_plain_delta(prefix + probe.encode() + suffix) != (index, probe):
                return None
        except (msgspec.DecodeError, RecursionError):
            return None
        return cls(prefix, suffix, index)

    def one(self, chunk: bytes) -> DeltaRun | None:
        """``chunk`` as one template event, if it is that and nothing else (the usual read of
        a stream generated as it is read)."""
        head, tail = self.head, self.tail
        if (
            len(chunk) < len(head) + len(tail)
            or not chunk.startswith(head)
            or not chunk.endswith(tail)
        ):
            return None
        literal = chunk[len(head) : len(chunk) - len(tail)]
        if _ESCAPED.search(literal) is not None:  # a newline too: more than one event
            return None
        try:
            text = literal.decode()
        except UnicodeDecodeError:
            return None
        return DeltaRun(chunk, None, None, (self.index, text), 1)

    def run(self, chunk: bytes) -> tuple[DeltaRun | None, int]:
        """The run of whole template events ``chunk`` opens with (it starts with
        :attr:`head`), and where it ends; (None, 0) if the first one is not one.

        Done a read at a time: one ``split`` into the events' data, then each check as one
        ``map`` over all of them (no Python code per event), up to the first that fails."""
        prefix, suffix = self.prefix, self.suffix
        datas = chunk.split(_GAP)
        datas[0] = datas[0][len(_DATA) :]
        last = datas[-1]  # the read's last event: whole only with its blank line
        if last.endswith(b"\n\n"):
            datas[-1] = last[:-2]
        else:
            datas.pop()
        count = min(
            _first_false(list(map(bytes.startswith, datas, repeat(prefix)))),
            _first_false(list(map(bytes.endswith, datas, repeat(suffix)))),
        )
        if count < len(datas):
            del datas[count:]
        sizes = list(map(len, datas))
        if datas and min(sizes) < len(prefix) + len(suffix):  # prefix and suffix overlap
            count = next(i for i, size in enumerate(sizes) if size < len(prefix) + len(suffix))
            del datas[count:], sizes[count:]
        texts = list(map(itemgetter(slice(len(prefix), -len(suffix) or None)), datas))
        joined = b"".join(texts)
        escaped = _ESCAPED.search(joined)
        if escaped is not None:  # the run ends before the first text JSON escapes
            count = total = 0
            for literal in texts:
                total += len(literal)
                if total > escaped.start():
                    break
                count += 1
            del texts[count:], sizes[count:]
            joined = b"".join(texts)
        if not texts:
            return None, 0
        try:
            text = joined.decode()
            if not joined.isascii():
                for literal in texts:  # each on its own, as the decoder reads it
                    literal.decode()
        except UnicodeDecodeError:
            return None, 0
        end = sum(sizes) + len(_GAP) * len(sizes)
        return DeltaRun(chunk[:end], None, None, (self.index, text), len(texts)), end


class DeltaFolder:
    """Reads one stream's events, folding runs of its usual text delta into
    :class:`DeltaRun` events (see the module's docstring)."""

    __slots__ = ("_known", "_lessons", "_template")

    def __init__(self) -> None:
        self._template: DeltaTemplate | None = None  # the one learned last
        self._known: DeltaTemplate | None = None  # the one that matched: kept for the stream
        self._lessons = LESSONS

    def feed(self, parser: SSEParser, chunk: bytes) -> list[Event]:
        """``parser.feed(chunk)``, with runs of template events folded."""
        known = self._known
        if known is not None:
            one = known.one(chunk) if parser.idle else None
            if one is not None:
                return [one]
        elif not self._lessons:
            return parser.feed(chunk)
        events: list[Event] = []
        while chunk and parser.idle:
            template = self._known or self._template
            if template is not None:
                if self._known is not None:
                    at = _event_at(chunk, template.head)
                    if at < 0:
                        break
                    if at:  # the events before the next template event, as they come
                        events += parser.feed(chunk[:at])
                        chunk = chunk[at:]
                        continue
                if chunk.startswith(template.head):
                    run, end = template.run(chunk)
                    if run is not None:
                        self._known = template
                        events.append(run)
                        chunk = chunk[end:]
                        continue
            if self._known is None and not self._lessons:
                break
            # one event as it comes (a template event whose text JSON escapes), learning
            # from it while no template has matched yet
            cut = chunk.find(b"\n\n") + 2
            if cut < 2:
                break
            first = parser.feed(chunk[:cut])
            events += first
            chunk = chunk[cut:]
            if self._known is None and first:
                self._lessons -= 1
                self._template = DeltaTemplate.learn(first[-1])
        if chunk:
            events += parser.feed(chunk)
        return events


def _event_at(chunk: bytes, head: bytes) -> int:
    """Where the first event starting with ``head`` starts in ``chunk`` (a read of whole
    LF events from its start), or -1."""
    at = chunk.find(head)
    while at > 0 and chunk[at - 2 : at] != b"\n\n":
        at = chunk.find(head, at + 1)
    return at


def _first_false(flags: list[bool]) -> int:
    """The index of the first False in ``flags``, or its length."""
    return flags.index(False) if False in flags else len(flags)
