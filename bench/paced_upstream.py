"""A paced OpenAI-compatible upstream for scenario 4: SSE tokens at a fixed rate per stream.

Raw asyncio on uvloop, HTTP/1.1 keep-alive, chunked transfer encoding. Each
``POST .../chat/completions`` with ``"stream": true`` gets its first token at once, then one
token every ``1/rate`` seconds (scheduled on absolute times, so pacing does not drift), then a
usage chunk and ``data: [DONE]``. Without ``"stream": true`` it answers one JSON completion.
nginx cannot pace a body; this server spends one timer callback per token, nothing else.

    python bench/paced_upstream.py --port 9000 --tokens 200 --rate 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import cast

import uvloop

CHUNK_ID = "chatcmpl-paced"
PROMPT_TOKENS = 57


def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _token_event(i: int) -> bytes:
    delta: dict[str, str] = {"content": f" tok{i}"}
    if i == 0:
        delta = {"role": "assistant", "content": "tok0"}
    event = {
        "id": CHUNK_ID,
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "bench-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
    }
    return b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"


class Paced:
    def __init__(self, tokens: int, rate: float) -> None:
        self.tokens = tokens
        self.interval = 1.0 / rate
        self.events = [_chunk(_token_event(i)) for i in range(tokens)]
        last = {
            "id": CHUNK_ID,
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": "bench-model",
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        }
        usage = {
            "id": CHUNK_ID,
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": "bench-model",
            "choices": [],
            "usage": {
                "prompt_tokens": PROMPT_TOKENS,
                "completion_tokens": tokens,
                "total_tokens": PROMPT_TOKENS + tokens,
            },
        }
        tail = b"".join(
            b"data: " + json.dumps(e, separators=(",", ":")).encode() + b"\n\n"
            for e in (last, usage)
        )
        self.tail = _chunk(tail + b"data: [DONE]\n\n") + b"0\r\n\r\n"
        self.stream_head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        completion = {
            "id": "chatcmpl-paced",
            "object": "chat.completion",
            "created": 1700000000,
            "model": "bench-model",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "paced"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": 1, "total_tokens": 58},
        }
        body = json.dumps(completion).encode()
        self.json_answer = (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
        )


class PacedProtocol(asyncio.Protocol):
    def __init__(self, paced: Paced) -> None:
        self.paced = paced
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.busy = False  # answering a stream: later pipelined requests wait
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._serve()

    def _serve(self) -> None:
        while not self.busy and self.transport is not None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).lower()
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip() == b"content-length":
                    length = int(value.strip())
            if len(self.buffer) < end + 4 + length:
                return
            body = bytes(self.buffer[end + 4 : end + 4 + length])
            del self.buffer[: end + 4 + length]
            compact = body.replace(b" ", b"")
            if b'"stream":true' in compact:
                self.busy = True
                self.transport.write(self.paced.stream_head + self.paced.events[0])
                start = self.loop.time()
                self.loop.call_at(start + self.paced.interval, self._tick, 1, start)
            else:
                self.transport.write(self.paced.json_answer)

    def _tick(self, i: int, start: float) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if i < self.paced.tokens:
            self.transport.write(self.paced.events[i])
            self.loop.call_at(start + (i + 1) * self.paced.interval, self._tick, i + 1, start)
            return
        self.transport.write(self.paced.tail)
        self.busy = False
        self._serve()


async def serve(host: str, port: int, tokens: int, rate: float) -> None:
    paced = Paced(tokens, rate)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: PacedProtocol(paced), host, port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--rate", type=float, default=20.0, help="tokens per second per stream")
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port, args.tokens, args.rate))


if __name__ == "__main__":
    main()
