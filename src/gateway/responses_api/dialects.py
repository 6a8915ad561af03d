"""OpenAI's Responses API (``POST /v1/responses``): the two dialects the relay speaks it in.

- :class:`NativeResponses`, for backends that speak the Responses API themselves
  (``responses_api = true``): the body goes to ``/responses`` unchanged but for ``model`` and
  the ``max_output_tokens`` bound; the answer is relayed as is. Metering reads the answer's
  ``usage`` (``input_tokens``, ``output_tokens`` (reasoning included), cached input tokens),
  and in streams the text deltas as they pass and the usage of ``response.completed`` (or
  ``response.incomplete``), which is held back until the request is settled, as ``[DONE]``
  is for chat.
- :class:`ChatTranslation`, for backends that speak only chat completions: the request is
  translated into a chat completion and the answer back (:mod:`gateway.responses_api.chat_answer`).

Errors after a stream has started go out as the Responses API's ``error`` event.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from gateway.config import BackendConfig
from gateway.errors import GatewayError, UpstreamError
from gateway.pricing import TokenCounts
from gateway.protocol.cutting import cut_choices, cut_output
from gateway.protocol.dialects import (
    Action,
    Dialect,
    ReportedUsage,
    Step,
    Texts,
    framing,
    rewritten_body,
)
from gateway.protocol.sse import Event
from gateway.responses_api.chat_answer import (
    ChatAnswer,
    ChatChunk,
    ChatUsage,
    StreamTranslator,
    decode_answer,
    decode_chunk,
    error_event,
    message_texts,
    response_object,
    usage_json,
)
from gateway.responses_api.chat_request import chat_request
from gateway.tokens import TokenCounter

__all__ = ["ChatTranslation", "NativeResponses", "responses_dialect"]


def responses_dialect(backend: BackendConfig) -> Dialect:
    """How ``/v1/responses`` reaches ``backend``: as is, or translated into chat."""
    if backend.responses_api and backend.kind != "demo":  # the demo supplier speaks chat
        return NativeResponses()
    return ChatTranslation(backend.chat_bound_field)


# -- native ------------------------------------------------------------------------------------
class _InputDetails(msgspec.Struct):
    cached_tokens: int | None = None


class _NativeUsage(msgspec.Struct):
    input_tokens: int | None = None
    output_tokens: int | None = None
    input_tokens_details: _InputDetails | None = None


class _NativeResponse(msgspec.Struct):
    usage: _NativeUsage | None = None
    output: list[Any] | None = None


class _NativeEvent(msgspec.Struct):
    type: str | None = None
    sequence_number: int | None = None
    delta: Any = None
    response: _NativeResponse | None = None


_decode_response = msgspec.json.Decoder(_NativeResponse).decode
_decode_event = msgspec.json.Decoder(_NativeEvent).decode

#: Stream events whose ``delta`` is text the model generated (billed as output tokens).
_GENERATED = frozenset(
    {
        "response.output_text.delta",
        "response.refusal.delta",
        "response.function_call_arguments.delta",
        "response.custom_tool_call_input.delta",
        "response.reasoning_text.delta",
        "response.reasoning_summary_text.delta",
        "response.mcp_call_arguments.delta",
        "response.code_interpreter_call_code.delta",
        "response.shell_call_command.delta",
        "response.audio.transcript.delta",
    }
)
_FINAL = frozenset({"response.completed", "response.incomplete"})
_FAILED = frozenset({"response.failed", "error"})


def _native_reported(usage: _NativeUsage | None) -> ReportedUsage | None:
    if usage is None:
        return None
    details = usage.input_tokens_details
    return ReportedUsage(
        usage.input_tokens,
        usage.output_tokens,
        details.cached_tokens if details is not None else None,
    )


def _output_texts(output: list[Any] | None) -> Texts:
    """The generated text of a response's output items (for counting where no usage came)."""
    texts: list[str] = []
    for item in output or ():
        if not isinstance(item, dict):
            continue
        for name in ("arguments", "input", "code"):  # function, custom tool, code calls
            value = item.get(name)
            if isinstance(value, str):
                texts.append(value)
        called = item.get("name")
        if item.get("type") in ("function_call", "custom_tool_call") and isinstance(called, str):
            texts.append(called)
        for key in ("content", "summary"):  # message parts, reasoning text and summaries
            parts = item.get(key)
            if not isinstance(parts, list):
                continue
            for part in parts:
                if isinstance(part, dict):
                    for text_key in ("text", "refusal"):
                        value = part.get(text_key)
                        if isinstance(value, str):
                            texts.append(value)
    return tuple((0, text) for text in texts if text)


class NativeResponses(Dialect):
    """The Responses API relayed to a backend that speaks it."""

    path = "/responses"

    def __init__(self) -> None:
        self._read: int | None = None  # the sequence_number of the event last read
        self._next_sequence = 0  # the one after the last event the client got
        self._cut: dict[str, Any] | None = None  # the answer as cut, once it was

    def upstream_body(
        self, body: Mapping[str, Any], *, upstream_model: str, cap: int | None, stream: bool
    ) -> bytes:
        # a Responses stream always ends with its usage: there is no stream_options to set
        return rewritten_body(
            body, upstream_model=upstream_model, bound_field="max_output_tokens", cap=cap,
            include_usage=False,
        )  # fmt: skip

    def read_answer(self, data: bytes) -> tuple[ReportedUsage | None, Texts]:
        try:
            answer = _decode_response(data)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
            raise UpstreamError("the backend sent an unreadable answer") from exc
        return _native_reported(answer.usage), _output_texts(answer.output)

    def cut_answer(self, data: bytes, keep: int, counter: TokenCounter) -> bytes:
        response = msgspec.json.decode(data)
        if not isinstance(response, dict) or not cut_output(response, keep, counter):
            return data
        self._cut = response
        return msgspec.json.encode(response)

    def render_answer(self, data: bytes, usage: TokenCounts) -> bytes:
        response = self._cut
        if response is None:
            return data
        response["usage"] = usage_json(usage)
        return msgspec.json.encode(response)

    def read_event(self, event: Event) -> Step:
        step = framing(event)
        if step is not None:
            return step
        data = event.data
        assert data is not None  # framing() answers data-less events
        try:
            parsed = _decode_event(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return Step(Action.DROP)
        self._read = parsed.sequence_number
        kind = parsed.type or event.event
        if kind in _GENERATED:
            text = parsed.delta if isinstance(parsed.delta, str) else ""
            return Step(Action.CONTENT, ((0, text),) if text else ())
        usage = _native_reported(parsed.response.usage) if parsed.response is not None else None
        if kind in _FINAL:
            return Step(Action.DONE, usage=usage)
        if kind in _FAILED:
            return Step(Action.ERROR, usage=usage)
        return Step(Action.PASS)

    def render_event(self, event: Event, step: Step) -> bytes:
        if self._read is not None:
            self._next_sequence = self._read + 1
        return event.raw

    def stream_error(self, error: GatewayError) -> bytes:
        sequence, self._next_sequence = self._next_sequence, self._next_sequence + 1
        return error_event(
            sequence, message=error.message, code=error.code, param=error.param, type=error.type
        )


# -- translated ----------------------------------------------------------------------------------
def _chat_reported(usage: ChatUsage | None) -> ReportedUsage | None:
    if usage is None:
        return None
    details = usage.prompt_tokens_details
    return ReportedUsage(
        usage.prompt_tokens,
        usage.completion_tokens,
        details.cached_tokens if details is not None else None,
    )


class ChatTranslation(Dialect):
    """The Responses API spoken to a chat-completions backend (one instance per attempt)."""

    path = "/chat/completions"

    def __init__(self, bound_field: str) -> None:
        #: The chat field the backend reads as the bound on generated tokens.
        self.bound_field = bound_field
        self._request: Mapping[str, Any] = {}
        self._answer: ChatAnswer | None = None
        self._stream: StreamTranslator | None = None
        self._last: tuple[Event, ChatChunk] | None = None
        self._error: bytes | None = None

    @property
    def _translator(self) -> StreamTranslator:
        if self._stream is None:
            self._stream = StreamTranslator(self._request)
        return self._stream

    def upstream_body(
        self, body: Mapping[str, Any], *, upstream_model: str, cap: int | None, stream: bool
    ) -> bytes:
        self._request = body
        chat = chat_request(
            body, upstream_model=upstream_model, cap=cap, stream=stream, field=self.bound_field
        )
        return msgspec.json.encode(chat)

    def read_answer(self, data: bytes) -> tuple[ReportedUsage | None, Texts]:
        try:
            answer = self._answer = decode_answer(data)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
            raise UpstreamError("the backend sent an unreadable answer") from exc
        texts = [
            (0, text)
            for choice in (answer.choices or ())[:1]
            if choice.message is not None
            for text in message_texts(choice.message)
        ]
        return _chat_reported(answer.usage), tuple(texts)

    def cut_answer(self, data: bytes, keep: int, counter: TokenCounter) -> bytes:
        answer = msgspec.json.decode(data)
        if not isinstance(answer, dict) or not cut_choices(answer, keep, counter):
            return data
        cut = msgspec.json.encode(answer)
        self._answer = decode_answer(cut)
        return cut

    def render_answer(self, data: bytes, usage: TokenCounts) -> bytes:
        answer = self._answer if self._answer is not None else decode_answer(data)
        return msgspec.json.encode(response_object(self._request, answer, usage))

    def read_event(self, event: Event) -> Step:
        step = framing(event)
        if step is not None:
            return step
        data = event.data
        assert data is not None  # framing() answers data-less events
        try:
            chunk = decode_chunk(data)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            return Step(Action.DROP)
        self._last = (event, chunk)
        if chunk.error is not None:
            return Step(Action.ERROR)
        reported = _chat_reported(chunk.usage)
        if chunk.usage is not None:
            self._translator.reasoning_tokens = chunk.usage.reasoning_tokens
            if not chunk.choices:
                return Step(Action.USAGE, usage=reported)
        texts = tuple(
            (0, text)
            for choice in chunk.choices or ()
            if choice.index == 0 and choice.delta is not None
            for text in message_texts(choice.delta)
        )
        return Step(Action.CONTENT, texts, reported)

    def _chunk(self, event: Event) -> ChatChunk | None:
        if self._last is not None and self._last[0] is event:
            return self._last[1]
        try:
            return decode_chunk(event.data or b"")
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            return None

    def render_event(self, event: Event, step: Step) -> bytes:
        translator = self._translator
        if step.action is Action.ERROR:
            chunk = self._chunk(event)
            error = (chunk.error if chunk is not None else None) or {}
            self._error = translator.error(
                message=str(error.get("message") or "The backend failed mid-stream."),
                code=_str_or_none(error.get("code")),
                param=_str_or_none(error.get("param")),
                type=str(error.get("type") or "api_error"),
            )
            return self._error
        chunk = self._chunk(event) if event.data is not None else None
        if chunk is None:  # a comment or keep-alive: relayed, after the opening events
            return b"".join([*translator.start(), event.raw])
        return translator.chunk(chunk)

    def stream_tail(self, held: list[bytes], usage: TokenCounts) -> list[bytes]:
        if self._error is not None:
            return [self._error]
        return self._translator.finish(usage)

    def stream_error(self, error: GatewayError) -> bytes:
        return self._translator.error(
            message=error.message, code=error.code, param=error.param, type=error.type
        )


def _str_or_none(value: object) -> str | None:
    return None if value is None else str(value)
