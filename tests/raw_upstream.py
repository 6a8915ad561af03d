"""A byte-level misbehaving upstream for fault tests: a raw asyncio TCP server on loopback.

Where :mod:`upstream` is a polite aiohttp server, this one writes exactly the bytes a test
scripts, when and how it says: nothing at all, half a status line, headers then a reset, a
body that stalls, an event stream one byte per TCP segment. It reads each request (head and
``Content-Length`` body), records it, and plays the :class:`Play` the test set::

    with RawUpstream() as raw:
        raw.play = Play(head=http_head(200, "text/event-stream", chunked=True),
                        body=sse_chunks(events), byte_by_byte=True, then="close")
        ... # the gateway's backend points at raw.url

``play`` may also be a function of the request (its parsed JSON body), to answer a stream
request and a plain one differently. Every connection is ``Connection: close``: nothing is
pooled, so each request meets the play fresh.

Also here: :func:`blackhole`, a loopback port whose listen backlog is full, so a connect to it
never completes (the kernel drops the SYNs): a real connect timeout without leaving loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "Play",
    "RawRequest",
    "RawUpstream",
    "blackhole",
    "chat_chunk",
    "chunked",
    "http_head",
    "json_answer",
    "sse",
]

Then = Literal["close", "reset", "stall"]


@dataclass(frozen=True)
class Play:
    """What the server does with one request, in order:

    - ``delay_s``: wait before writing anything;
    - ``head``: the status line and headers (None: write nothing at all);
    - ``body``: pieces written after the head, ``pause_s`` apart (``byte_by_byte``: every
      byte of head and body is its own write, flushed, ``pause_s`` apart);
    - ``then``: ``close`` (FIN), ``reset`` (RST: SO_LINGER 0), or ``stall`` (write nothing
      more and keep the connection open until the peer closes it, at most ``stall_s``).
    """

    head: bytes | None = None
    body: tuple[bytes, ...] = ()
    byte_by_byte: bool = False
    pause_s: float = 0.0
    delay_s: float = 0.0
    then: Then = "close"
    stall_s: float = 30.0


@dataclass
class RawRequest:
    head: bytes
    body: bytes
    json: Any = None
    received_at: float = field(default_factory=time.monotonic)
    #: When the peer (the gateway) closed the connection, if it did.
    peer_closed_at: float | None = None
    #: Bytes of the play written before the end (or the peer went away).
    written: int = 0

    @property
    def headers(self) -> dict[str, str]:
        lines = self.head.decode("latin-1").split("\r\n")[1:]
        out: dict[str, str] = {}
        for line in lines:
            name, _, value = line.partition(":")
            if name:
                out[name.strip().lower()] = value.strip()
        return out

    @property
    def stream(self) -> bool:
        return isinstance(self.json, dict) and self.json.get("stream") is True


# -- building answers ---------------------------------------------------------------------------
def http_head(
    status: int = 200,
    content_type: str = "application/json",
    *,
    length: int | None = None,
    chunked: bool = False,
    extra: dict[str, str] | None = None,
) -> bytes:
    """A status line and headers. With neither ``length`` nor ``chunked`` the body runs to
    the end of the connection (HTTP/1.1 close-delimited)."""
    reason = {200: "OK", 429: "Too Many Requests", 500: "Internal Server Error"}.get(status, "X")
    lines = [f"HTTP/1.1 {status} {reason}", f"Content-Type: {content_type}", "Connection: close"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def json_answer(body: bytes, status: int = 200, **head: Any) -> Play:
    """A complete answer with a Content-Length."""
    return Play(head=http_head(status, length=len(body), **head), body=(body,))


def chunked(pieces: list[bytes], *, end: bool = True) -> tuple[bytes, ...]:
    """``pieces`` framed as HTTP/1.1 chunks (one chunk each); ``end``: the last-chunk marker."""
    out = [f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in pieces if p]
    if end:
        out.append(b"0\r\n\r\n")
    return tuple(out)


def chat_chunk(
    content: str | None = None, *, usage: dict[str, Any] | None = None, role: bool = False
) -> dict[str, Any]:
    """A chat.completion.chunk: one content delta, or (``usage``) the final usage chunk."""
    base: dict[str, Any] = {
        "id": "chatcmpl-raw",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "raw",
    }
    if usage is not None:
        return {**base, "choices": [], "usage": usage}
    delta: dict[str, Any] = {"content": content or ""}
    if role:
        delta["role"] = "assistant"
    return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}


def sse(payload: Any, eol: str = "\n") -> bytes:
    """One ``data:`` event (a JSON payload, or a raw string such as ``[DONE]``)."""
    data = payload if isinstance(payload, str) else json.dumps(payload)
    return f"data: {data}{eol}{eol}".encode()


# -- the server ---------------------------------------------------------------------------------
class RawUpstream:
    """The raw server on a free loopback port, in a thread with its own event loop."""

    def __init__(self, name: str = "raw") -> None:
        self.name = name
        self.play: Play | Callable[[RawRequest], Play] = Play(then="close")
        self.requests: list[RawRequest] = []
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def last(self) -> RawRequest:
        assert self.requests, f"raw upstream {self.name} received no request"
        return self.requests[-1]

    def reset(self) -> None:
        self.requests.clear()
        self.play = Play(then="close")

    def start(self) -> RawUpstream:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            self._server = loop.run_until_complete(
                asyncio.start_server(self._serve, "127.0.0.1", 0)
            )
            self.port = int(self._server.sockets[0].getsockname()[1])
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name=f"raw-{self.name}", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError(f"raw upstream {self.name} did not start")
        return self

    def stop(self) -> None:
        loop, thread, server = self._loop, self._thread, self._server
        if loop is None or thread is None:
            return

        async def shut() -> None:
            if server is not None:
                server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shut(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._loop = self._thread = self._server = None

    def __enter__(self) -> RawUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            request = await self._read_request(reader)
            if request is None:
                return
            self.requests.append(request)
            play = self.play(request) if callable(self.play) else self.play
            await self._perform(play, request, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            if not writer.is_closing():
                writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    @staticmethod
    async def _read_request(reader: asyncio.StreamReader) -> RawRequest | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return None
        length = 0
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        body = await reader.readexactly(length) if length else b""
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        return RawRequest(head=head, body=body, json=parsed)

    async def _perform(
        self,
        play: Play,
        request: RawRequest,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        if play.delay_s:
            await asyncio.sleep(play.delay_s)
        pieces = ([play.head] if play.head is not None else []) + list(play.body)
        if play.byte_by_byte:
            pieces = [bytes([b]) for piece in pieces for b in piece]
        try:
            for i, piece in enumerate(pieces):
                if i and play.pause_s:
                    await asyncio.sleep(play.pause_s)
                writer.write(piece)
                await writer.drain()
                request.written += len(piece)
        except ConnectionError:
            request.peer_closed_at = time.monotonic()  # the peer went away mid-play
            return
        if play.then == "reset":
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return
        if play.then == "stall":
            try:
                await asyncio.wait_for(reader.read(), play.stall_s)  # EOF: the peer closed
            except TimeoutError:
                return
            except ConnectionError:
                pass  # reset: the peer closed with our bytes unread
            request.peer_closed_at = time.monotonic()
            return
        if writer.can_write_eof():
            writer.write_eof()
        with contextlib.suppress(TimeoutError, ConnectionError):
            await asyncio.wait_for(reader.read(), 2.0)


@contextlib.contextmanager
def blackhole() -> Iterator[int]:
    """A loopback port that never completes a connect: listening with a backlog of zero that
    is already full (two connects queued, never accepted), so the kernel drops further SYNs."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = int(listener.getsockname()[1])
        for _ in range(3):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        time.sleep(0.1)  # let the handshakes land in the accept queue
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()
