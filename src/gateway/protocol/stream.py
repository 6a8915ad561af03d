"""A backend's event stream, read a batch at a time: the events each upstream read completes,
as the dialect splits them (:meth:`~gateway.protocol.dialects.Dialect.split`).

:meth:`EventStream.open` reads up to the first event, so that a backend failing before it says
anything can be failed over; then the stream is iterated batch by batch. A read cancelled with
its request (the client left) does not end the stream: the next one goes on from where the body
is, so that what is left can still be read (the relay's drain).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Protocol

from gateway.errors import UpstreamError
from gateway.protocol.dialects import Dialect
from gateway.protocol.sse import Event, EventTooLarge, SSEParser

__all__ = ["Body", "EventStream"]


class Body(Protocol):
    """An answer's body as it arrives (an upstream response's)."""

    def chunks(self) -> AsyncIterator[bytes]:
        """Its bytes; called again, it goes on from where the last iterator stopped."""
        ...


class EventStream:
    def __init__(self, dialect: Dialect, response: Body, max_event_bytes: int) -> None:
        self._dialect = dialect
        self._parser = SSEParser(max_event_bytes=max_event_bytes)
        self._response = response
        self._chunks: AsyncIterator[bytes] = response.chunks()
        self._first: list[Event] = []
        self._flushed = False

    async def open(self, backend: str) -> None:
        """Read up to the first event; ``UpstreamError`` if the stream ends without one."""
        async for chunk in self._chunks:
            self._first = self._split(chunk)
            if self._first:
                return
        self._first = self._parser.flush()
        self._flushed = True
        if not self._first:
            raise UpstreamError(f"backend {backend!r} closed an empty stream")

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> list[Event]:
        """The events of the next upstream read that completes any."""
        if self._first:
            first, self._first = self._first, []
            return first
        while True:
            try:
                chunk = await anext(self._chunks)
            except StopAsyncIteration:
                rest = [] if self._flushed else self._parser.flush()
                self._flushed = True
                if rest:
                    return rest
                raise
            except asyncio.CancelledError:
                self._chunks = self._response.chunks()  # the cancelled iterator has ended
                raise
            events = self._split(chunk)
            if events:
                return events

    def _split(self, chunk: bytes) -> list[Event]:
        try:
            return self._dialect.split(self._parser, chunk)
        except EventTooLarge as exc:
            raise UpstreamError(f"the backend sent an event over {exc.limit} bytes") from exc
