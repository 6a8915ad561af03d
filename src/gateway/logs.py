"""structlog set-up: one JSON object a line on stderr (or a console renderer for humans).
Secrets never reach a log: keys are logged by id, never by value.

Every request logs one line; under load a ``write`` per line cost about 3% of the process. The
lines logged on the event loop wait up to 20 ms and go out together, in one write
(:class:`LineBuffer`): under load that is a write per few hundred lines, and with one request
at a time no request pays a write of its own; outside a running loop, and at exit, a line is
written at once.

That line (:func:`info_event`) skips structlog's chain when the chain would only add the level
and the time: the same JSON object, at a third of the cost (5 µs a line against 15 µs, on the
bench's machine).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import sys
import threading
import time
from collections.abc import MutableMapping
from typing import Any, BinaryIO, ClassVar, cast

import msgspec
import structlog

__all__ = ["configure_logging", "info_event", "write_held_lines"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


#: Where :func:`info_event` writes its JSON lines itself; None: through structlog.
_direct: LineBuffer | None = None


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    global _direct
    renderer: structlog.typing.Processor
    _direct = None
    if fmt == "json":
        # msgspec writes the JSON straight to bytes: a request's log line is on the hot path.
        renderer = structlog.processors.JSONRenderer(serializer=_json_line)
        # a stand-in for the stream: it has the write and flush that BytesLogger calls
        buffer = LineBuffer.over(sys.stderr.buffer)
        factory: structlog.typing.WrappedLogger = structlog.BytesLoggerFactory(
            cast(BinaryIO, buffer)
        )
        if _LEVELS[level] <= logging.INFO:
            _direct = buffer
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
        factory = structlog.WriteLoggerFactory(sys.stderr)
    # info_event writes what this chain writes for an event without exc_info: keep them alike
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            _timestamp,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )


def info_event(logger: Any, event: str, fields: dict[str, Any]) -> None:
    """``logger.info(event, **fields)``: the same line, written here when the output is JSON
    (``fields`` is taken: the caller builds it for this call)."""
    out = _direct
    if out is None:
        logger.info(event, **fields)
        return
    fields["event"] = event
    fields["level"] = "info"
    _timestamp(None, "info", fields)
    out.add(_encode.encode(fields) + b"\n")


def write_held_lines() -> None:
    """Write out every line still held, now: at shutdown (a worker process of ``--workers N``
    ends without running ``atexit``)."""
    for buffer in list(LineBuffer._instances.values()):
        buffer.drain()


def _timestamp(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> Any:
    """ISO 8601 in UTC to the microsecond, ``Z`` for +00:00 (structlog's ``TimeStamper(fmt=
    "iso", utc=True)`` less its work: the date and time of day are formatted once a second)."""
    global _second, _second_text
    now = time.time_ns()
    second, fraction = divmod(now, 1_000_000_000)
    if second != _second:
        _second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second = second
    event["timestamp"] = f"{_second_text}.{fraction // 1000:06d}Z"
    return event


_second, _second_text = -1, ""


_encode = msgspec.json.Encoder(enc_hook=repr)


def _json_line(event: dict[str, Any], **_: Any) -> bytes:
    return _encode.encode(event)


#: How long a line logged on the event loop may wait for others to share its write.
HOLD_S = 0.02
#: Lines held at most: the line that makes them this many writes them all out at once.
MAX_HELD = 1024


class LineBuffer:
    """A binary stream's stand-in that holds what is written for up to :data:`HOLD_S` on the
    event loop (structlog's ``BytesLogger`` writes, then flushes, each line)."""

    _instances: ClassVar[dict[int, LineBuffer]] = {}

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._lines: list[bytes] = []
        self._scheduled = False
        self._lock = threading.Lock()

    @classmethod
    def over(cls, out: BinaryIO) -> LineBuffer:
        """One buffer per stream, written out at exit too."""
        buffer = cls._instances.get(id(out))
        if buffer is None:
            buffer = cls._instances[id(out)] = cls(out)
            atexit.register(buffer.drain)
        return buffer

    def write(self, data: bytes) -> int:
        with self._lock:
            self._lines.append(data)
        return len(data)

    def add(self, line: bytes) -> None:
        """``write`` then ``flush``."""
        self.write(line)
        self.flush()

    def flush(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop in this thread: now
            self.drain()
            return
        with self._lock:
            if self._scheduled and len(self._lines) < MAX_HELD:
                return
            full, self._scheduled = self._scheduled, True  # scheduled and still held: full
        if full:
            self.drain()  # the timer already set finds less, or nothing
        else:
            loop.call_later(HOLD_S, self.drain)

    def drain(self) -> None:
        with self._lock:
            lines, self._lines, self._scheduled = self._lines, [], False
        if lines:
            try:
                self._out.write(b"".join(lines))
                self._out.flush()
            except (OSError, ValueError):  # stderr closed or gone: nothing to tell it
                pass
