"""A chat completion as the Responses API's answer, for backends that speak only chat (the
request's way there is :mod:`gateway.responses_api.chat_request`). Used by
:class:`gateway.responses_api.dialects.ChatTranslation`:

- :func:`response_object`: a chat completion into a Responses ``response`` object.
- :class:`StreamTranslator`: chat stream chunks into Responses stream events, with their
  ``sequence_number`` and item ids, ending with ``response.completed`` (or
  ``response.incomplete``) carrying the usage the gateway metered.
- :func:`error_event`: the Responses API's streamed ``error`` event.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from gateway.pricing import TokenCounts
from gateway.protocol import wire

__all__ = [
    "ChatAnswer",
    "ChatChunk",
    "ChatUsage",
    "StreamTranslator",
    "decode_answer",
    "decode_chunk",
    "error_event",
    "message_texts",
    "response_object",
    "usage_json",
]


# -- complete answers --------------------------------------------------------------------------
#: The chat shapes the translation reads are the metering's (:mod:`gateway.protocol.wire`).
ChatAnswer = wire.Answer
ChatChunk = wire.Chunk
ChatUsage = wire.Usage
decode_answer = wire.decode_answer
decode_chunk = wire.decode_chunk
message_texts = wire.message_texts


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def usage_json(usage: TokenCounts, reasoning_tokens: int = 0) -> dict[str, Any]:
    """The Responses API's ``usage`` for what the gateway metered."""
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens, "cache_write_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {
            "reasoning_tokens": min(max(reasoning_tokens, 0), usage.completion_tokens)
        },
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def _shell(
    request: Mapping[str, Any], ident: str, created: int, model: str, status: str
) -> dict[str, Any]:
    """A ``response`` object without output or usage, echoing the request's settings."""
    reasoning = request.get("reasoning")
    return {
        "id": ident,
        "object": "response",
        "created_at": created,
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "model": model,
        "output": [],
        "parallel_tool_calls": request.get("parallel_tool_calls", True),
        "previous_response_id": None,
        "reasoning": {
            "effort": reasoning.get("effort") if isinstance(reasoning, dict) else None,
            "summary": None,
        },
        "store": False,
        "temperature": request.get("temperature", 1.0),
        "text": request.get("text") or {"format": {"type": "text"}},
        "tool_choice": request.get("tool_choice", "auto"),
        "tools": request.get("tools") or [],
        "top_p": request.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": None,
        "user": request.get("user"),
        "metadata": request.get("metadata") or {},
    }


def _cut(finish_reason: str | None) -> bool:
    """Whether the answer was cut short (by the bound or a filter)."""
    return (finish_reason or "") in _INCOMPLETE


def _finish(response: dict[str, Any], finish_reason: str | None) -> None:
    reason = _INCOMPLETE.get(finish_reason or "")
    if reason is not None:
        response["status"] = "incomplete"
        response["incomplete_details"] = {"reason": reason}
    else:
        response["status"] = "completed"
        response["completed_at"] = int(time.time())


def _text_part(kind: str, text: str) -> dict[str, Any]:
    if kind == "refusal":
        return {"type": "refusal", "refusal": text}
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message_item(ident: str, parts: list[dict[str, Any]], status: str) -> dict[str, Any]:
    return {
        "id": ident,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": parts,
    }


def _call_item(ident: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {
        "id": ident,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


def response_object(
    request: Mapping[str, Any], answer: ChatAnswer, usage: TokenCounts
) -> dict[str, Any]:
    """The Responses API's answer for a chat completion (its first choice)."""
    model = answer.model or str(request.get("model", ""))
    response = _shell(
        request, _new_id("resp"), answer.created or int(time.time()), model, "completed"
    )
    choice = answer.choices[0] if answer.choices else None
    message = choice.message if choice is not None else None
    if message is not None:
        parts = [
            _text_part(kind, text)
            for kind, text in (("output_text", message.content), ("refusal", message.refusal))
            if text
        ]
        if parts:
            cut = choice is not None and _cut(choice.finish_reason)
            status = "incomplete" if cut else "completed"
            response["output"].append(_message_item(_new_id("msg"), parts, status))
        for call in message.tool_calls or ():
            function = call.function or wire.Function()
            response["output"].append(
                _call_item(
                    _new_id("fc"),
                    call.id or _new_id("call"),
                    function.name or "",
                    function.arguments or "",
                    "completed",
                )
            )
    _finish(response, choice.finish_reason if choice is not None else None)
    reasoning = answer.usage.reasoning_tokens if answer.usage is not None else 0
    response["usage"] = usage_json(usage, reasoning)
    return response


# -- streams ---------------------------------------------------------------------------------
def _sse(payload: dict[str, Any]) -> bytes:
    kind: str = payload["type"]
    return b"event: %s\ndata: %s\n\n" % (kind.encode(), msgspec.json.encode(payload))


def error_event(
    sequence_number: int,
    *,
    message: str,
    code: str | None,
    param: str | None = None,
    type: str = "api_error",
) -> bytes:
    """A streamed ``error`` event: the documented flat fields, and the same error nested under
    ``error`` as OpenAI sends it (the openai SDKs raise on that, the AI SDK reads it)."""
    return _sse(
        {
            "type": "error",
            "code": code,
            "message": message,
            "param": param,
            "sequence_number": sequence_number,
            "error": {"type": type, "code": code, "message": message, "param": param},
        }
    )


@dataclass
class _Item:
    output_index: int
    id: str
    kind: str  # "message" or "function_call"
    call_id: str = ""
    name: str = ""
    parts: list[tuple[str, list[str]]] = field(default_factory=list)  # (kind, text pieces)
    arguments: list[str] = field(default_factory=list)
    done: bool = False

    def item(self, status: str) -> dict[str, Any]:
        if self.kind == "message":
            parts = [_text_part(kind, "".join(pieces)) for kind, pieces in self.parts]
            return _message_item(self.id, parts, status)
        return _call_item(self.id, self.call_id, self.name, "".join(self.arguments), status)


class StreamTranslator:
    """Chat stream chunks in, Responses stream events out (one instance per stream)."""

    def __init__(self, request: Mapping[str, Any]) -> None:
        self._request = request
        self.id = _new_id("resp")
        self.created = int(time.time())
        self.model = str(request.get("model", ""))
        self.sequence_number = 0
        self.finish_reason: str | None = None
        self.reasoning_tokens = 0
        self._started = False
        self._items: list[_Item] = []
        self._message: _Item | None = None
        self._calls: dict[int, _Item] = {}

    def _emit(self, out: list[bytes], type: str, **fields: Any) -> None:
        out.append(_sse({"type": type, "sequence_number": self.sequence_number, **fields}))
        self.sequence_number += 1

    def _response(self, status: str) -> dict[str, Any]:
        return _shell(self._request, self.id, self.created, self.model, status)

    def start(self) -> list[bytes]:
        """``response.created`` and ``response.in_progress``, once."""
        out: list[bytes] = []
        if not self._started:
            self._started = True
            self._emit(out, "response.created", response=self._response("in_progress"))
            self._emit(out, "response.in_progress", response=self._response("in_progress"))
        return out

    def chunk(self, chunk: ChatChunk) -> bytes:
        """The events for one chat chunk (choice 0; the Responses API has no ``n``)."""
        if chunk.model and not self._started:
            self.model = chunk.model
        out = self.start()
        if chunk.usage is not None:
            self.reasoning_tokens = chunk.usage.reasoning_tokens
        for choice in chunk.choices or ():
            if choice.index != 0:
                continue
            delta = choice.delta
            if delta is not None:
                if delta.content:
                    self._text(out, "output_text", delta.content)
                if delta.refusal:
                    self._text(out, "refusal", delta.refusal)
                for call in delta.tool_calls or ():
                    self._call(out, call)
            if choice.finish_reason is not None:
                self.finish_reason = choice.finish_reason
                self._close_all(out)
        return b"".join(out)

    def _text(self, out: list[bytes], kind: str, text: str) -> None:
        item = self._message
        if item is None or item.done:
            item = self._message = self._open(out, "message", _new_id("msg"))
        if not item.parts or item.parts[-1][0] != kind:
            if item.parts:
                self._close_part(out, item)
            item.parts.append((kind, []))
            self._emit(
                out,
                "response.content_part.added",
                item_id=item.id,
                output_index=item.output_index,
                content_index=len(item.parts) - 1,
                part=_text_part(kind, ""),
            )
        item.parts[-1][1].append(text)
        fields: dict[str, Any] = {
            "item_id": item.id,
            "output_index": item.output_index,
            "content_index": len(item.parts) - 1,
            "delta": text,
        }
        if kind == "output_text":
            self._emit(out, "response.output_text.delta", **fields, logprobs=[])
        else:
            self._emit(out, "response.refusal.delta", **fields)

    def _call(self, out: list[bytes], call: wire.ToolCall) -> None:
        function = call.function or wire.Function()
        item = self._calls.get(call.index)
        if item is None:
            if self._message is not None:
                self._close(out, self._message)
            item = _Item(
                len(self._items),
                _new_id("fc"),
                "function_call",
                call_id=call.id or _new_id("call"),
                name=function.name or "",
            )
            self._calls[call.index] = item
            self._items.append(item)
            self._emit(
                out,
                "response.output_item.added",
                output_index=item.output_index,
                item=item.item("in_progress"),
            )
        elif function.name and not item.name:
            item.name = function.name
        if function.arguments:
            item.arguments.append(function.arguments)
            self._emit(
                out,
                "response.function_call_arguments.delta",
                item_id=item.id,
                output_index=item.output_index,
                delta=function.arguments,
            )

    def _open(self, out: list[bytes], kind: str, ident: str) -> _Item:
        item = _Item(len(self._items), ident, kind)
        self._items.append(item)
        self._emit(
            out,
            "response.output_item.added",
            output_index=item.output_index,
            item=item.item("in_progress"),
        )
        return item

    def _close_part(self, out: list[bytes], item: _Item) -> None:
        kind, pieces = item.parts[-1]
        text = "".join(pieces)
        fields: dict[str, Any] = {
            "item_id": item.id,
            "output_index": item.output_index,
            "content_index": len(item.parts) - 1,
        }
        if kind == "output_text":
            self._emit(out, "response.output_text.done", **fields, text=text, logprobs=[])
        else:
            self._emit(out, "response.refusal.done", **fields, refusal=text)
        self._emit(out, "response.content_part.done", **fields, part=_text_part(kind, text))

    def _close(self, out: list[bytes], item: _Item) -> None:
        if item.done:
            return
        item.done = True
        if item.kind == "message":
            if item.parts:
                self._close_part(out, item)
        else:
            self._emit(
                out,
                "response.function_call_arguments.done",
                item_id=item.id,
                output_index=item.output_index,
                name=item.name,
                arguments="".join(item.arguments),
            )
        self._emit(
            out,
            "response.output_item.done",
            output_index=item.output_index,
            item=item.item(self._item_status),
        )

    @property
    def _item_status(self) -> str:
        """Items of an answer cut short are incomplete, as OpenAI marks them."""
        return "incomplete" if _cut(self.finish_reason) else "completed"

    def _close_all(self, out: list[bytes]) -> None:
        for item in self._items:
            self._close(out, item)

    def finish(self, usage: TokenCounts) -> list[bytes]:
        """What ends a stream once it is settled: open items closed, then
        ``response.completed`` (``response.incomplete`` when cut short by the bound) with
        the usage the gateway metered."""
        out = self.start()
        self._close_all(out)
        response = self._response("completed")
        response["output"] = [item.item(self._item_status) for item in self._items]
        _finish(response, self.finish_reason)
        response["usage"] = usage_json(usage, self.reasoning_tokens)
        self._emit(out, f"response.{response['status']}", response=response)
        return out

    def error(
        self, *, message: str, code: str | None, param: str | None = None, type: str = "api_error"
    ) -> bytes:
        event = error_event(
            self.sequence_number, message=message, code=code, param=param, type=type
        )
        self.sequence_number += 1
        return event
