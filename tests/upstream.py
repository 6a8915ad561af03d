"""A small scripted OpenAI-compatible upstream for end-to-end tests.

The server runs on 127.0.0.1 on a free port, in a thread with its own event loop, so one server
can outlive a test's event loop (a session-scoped gateway points at it) and never competes with
the test for its loop. Use it as a context manager, sync or async::

    with UpstreamServer() as server:          # or: async with UpstreamServer() as server:
        base_url = server.url                 # "http://127.0.0.1:PORT/v1"

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions`` and ``POST /v1/responses``
(OpenAI's Responses API, natively; all three stream and not),
``POST /v1/embeddings``, ``GET /v1/models``.

What a request gets is scripted by a ``script`` object in its JSON body (the gateway forwards
unknown fields unchanged; the openai SDK sends it with ``extra_body={"script": {...}}``), over
the server's ``defaults``:

=====================  ======================================================================
``words``              N words in each answer (default 5): ``"hello"`` then ``" hello"`` x N-1,
                       each one token in cl100k_base and o200k_base, one word per stream chunk
``word``               the repeated word (default ``" hello"``)
``usage``              report usage (default true); streams only when the request asked for
                       ``stream_options.include_usage``, exactly like OpenAI; false: never
``prompt_tokens``      reported prompt tokens (default 10)
``completion_tokens``  reported completion tokens (default: the words generated, all choices)
``cached_tokens``      reported ``prompt_tokens_details.cached_tokens``
``status``             answer this HTTP status with an OpenAI-shaped error body
``retry_after``        ``Retry-After`` header on that error
``delay_s``            sleep before sending headers
``chunk_delay_s``      sleep between stream chunks
``drop_after``         abort the connection after N content chunks (streams)
``ignore_max_tokens``  default true: generate ``words`` whatever max_tokens says; false: honour
                       ``max_tokens``/``max_completion_tokens``/``max_output_tokens``,
                       ``finish_reason: "length"`` (Responses: ``status: "incomplete"``)
``tool_call``          answer with a tool call: true or ``{"name", "arguments", "pieces"}``;
                       in streams the arguments arrive in ``pieces`` chunks
``tool_call_first``    like ``tool_call`` when the request offers tools, until the conversation
                       holds a tool result (a ``tool`` message, a ``function_call_output``
                       item); then, and without tools, words
``reasoning_tokens``   Responses only: reported in ``output_tokens_details`` and added to
                       ``output_tokens``, as OpenAI counts them
``reasoning``          chat: N words of reasoning before the answer, in ``{"words": N,
                       "field": F}``: F ``"reasoning"`` (vLLM 0.11+, the default) or
                       ``"reasoning_content"`` sends them (a delta each in streams, the
                       message's field in answers); F null keeps them hidden, as OpenAI's
                       reasoning models do. Either way they are in ``completion_tokens``
                       (and ``completion_tokens_details.reasoning_tokens``)
=====================  ======================================================================

Per-server attributes a test may set: ``status`` (every request fails with it), ``fail_next``
(the next N requests fail with ``fail_status``, default 500), ``delay_s`` (added to every
request), ``retry_after``, ``set_cookie`` (a ``Set-Cookie`` value on every answer) and
``defaults`` (script defaults).

The server records what it received (``requests``: method, path, headers, parsed body) and every
stream it served (``streams``: chunks sent, whether it finished or the peer went away), so a test
can assert what reached the upstream and that a stream was closed when the client disconnected.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

__all__ = [
    "DEFAULT_PROMPT_TOKENS",
    "ReceivedRequest",
    "StreamRecord",
    "UpstreamServer",
    "answer_text",
    "free_port",
]

DEFAULT_PROMPT_TOKENS = 10
DEFAULT_WORDS = 5
DEFAULT_TOOL = {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (right now)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answer_text(words: int, word: str = " hello") -> str:
    """The text an answer of ``words`` words has: ``"hello hello ..."``."""
    return "".join(_words(words, word))


def _words(count: int, word: str = " hello") -> list[str]:
    return [word.lstrip() if i == 0 else word for i in range(count)]


@dataclass
class ReceivedRequest:
    method: str
    path: str
    headers: CIMultiDict[str]
    body: Any  # parsed JSON, or None
    raw: bytes
    closed_at: float | None = None  # when the handler ended (answered, failed or cancelled)
    cancelled: bool = False  # the peer went away before the answer was complete

    @property
    def script(self) -> dict[str, Any]:
        if isinstance(self.body, dict) and isinstance(self.body.get("script"), dict):
            return dict(self.body["script"])
        return {}


@dataclass
class StreamRecord:
    path: str
    chunks_sent: int = 0  # content chunks (words or tool-call pieces) written
    finished: bool = False  # wrote the whole answer and [DONE]
    disconnected: bool = False  # the peer went away before the end
    dropped: bool = False  # we aborted it on purpose (drop_after)
    opened_at: float = field(default_factory=time.monotonic)
    closed_at: float | None = None

    @property
    def open(self) -> bool:
        return self.closed_at is None


class _PeerGone(Exception):
    pass


_RECEIVED = web.RequestKey("received", ReceivedRequest)


class UpstreamServer:
    """A scripted OpenAI-compatible server on a free loopback port (see the module docstring)."""

    def __init__(self, name: str = "upstream") -> None:
        self.name = name
        self.requests: list[ReceivedRequest] = []
        self.streams: list[StreamRecord] = []
        self.defaults: dict[str, Any] = {}
        self.status: int | None = None
        self.fail_next = 0
        self.fail_status = 500
        self.retry_after: int | None = None
        self.delay_s = 0.0
        self.set_cookie: str | None = None
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._counter = 0

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The base URL a backend config points at (with ``/v1``)."""
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> UpstreamServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = int(sock.getsockname()[1])
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._serve(sock))
            except BaseException as exc:  # surfaced by start()
                errors.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name=f"upstream-{self.name}", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError(f"upstream {self.name} did not start")
        if errors:
            raise RuntimeError(f"upstream {self.name} did not start") from errors[0]
        return self

    async def _serve(self, sock: socket.socket) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[self._track])
        app.on_response_prepare.append(self._cookie)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/responses", self._responses)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._models)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        self._runner = web.AppRunner(
            app, handler_cancellation=True, shutdown_timeout=0.5, access_log=None
        )
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    def stop(self) -> None:
        loop, thread, runner = self._loop, self._thread, self._runner
        if loop is None or thread is None:
            return
        if runner is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._loop = self._thread = self._runner = None

    def __enter__(self) -> UpstreamServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> UpstreamServer:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)

    # -- what tests read ---------------------------------------------------------------------
    def reset(self) -> None:
        """Forget what was received and every per-server setting."""
        self.requests.clear()
        self.streams.clear()
        self.defaults = {}
        self.status = None
        self.fail_next = 0
        self.fail_status = 500
        self.retry_after = None
        self.delay_s = 0.0
        self.set_cookie = None

    @property
    def last(self) -> ReceivedRequest:
        assert self.requests, f"upstream {self.name} received no request"
        return self.requests[-1]

    def requests_to(self, path_suffix: str) -> list[ReceivedRequest]:
        return [r for r in self.requests if r.path.endswith(path_suffix)]

    @property
    def open_streams(self) -> int:
        return sum(1 for s in self.streams if s.open)

    @property
    def closed_streams(self) -> int:
        return sum(1 for s in self.streams if not s.open)

    # -- handlers ----------------------------------------------------------------------------
    async def _cookie(self, _request: web.Request, response: web.StreamResponse) -> None:
        if self.set_cookie is not None:
            response.headers["Set-Cookie"] = self.set_cookie

    @web.middleware
    async def _track(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Note on the request's record when its handler ended, and whether it was cut short."""
        try:
            return await handler(request)
        except (asyncio.CancelledError, ConnectionError, _PeerGone):
            if _RECEIVED in request:
                request[_RECEIVED].cancelled = True
            raise
        finally:
            if _RECEIVED in request:
                request[_RECEIVED].closed_at = time.monotonic()

    async def _receive(self, request: web.Request) -> tuple[ReceivedRequest, dict[str, Any]]:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        received = ReceivedRequest(
            method=request.method,
            path=request.path,
            headers=CIMultiDict(request.headers),
            body=body,
            raw=raw,
        )
        self.requests.append(received)
        request[_RECEIVED] = received
        script = {**self.defaults, **received.script}
        return received, script

    async def _before_answer(self, script: dict[str, Any]) -> web.Response | None:
        delay = float(script.get("delay_s", 0)) + self.delay_s
        if delay > 0:
            await asyncio.sleep(delay)
        status: int | None = None
        retry_after = script.get("retry_after", self.retry_after)
        if self.fail_next > 0:
            self.fail_next -= 1
            status = self.fail_status
        elif self.status is not None:
            status = self.status
        elif script.get("status") is not None:
            status = int(script["status"])
        if status is None:
            return None
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        kind = {429: "rate_limit_error", 401: "invalid_request_error"}.get(status, "api_error")
        if 400 <= status < 500 and status not in (401, 429):
            kind = "invalid_request_error"
        body = {
            "error": {
                "message": f"scripted upstream error {status}",
                "type": kind,
                "param": None,
                "code": f"scripted_{status}",
            }
        }
        return web.json_response(body, status=status, headers=headers)

    def _next_id(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}-{self.name}-{self._counter}"

    @staticmethod
    def _plan(body: dict[str, Any], script: dict[str, Any]) -> tuple[int, str]:
        """How many words to generate, and the finish reason."""
        words = int(script.get("words", DEFAULT_WORDS))
        if not script.get("ignore_max_tokens", True):
            bounds = [
                int(body[k])
                for k in ("max_tokens", "max_completion_tokens", "max_output_tokens")
                if isinstance(body.get(k), int)
            ]
            if bounds and min(bounds) < words:
                return max(0, min(bounds)), "length"
        return words, "stop"

    @staticmethod
    def _usage(script: dict[str, Any], completion: int, reasoning: int = 0) -> dict[str, Any]:
        prompt = int(script.get("prompt_tokens", DEFAULT_PROMPT_TOKENS))
        completion = int(script.get("completion_tokens", completion + reasoning))
        usage: dict[str, Any] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        if "cached_tokens" in script:
            usage["prompt_tokens_details"] = {"cached_tokens": int(script["cached_tokens"])}
        if reasoning:
            usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
        return usage

    @staticmethod
    def _reasoning(script: dict[str, Any]) -> tuple[int, str | None]:
        """(reasoning words, the field that carries them or None when hidden)."""
        spec = script.get("reasoning")
        if not isinstance(spec, dict):
            return 0, None
        return int(spec.get("words", 0)), spec.get("field", "reasoning")

    @staticmethod
    def _tool(script: dict[str, Any], body: Any = None) -> dict[str, Any] | None:
        spec = script.get("tool_call")
        first = script.get("tool_call_first")
        if not spec and first and isinstance(body, dict) and body.get("tools"):
            spec = None if _has_tool_result(body) else first
        if not spec:
            return None
        tool = dict(DEFAULT_TOOL)
        if isinstance(spec, dict):
            tool.update(spec)
        return tool

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        received, script = await self._receive(request)
        failure = await self._before_answer(script)
        if failure is not None:
            return failure
        body = received.body if isinstance(received.body, dict) else {}
        n = int(body.get("n") or 1)
        words, finish = self._plan(body, script)
        tool = self._tool(script, body)
        ident = self._next_id("chatcmpl")
        model = body.get("model", "unknown")
        if body.get("stream"):
            return await self._chat_stream(
                request, body, script, ident, model, n, words, finish, tool
            )
        thought, field = self._reasoning(script)
        choices = []
        for index in range(n):
            message: dict[str, Any] = {
                "role": "assistant",
                "content": answer_text(words, self._word(script)),
            }
            if thought and field is not None:
                message[field] = answer_text(thought, " think")
            choice_finish = finish
            if tool is not None:
                message = {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": f"call_{index}",
                            "type": "function",
                            "function": {"name": tool["name"], "arguments": tool["arguments"]},
                        }
                    ],
                }
                choice_finish = "tool_calls"
            choices.append(
                {
                    "index": index,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": choice_finish,
                }
            )
        answer: dict[str, Any] = {
            "id": ident,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": choices,
        }
        if script.get("usage", True):
            generated = len(_tool_pieces(tool)) if tool is not None else words
            answer["usage"] = self._usage(script, generated * n, thought * n)
        return web.json_response(answer)

    @staticmethod
    def _word(script: dict[str, Any]) -> str:
        return str(script.get("word", " hello"))

    async def _chat_stream(
        self,
        request: web.Request,
        body: dict[str, Any],
        script: dict[str, Any],
        ident: str,
        model: str,
        n: int,
        words: int,
        finish: str,
        tool: dict[str, Any] | None,
    ) -> web.StreamResponse:
        created = int(time.time())

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
            return {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": choices,
                **extra,
            }

        def delta(index: int, payload: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
            return {"index": index, "delta": payload, "logprobs": None, "finish_reason": reason}

        events: list[tuple[dict[str, Any], bool]] = []  # (chunk, counts as content)

        def each_choice(payload: dict[str, Any], content: bool, reason: str | None = None) -> None:
            events.extend((chunk([delta(i, payload, reason)]), content) for i in range(n))

        thought, field = self._reasoning(script)
        if tool is None:
            each_choice({"role": "assistant", "content": ""}, False)
            if field is not None:
                for word in _words(thought, " think"):
                    each_choice({field: word}, True)
            for word in _words(words, self._word(script)):
                each_choice({"content": word}, True)
            each_choice({}, False, finish)
            generated = words * n
        else:
            pieces = _tool_pieces(tool)
            function = {"name": tool["name"], "arguments": ""}
            call = {"index": 0, "id": "call_0", "type": "function", "function": function}
            each_choice({"role": "assistant", "content": None, "tool_calls": [call]}, False)
            for piece in pieces:
                each_choice({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}, True)
            each_choice({}, False, "tool_calls")
            generated = len(pieces) * n
        options = body.get("stream_options")
        wants_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        if script.get("usage", True) and wants_usage:
            events.append((chunk([], usage=self._usage(script, generated, thought * n)), False))

        record = StreamRecord(path=request.path)
        self.streams.append(record)
        response = web.StreamResponse(
            status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        return await self._send_events(request, response, record, events, script)

    async def _send_events(
        self,
        request: web.Request,
        response: web.StreamResponse,
        record: StreamRecord,
        events: list[tuple[dict[str, Any], bool]],
        script: dict[str, Any],
        *,
        responses: bool = False,
    ) -> web.StreamResponse:
        """Write ``events`` as SSE (Responses API: named events, no ``[DONE]``)."""
        chunk_delay = float(script.get("chunk_delay_s", 0))
        drop_after = script.get("drop_after")
        try:
            await response.prepare(request)
            for payload, is_content in events:
                if is_content and drop_after is not None and record.chunks_sent >= int(drop_after):
                    record.dropped = True
                    if request.transport is not None:
                        request.transport.abort()
                    return response
                if is_content and chunk_delay > 0 and record.chunks_sent > 0:
                    await asyncio.sleep(chunk_delay)
                named = f"event: {payload['type']}\n".encode() if responses else b""
                await self._write(
                    request, response, named + b"data: " + json.dumps(payload).encode() + b"\n\n"
                )
                if is_content:
                    record.chunks_sent += 1
            if not responses:
                await self._write(request, response, b"data: [DONE]\n\n")
            await response.write_eof()
            record.finished = True
        except (_PeerGone, ConnectionError, asyncio.CancelledError):
            record.disconnected = True
            raise
        finally:
            record.closed_at = time.monotonic()
        return response

    @staticmethod
    async def _write(request: web.Request, response: web.StreamResponse, data: bytes) -> None:
        transport = request.transport
        if transport is None or transport.is_closing():
            raise _PeerGone
        await response.write(data)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        received, script = await self._receive(request)
        failure = await self._before_answer(script)
        if failure is not None:
            return failure
        body = received.body if isinstance(received.body, dict) else {}
        n = int(body.get("n") or 1)
        words, finish = self._plan(body, script)
        ident = self._next_id("cmpl")
        model = body.get("model", "unknown")
        created = int(time.time())
        word = self._word(script)
        if not body.get("stream"):
            answer: dict[str, Any] = {
                "id": ident,
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "text": answer_text(words, word),
                        "index": i,
                        "logprobs": None,
                        "finish_reason": finish,
                    }
                    for i in range(n)
                ],
            }
            if script.get("usage", True):
                answer["usage"] = self._usage(script, words * n)
            return web.json_response(answer)

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
            return {
                "id": ident,
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": choices,
                **extra,
            }

        def text(index: int, value: str, reason: str | None = None) -> dict[str, Any]:
            return {"text": value, "index": index, "logprobs": None, "finish_reason": reason}

        events: list[tuple[dict[str, Any], bool]] = []
        for value in _words(words, word):
            events += [(chunk([text(i, value)]), True) for i in range(n)]
        events += [(chunk([text(i, "", finish)]), False) for i in range(n)]
        options = body.get("stream_options")
        if script.get("usage", True) and isinstance(options, dict) and options.get("include_usage"):
            events.append((chunk([], usage=self._usage(script, words * n)), False))
        record = StreamRecord(path=request.path)
        self.streams.append(record)
        response = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream"})
        return await self._send_events(request, response, record, events, script)

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        """OpenAI's Responses API, spoken natively: one output item (a message, or a function
        call), usage always reported (unless ``usage`` is false)."""
        received, script = await self._receive(request)
        failure = await self._before_answer(script)
        if failure is not None:
            return failure
        body = received.body if isinstance(received.body, dict) else {}
        words, finish = self._plan(body, script)
        tool = self._tool(script, body)
        ident = self._next_id("resp")
        item_id = self._next_id("item")
        created = int(time.time())
        pieces = _tool_pieces(tool) if tool is not None else _words(words, self._word(script))
        reasoning = int(script.get("reasoning_tokens", 0))
        usage: dict[str, Any] | None = None
        if script.get("usage", True):
            chat_usage = self._usage(script, len(pieces) + reasoning)
            usage = {
                "input_tokens": chat_usage["prompt_tokens"],
                "input_tokens_details": {"cached_tokens": int(script.get("cached_tokens", 0))},
                "output_tokens": chat_usage["completion_tokens"],
                "output_tokens_details": {"reasoning_tokens": reasoning},
                "total_tokens": chat_usage["total_tokens"],
            }

        def item(status: str, text: str) -> dict[str, Any]:
            if tool is not None:
                return {
                    "id": item_id,
                    "type": "function_call",
                    "status": status,
                    "call_id": "call_0",
                    "name": tool["name"],
                    "arguments": text,
                }
            content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
            return {
                "id": item_id,
                "type": "message",
                "status": status,
                "role": "assistant",
                "content": content if status == "completed" else [],
            }

        def answer(status: str, output: list[dict[str, Any]]) -> dict[str, Any]:
            done = status != "in_progress"
            return {
                "id": ident,
                "object": "response",
                "created_at": created,
                "status": status,
                "error": None,
                "incomplete_details": {"reason": "max_output_tokens"}
                if status == "incomplete"
                else None,
                "instructions": body.get("instructions"),
                "max_output_tokens": body.get("max_output_tokens"),
                "model": body.get("model", "unknown"),
                "output": output,
                "parallel_tool_calls": True,
                "tool_choice": body.get("tool_choice", "auto"),
                "tools": body.get("tools", []),
                "usage": usage if done else None,
            }

        full = "".join(pieces)
        final = "incomplete" if finish == "length" else "completed"
        if not body.get("stream"):
            return web.json_response(answer(final, [item("completed", full)]))

        sequence = iter(range(1 << 30))
        events: list[tuple[dict[str, Any], bool]] = []

        def emit(kind: str, content: bool = False, **fields: Any) -> None:
            events.append(({"type": kind, "sequence_number": next(sequence), **fields}, content))

        emit("response.created", response=answer("in_progress", []))
        emit("response.in_progress", response=answer("in_progress", []))
        emit("response.output_item.added", output_index=0, item=item("in_progress", ""))
        where = {"item_id": item_id, "output_index": 0}
        if tool is None:
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            emit("response.content_part.added", **where, content_index=0, part=part)
            for piece in pieces:
                emit("response.output_text.delta", True, **where, content_index=0, delta=piece)
            emit("response.output_text.done", **where, content_index=0, text=full)
            emit(
                "response.content_part.done", **where, content_index=0, part={**part, "text": full}
            )
        else:
            for piece in pieces:
                emit("response.function_call_arguments.delta", True, **where, delta=piece)
            emit("response.function_call_arguments.done", **where, arguments=full)
        emit("response.output_item.done", output_index=0, item=item("completed", full))
        emit(f"response.{final}", response=answer(final, [item("completed", full)]))

        record = StreamRecord(path=request.path)
        self.streams.append(record)
        response = web.StreamResponse(
            status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        return await self._send_events(request, response, record, events, script, responses=True)

    async def _embeddings(self, request: web.Request) -> web.Response:
        received, script = await self._receive(request)
        failure = await self._before_answer(script)
        if failure is not None:
            return failure
        body = received.body if isinstance(received.body, dict) else {}
        inputs = body.get("input")
        count = len(inputs) if isinstance(inputs, list) and not _is_token_list(inputs) else 1
        vector = [0.25, -0.5, 0.125, 1.0]
        as_base64 = body.get("encoding_format") == "base64"
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": (
                    base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
                    if as_base64
                    else vector
                ),
            }
            for i in range(count)
        ]
        answer: dict[str, Any] = {
            "object": "list",
            "data": data,
            "model": body.get("model", "unknown"),
        }
        if script.get("usage", True):
            prompt = int(script.get("prompt_tokens", DEFAULT_PROMPT_TOKENS))
            answer["usage"] = {"prompt_tokens": prompt, "total_tokens": prompt}
        return web.json_response(answer)

    async def _models(self, request: web.Request) -> web.Response:
        self.requests.append(
            ReceivedRequest(request.method, request.path, CIMultiDict(request.headers), None, b"")
        )
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {"id": "up-model", "object": "model", "created": 0, "owned_by": self.name}
                ],
            }
        )

    async def _not_found(self, request: web.Request) -> web.Response:
        body = {
            "error": {
                "message": f"no route {request.method} {request.path}",
                "type": "invalid_request_error",
                "param": None,
                "code": "not_found",
            }
        }
        return web.json_response(body, status=404)


def _has_tool_result(body: Any) -> bool:
    if not isinstance(body, dict):
        return False
    messages = body.get("messages")
    items = body.get("input")
    return any(isinstance(m, dict) and m.get("role") == "tool" for m in messages or ()) or any(
        isinstance(i, dict) and i.get("type") == "function_call_output"
        for i in (items if isinstance(items, list) else ())
    )


def _tool_pieces(tool: dict[str, Any]) -> list[str]:
    """The tool call's arguments cut into ``pieces`` stream chunks."""
    text = str(tool["arguments"])
    pieces = max(1, min(int(tool.get("pieces", 3)), len(text)))
    size = -(-len(text) // pieces)
    return [text[i : i + size] for i in range(0, len(text), size)]


def _is_token_list(value: list[Any]) -> bool:
    return bool(value) and all(isinstance(v, int) for v in value)
