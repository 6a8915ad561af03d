"""The metered endpoints (chat, completions, embeddings, responses) as plain ASGI.

These four carry every token the gateway sells, so they skip Litestar's per-request layers
(request and response objects, handler signature, exception middleware, the task group of its
streaming response): about 60 µs a request, measured with ``bench/`` on this stack. Every other
route is Litestar's; :func:`gateway.app.create_app` puts this in front of it.

What Litestar did for these routes is done here, the same way: the body limit (413), the
OpenAI-shaped error for any :class:`GatewayError`, a logged 500 for anything else, 405 for
another method, and the request id on every answer.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from litestar.types import HTTPScope, Message, Receive, Send

from gateway.api.common import (
    ClientGone,
    as_gateway_error,
    error_headers,
    parse_json_object,
    unless_client_leaves,
)
from gateway.errors import InvalidRequest, PayloadTooLarge
from gateway.proxy.endpoints import CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES, Endpoint
from gateway.proxy.relay import LastChunk, Reply, StreamReply
from gateway.services import Services
from gateway.storage import UsageStatus

__all__ = ["ROUTES", "MeteredAPI"]

log = structlog.get_logger("gateway.app")

#: Path -> endpoint, for POST.
ROUTES: dict[str, Endpoint] = {
    "/v1/chat/completions": CHAT,
    "/v1/completions": COMPLETIONS,
    "/v1/embeddings": EMBEDDINGS,
    "/v1/responses": RESPONSES,
}

Headers = list[tuple[bytes, bytes]]

_JSON = (b"content-type", b"application/json")
_STREAM_HEADERS: Headers = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
]


class MethodNotAllowed(InvalidRequest):
    status = 405


class MeteredAPI:
    def __init__(self, services: Services) -> None:
        self._services = services
        config = services.config
        self._max_body = config.server.max_body_bytes
        self._stalls = _StallWatch(config.server.send_timeout_s)

    @staticmethod
    def endpoint_for(path: str) -> Endpoint | None:
        return ROUTES.get(path) or (ROUTES.get(path.rstrip("/")) if path.endswith("/") else None)

    async def __call__(
        self, scope: HTTPScope, receive: Receive, send: Send, endpoint: Endpoint, request_id: str
    ) -> None:
        rid = (b"x-request-id", request_id.encode())
        started = False

        async def respond(status: int, body: bytes, headers: Headers) -> None:
            nonlocal started
            started = True
            headers.append((b"content-length", str(len(body)).encode()))
            headers.append(rid)
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body, "more_body": False})

        try:
            if scope["method"] != "POST":
                raise MethodNotAllowed(
                    f"Method Not Allowed: use POST for {endpoint.name}.",
                    headers={"Allow": "POST"},
                )
            headers = _header_dict(scope)
            services = self._services
            relay = services.relay
            assert relay is not None, "the gateway has not started"
            key = await services.keys.authenticate(headers.get("authorization"))
            body = parse_json_object(await self._read_body(receive, headers))
            work = relay.handle(endpoint, key, body, headers, request_id)
            if body.get("stream") is True:
                answer = await work  # a stream notices the disconnect itself, once it runs
            else:
                try:
                    answer = await unless_client_leaves(receive, work)
                except ClientGone:
                    await respond(499, b"", [])  # nobody is listening
                    return
            if isinstance(answer, Reply):
                out = [(k.lower().encode(), v.encode()) for k, v in answer.headers.items()]
                if not any(k == b"content-type" for k, _ in out):
                    out.append(_JSON)
                await respond(answer.status, answer.body, out)
                return
            started = True
            await _send_stream(answer, receive, send, rid, self._stalls)
        except ClientGone:  # it left while sending its body: nobody to answer
            return
        except Exception as exc:
            if started:
                raise
            err = as_gateway_error(exc, scope["path"])
            await respond(err.status, err.to_json(), error_headers(err))

    async def _read_body(self, receive: Receive, headers: dict[str, str]) -> bytes:
        limit = self._max_body
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge("The request body is too large.")
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left while sending it
                raise ClientGone
            part = message.get("body", b"")
            size += len(part)
            if size > limit:
                raise PayloadTooLarge("The request body is too large.")
            parts.append(part)
            if not message.get("more_body", False):
                return parts[0] if len(parts) == 1 else b"".join(parts)


class _Sending:
    """One stream being sent: when its write under way began (0: none is)."""

    __slots__ = ("since", "stalled", "task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.since = 0.0
        self.stalled = False


class _StallWatch:
    """The streams this process is sending, looked at by one timer every quarter of
    ``send_timeout_s`` while there are any: a stream whose write has waited that long (its
    client takes nothing) is cancelled, marked stalled. One timer for all of them, not one a
    stream (a timer a stream cost ~9 µs of each, measured under the bench's load)."""

    def __init__(self, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self._streams: set[_Sending] = set()
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, sending: _Sending) -> None:
        self._streams.add(sending)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._timeout_s / 4, self._check)

    def forget(self, sending: _Sending) -> None:
        self._streams.discard(sending)

    def _check(self) -> None:
        loop = asyncio.get_running_loop()
        now, timeout = loop.time(), self._timeout_s
        for sending in self._streams:
            if sending.since and now - sending.since >= timeout and not sending.stalled:
                sending.stalled = True
                sending.task.cancel()
        self._timer = loop.call_later(timeout / 4, self._check) if self._streams else None


async def _send_stream(
    answer: StreamReply,
    receive: Receive,
    send: Send,
    rid: tuple[bytes, bytes],
    stalls: _StallWatch,
) -> None:
    """Send a stream, watching for the client leaving (the stream is then cancelled, and its
    settlement records the disconnect), and for a client that takes nothing of it for
    ``send_timeout_s`` (its connection is dropped, then the same). However it ends, it is
    settled before this returns."""
    body = answer.body
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    sending = _Sending(task)

    async def pump() -> None:
        start: Message = {
            "type": "http.response.start", "status": 200, "headers": [*_STREAM_HEADERS, rid]
        }  # fmt: skip
        await send(start)
        ended = False
        async for chunk in body:
            ended = type(chunk) is LastChunk
            sending.since = loop.time()
            # waits while the client's connection takes nothing
            await send({"type": "http.response.body", "body": chunk, "more_body": not ended})
            sending.since = 0.0
        if not ended:
            sending.since = loop.time()
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    stalls.watch(sending)
    try:
        await unless_client_leaves(receive, pump())  # watched from 250 ms in, like the rest
    except ClientGone:
        pass  # settled as a disconnect, below or by the stream itself
    except asyncio.CancelledError:
        if not sending.stalled or task.uncancel() > 0:
            raise
        log.warning("client_stalled", request_id=answer.settlement.request_id)
        _abort(send)
    finally:
        stalls.forget(sending)
        await body.aclose()
        # the net for a stream that never started (the client left before its first byte)
        await answer.settlement.settle(UsageStatus.CLIENT_DISCONNECTED, charge=False)


def _abort(send: Send) -> None:
    """Drop the client's connection at once, unflushed: closing it gracefully would wait for a
    client that takes nothing, its socket held meanwhile. ASGI has no message for it; uvicorn's
    ``send`` is a method of the exchange, whose ``transport`` it is. (Under another server,
    the answer is left unfinished, which the server ends its own way.)"""
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if isinstance(transport, asyncio.BaseTransport):
        transport.abort()  # type: ignore[attr-defined]


def _header_dict(scope: HTTPScope) -> dict[str, str]:
    """The request's headers by lower-case name (ASGI servers send them lower-cased); of a
    repeated header, the first."""
    out: dict[str, str] = {}
    for name, value in scope["headers"]:
        text = name.decode("latin-1")
        if text not in out:
            out[text] = value.decode("latin-1")
    return out
