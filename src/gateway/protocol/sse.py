"""Incremental server-sent-events parser for relaying an upstream stream byte-for-byte.

`SSEParser.feed` takes upstream reads as they arrive and returns the events they complete; each
`Event` carries its exact ``raw`` bytes (so the relay forwards exactly what it received) beside
the parsed ``data`` and ``event`` fields (so the meter can read usage and see ``[DONE]``).
Concatenating the ``raw`` of every event from ``feed`` and ``flush`` gives back the stream
byte-for-byte, less a leading UTF-8 BOM.

Parsing follows the HTML "server-sent events" rules: lines end with CRLF, LF or CR (mixed
freely); a blank line ends an event; lines starting with ``:`` are comments; ``field: value``
drops one space after the colon; a line without a colon is a field with an empty value;
``data`` lines are joined with LF. Unlike the spec, a block without ``data`` (a comment-only
keep-alive, or an extra blank line) is still returned, with ``data=None``, because its bytes
must be relayed; and at EOF an event missing its final blank line is returned, as some
upstreams forget it.

The work is done per read, not per byte. A read of whole LF-only events (the usual case) takes a
fast path of ``bytes.split``; otherwise the read joins a buffer and line ends are found with one
compiled regex resuming where the previous read stopped, so a long line arriving in many small
reads is scanned once. A CR ending a read is held back until the next byte says whether it
starts a CRLF.
"""

from __future__ import annotations

import re
from typing import Final

import msgspec

__all__ = ["Event", "EventTooLarge", "SSEParser", "is_done"]

_BOM: Final = b"\xef\xbb\xbf"
_EOL: Final = re.compile(rb"\r\n|\r|\n")
_DONE: Final = b"[DONE]"


class Event(msgspec.Struct, frozen=True, gc=False):
    """One event block of a stream."""

    raw: bytes
    """The exact bytes received for this event, including the blank line that ended it."""
    data: bytes | None
    """The ``data`` lines joined with LF; None when the block had no ``data`` field."""
    event: str | None
    """The ``event`` field (the last one if repeated), or None."""


class EventTooLarge(ValueError):
    """An unfinished event grew past the parser's ``max_event_bytes``."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"an event exceeds {limit} bytes")
        self.limit = limit


def is_done(data: bytes) -> bool:
    """Whether an event's data is OpenAI's end-of-stream sentinel ``[DONE]``."""
    return data.strip() == _DONE


class SSEParser:
    """Splits a byte stream into `Event`s, whatever the read boundaries.

    Feed every read to `feed`; at end of stream call `flush` for a trailing unterminated event.
    After `flush` the parser is back in its initial state. With ``max_event_bytes``, `feed`
    raises `EventTooLarge` when an unfinished event grows past it (an upstream that never
    ends its event must not fill the memory).
    """

    __slots__ = ("_buf", "_data", "_event", "_line", "_max", "_scan", "_started")

    _buf: bytearray  # bytes of the current, unfinished event, from its start
    _line: int  # where the current, unfinished line starts in _buf
    _scan: int  # where to resume looking for a line end in _buf
    _data: list[bytes] | None  # the current event's data lines so far
    _event: str | None  # the current event's event field so far
    _started: bool  # whether a leading BOM has been looked for (_buf holds a partial one)

    def __init__(self, max_event_bytes: int | None = None) -> None:
        self._max = max_event_bytes
        self._reset()

    def _reset(self) -> None:
        self._buf = bytearray()
        self._line = 0
        self._scan = 0
        self._data = None
        self._event = None
        self._started = False

    @property
    def idle(self) -> bool:
        """Between events: every byte fed so far is in an event returned (a leading BOM
        aside), so the next read starts a new event (or the stream, BOM and all)."""
        return not self._buf

    def feed(self, chunk: bytes) -> list[Event]:
        """Add one read; return the events it completes, in order."""
        if not self._started:
            chunk = self._strip_bom(chunk)
        if not chunk:
            return []
        if self._line == 0 and b"\r" not in chunk:
            events = self._lf_events(chunk)
            if events is not None:
                return events
        self._buf += chunk
        events = self._parse(eof=False)
        if self._max is not None and len(self._buf) > self._max:
            raise EventTooLarge(self._max)
        return events

    def flush(self) -> list[Event]:
        """End of stream: return what is left, ending a trailing unterminated event."""
        events = self._parse(eof=True)
        buf = self._buf
        if buf:
            self._field(bytes(buf[self._line :]))
            events.append(Event(bytes(buf), self._joined_data(), self._event))
        self._reset()
        return events

    def _strip_bom(self, chunk: bytes) -> bytes:
        """Drop a leading BOM, holding back a read that could still be the start of one."""
        if self._buf:  # a partial BOM held back by the previous read
            chunk = bytes(self._buf) + chunk
            self._buf.clear()
        if chunk.startswith(_BOM):
            chunk = chunk[len(_BOM) :]
        elif len(chunk) < len(_BOM) and _BOM.startswith(chunk):
            self._buf += chunk
            return b""
        self._started = True
        return chunk

    def _lf_events(self, chunk: bytes) -> list[Event] | None:
        """The fast path, for LF-only streams (the usual case): the events up to the read's
        last blank line are split off at once, and what follows it waits in the buffer for the
        next read (reads rarely end where an event does). None: the slow path must parse it.

        Only while no line of the unfinished event was parsed yet (``_line == 0``: the buffer
        holds a start of event the fast path left, or nothing).
        """
        held = self._buf
        if held:
            # no event ends in this read: the slow path scans on from where it was (a long
            # line over many reads is not copied again on each)
            if b"\n\n" not in chunk and not (held[-1] == 0x0A and chunk[0] == 0x0A):
                return None
            if b"\r" in held:
                return None
            chunk = bytes(held) + chunk
        cut = chunk.rfind(b"\n\n") + 2
        if cut < 2:  # no event ends in it
            return None
        events = self._whole_events(chunk[:cut])
        if events is None:
            return None
        self._buf = bytearray(chunk[cut:])
        self._scan = 0
        if self._max is not None and len(self._buf) > self._max:
            raise EventTooLarge(self._max)
        return events

    def _whole_events(self, chunk: bytes) -> list[Event] | None:
        """Split LF-only ``chunk`` into events, each ended by exactly one blank line, as
        ``chunk`` is; None if it is not that (extra blank lines: the slow path's business)."""
        body = chunk[:-2]
        blocks = body.split(b"\n\n")
        # All of them one-line ``data: `` events (the usual read): every LF is then in a blank
        # line between two events, and each of those is followed by ``data: ``.
        gaps = len(blocks) - 1
        if (
            body.startswith(b"data: ")
            and body.count(b"\n") == 2 * gaps
            and body.count(b"\n\ndata: ") == gaps
        ):
            return [Event(block + b"\n\n", block[6:], None) for block in blocks]
        events: list[Event] = []
        for block in blocks:
            # the usual one-liner (find, not ``in``: on CPython 3.11 ``bytes in bytes`` first
            # tries the needle as an int, raising and clearing a TypeError, once per event)
            if block.startswith(b"data: ") and block.find(b"\n") < 0:
                events.append(Event(block + b"\n\n", block[6:], None))
                continue
            if not block or block[0] == 0x0A or block[-1] == 0x0A:  # extra blank lines
                self._data = None
                self._event = None
                return None
            for line in block.split(b"\n"):
                self._field(line)
            events.append(Event(block + b"\n\n", self._joined_data(), self._event))
            self._data = None
            self._event = None
        return events

    def _parse(self, *, eof: bool) -> list[Event]:
        buf = self._buf
        end = len(buf)
        events: list[Event] = []
        start = 0  # start of the current event
        line = self._line
        search = _EOL.search
        match = search(buf, self._scan)
        while match is not None:
            line_end, next_line = match.span()
            if next_line == end and not eof and buf[-1] == 0x0D:
                # A CR that ends the buffer may be the first half of a CRLF: wait for more.
                self._scan = line_end
                break
            if line_end == line:
                events.append(Event(bytes(buf[start:next_line]), self._joined_data(), self._event))
                self._data = None
                self._event = None
                start = next_line
            else:
                self._field(bytes(buf[line:line_end]))
            line = next_line
            match = search(buf, line)
        else:
            self._scan = end
        if start:
            del buf[:start]
            line -= start
            self._scan -= start
        self._line = line
        return events

    def _field(self, line: bytes) -> None:
        if not line or line[0] == 0x3A:  # empty, or a ":" comment
            return
        name, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            if self._data is None:
                self._data = [value]
            else:
                self._data.append(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")

    def _joined_data(self) -> bytes | None:
        data = self._data
        if data is None:
            return None
        return data[0] if len(data) == 1 else b"\n".join(data)
