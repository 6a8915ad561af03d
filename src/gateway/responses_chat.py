"""OpenAI's Responses API spoken to a backend that knows only chat completions.

Three pure translations, used by :class:`gateway.responses.ChatTranslation`:

- :func:`chat_request`: a ``POST /responses`` body into a ``POST /chat/completions`` body.
  ``instructions`` become a system message; ``input`` (a string, or items: messages with
  text and image parts, ``function_call`` and ``function_call_output``) become messages;
  function tools, ``tool_choice``, ``parallel_tool_calls``, ``temperature``, ``top_p``,
  ``text.format`` (structured output), ``reasoning.effort`` and ``user`` map to their chat
  twins, the completion bound to ``max_tokens``. Server-side state (``previous_response_id``,
  ``conversation``, ``prompt`` templates, ``item_reference``, ``background``) and built-in
  tools cannot be translated: :class:`~gateway.errors.InvalidRequest` says so. Bookkeeping
  fields with no chat meaning (``store``, ``metadata``, ``include``, ``truncation``...) are
  dropped; fields the Responses API does not define pass through, as on every endpoint.
- :func:`response_object`: a chat completion into a Responses ``response`` object.
- :class:`StreamTranslator`: chat stream chunks into Responses stream events, with their
  ``sequence_number`` and item ids, ending with ``response.completed`` (or
  ``response.incomplete``) carrying the usage the gateway metered.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from gateway.errors import InvalidRequest
from gateway.pricing import TokenUsage

__all__ = [
    "ChatAnswer",
    "ChatChunk",
    "StreamTranslator",
    "chat_request",
    "error_event",
    "response_object",
    "usage_json",
]

#: Responses fields that name state kept by the Responses server, impossible on chat.
_STATEFUL = {
    "previous_response_id": "it names a response stored server-side",
    "conversation": "it names a conversation stored server-side",
    "prompt": "it names a prompt template stored server-side",
}
#: Responses fields with no chat meaning: dropped. Everything else the Responses API does not
#: define passes through unchanged (vendor extensions, as on every endpoint).
_DROPPED = frozenset(
    {
        "store",
        "metadata",
        "include",
        "truncation",
        "stream_options",
        "max_tool_calls",
        "top_logprobs",
        "service_tier",
        "safety_identifier",
        "prompt_cache_key",
        "prompt_cache_retention",
        "prompt_cache_options",
        "context_management",
        "background",
    }
)
_MAPPED = frozenset(
    {
        "model",
        "input",
        "instructions",
        "stream",
        "max_output_tokens",
        "temperature",
        "top_p",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "text",
        "reasoning",
        "user",
    }
)
_KNOWN = _MAPPED | _DROPPED | _STATEFUL.keys()
_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}


def _refuse(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(
        f"{message}. This model's backend speaks only chat completions, so the gateway "
        "translates Responses requests for it, and this cannot be translated.",
        param=param,
        code="unsupported_parameter",
    )


# -- request ---------------------------------------------------------------------------------
def chat_request(
    body: Mapping[str, Any], *, upstream_model: str, cap: int | None, stream: bool
) -> dict[str, Any]:
    """The chat completion request for a Responses request; ``InvalidRequest`` if it cannot
    be translated."""
    for name, why in _STATEFUL.items():
        if body.get(name) is not None:
            raise _refuse(f"'{name}' is not supported here: {why}", name)
    if body.get("background"):
        raise _refuse("'background' is not supported here: it needs a server that runs "
                      "the response on its own and stores it", "background")
    out: dict[str, Any] = {k: v for k, v in body.items() if k not in _KNOWN}
    out["model"] = upstream_model
    out["messages"] = chat_messages(body.get("instructions"), body.get("input"))
    if stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    bound = cap if cap is not None else body.get("max_output_tokens")
    if bound is not None:
        out["max_tokens"] = bound
    for name in ("temperature", "top_p", "user"):
        if body.get(name) is not None:
            out[name] = body[name]
    tools = _tools(body.get("tools"))
    if tools:
        out["tools"] = tools
        if body.get("parallel_tool_calls") is not None:
            out["parallel_tool_calls"] = body["parallel_tool_calls"]
    if body.get("tool_choice") is not None:
        out["tool_choice"] = _tool_choice(body["tool_choice"])
    response_format = _response_format(body.get("text"))
    if response_format is not None:
        out["response_format"] = response_format
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and reasoning.get("effort") is not None:
        out["reasoning_effort"] = reasoning["effort"]
    return out


def chat_messages(instructions: object, input: object) -> list[dict[str, Any]]:
    """Chat messages for ``instructions`` and ``input`` (a string or a list of items)."""
    messages: list[dict[str, Any]] = []
    if isinstance(instructions, str):
        if instructions:
            messages.append({"role": "system", "content": instructions})
    elif instructions is not None:
        raise InvalidRequest("'instructions' must be a string.", param="instructions")
    if isinstance(input, str):
        messages.append({"role": "user", "content": input})
        return messages
    if not isinstance(input, list):
        raise InvalidRequest("'input' must be a string or an array.", param="input")
    for i, item in enumerate(input):
        param = f"input[{i}]"
        if not isinstance(item, dict):
            raise InvalidRequest(f"'{param}' must be an object.", param=param)
        kind = item.get("type", "message")
        if kind == "message":
            messages.append(_message(item, param))
        elif kind == "function_call":
            call = {
                "id": _string(item, "call_id", param),
                "type": "function",
                "function": {
                    "name": _string(item, "name", param),
                    "arguments": _string(item, "arguments", param),
                },
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)  # parallel calls: one message
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": _string(item, "call_id", param),
                    "content": output if isinstance(output, str) else _joined_text(output),
                }
            )
        elif kind == "reasoning":
            continue  # a model's own reasoning: chat backends take none back
        elif kind == "item_reference":
            raise _refuse(f"'{param}' is an item_reference: it names an item stored "
                          "server-side", param)
        else:
            raise _refuse(f"'{param}' is a {kind!r} item: only messages, function_call and "
                          "function_call_output items have a chat equivalent", param)
    return messages


def _string(item: Mapping[str, Any], name: str, param: str) -> str:
    value = item.get(name)
    if not isinstance(value, str):
        raise InvalidRequest(f"'{param}.{name}' must be a string.", param=f"{param}.{name}")
    return value


def _message(item: Mapping[str, Any], param: str) -> dict[str, Any]:
    role = _ROLES.get(item.get("role"))
    if role is None:
        raise InvalidRequest(
            f"'{param}.role' must be one of user, assistant, system, developer.",
            param=f"{param}.role",
        )
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise InvalidRequest(
            f"'{param}.content' must be a string or an array.", param=f"{param}.content"
        )
    parts = [_part(part, f"{param}.content[{j}]") for j, part in enumerate(content)]
    texts = [p["text"] for p in parts if p["type"] == "text"]
    if role != "user" or len(parts) == len(texts) == 1:
        if len(texts) != len(parts):
            raise _refuse(f"'{param}' holds images: only user messages may", param)
        return {"role": role, "content": "".join(texts)}  # the shape every backend takes
    return {"role": role, "content": parts}


def _part(part: object, param: str) -> dict[str, Any]:
    if not isinstance(part, dict):
        raise InvalidRequest(f"'{param}' must be an object.", param=param)
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text"):
        return {"type": "text", "text": _string(part, "text", param)}
    if kind == "refusal":
        return {"type": "text", "text": _string(part, "refusal", param)}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str):
            raise _refuse(f"'{param}' names its image by file_id: only image_url (a URL or "
                          "a data: URL) has a chat equivalent", param)
        image: dict[str, Any] = {"url": url}
        if part.get("detail") is not None:
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    raise _refuse(f"'{param}' is a {kind!r} part: only text and image parts have a chat "
                  "equivalent", param)


def _joined_text(value: object) -> str:
    if not isinstance(value, list):
        return ""
    return "".join(
        str(p.get("text", "")) for p in value if isinstance(p, dict) and p.get("type") in
        ("input_text", "output_text", "text")
    )


def _tools(tools: object) -> list[dict[str, Any]]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise InvalidRequest("'tools' must be an array.", param="tools")
    out: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        param = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise InvalidRequest(f"'{param}' must be an object.", param=param)
        kind = tool.get("type")
        if kind != "function":
            raise _refuse(f"'{param}' is a {kind!r} tool: only function tools have a chat "
                          "equivalent (built-in tools run on OpenAI's servers)", param)
        function: dict[str, Any] = {"name": _string(tool, "name", param)}
        for name in ("description", "parameters", "strict"):
            if tool.get(name) is not None:
                function[name] = tool[name]
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: object) -> object:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": _string(choice, "name", "tool_choice")}}
    raise _refuse("'tool_choice' names a built-in tool or a tool set: only auto, none, "
                  "required and one function have a chat equivalent", "tool_choice")


def _response_format(text: object) -> dict[str, Any] | None:
    if not isinstance(text, dict):
        return None
    spec = text.get("format")
    if not isinstance(spec, dict):
        return None
    kind = spec.get("type")
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        schema = {k: spec[k] for k in ("name", "schema", "strict", "description") if k in spec}
        return {"type": "json_schema", "json_schema": schema}
    return None


# -- answers -----------------------------------------------------------------------------------
class _Function(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class _ToolCall(msgspec.Struct):
    index: int = 0
    id: str | None = None
    function: _Function | None = None


class _Message(msgspec.Struct):
    content: str | None = None
    refusal: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[_ToolCall] | None = None


class _Choice(msgspec.Struct):
    index: int = 0
    message: _Message | None = None
    delta: _Message | None = None
    finish_reason: str | None = None


class _Details(msgspec.Struct):
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None


class ChatUsage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    prompt_tokens_details: _Details | None = None
    completion_tokens_details: _Details | None = None

    @property
    def reasoning_tokens(self) -> int:
        details = self.completion_tokens_details
        return (details.reasoning_tokens or 0) if details is not None else 0


class ChatAnswer(msgspec.Struct):
    """A chat completion, as far as the translation reads it."""

    choices: list[_Choice] | None = None
    usage: ChatUsage | None = None
    model: str | None = None
    created: int | None = None


class ChatChunk(msgspec.Struct):
    """A chat stream chunk, as far as the translation reads it."""

    choices: list[_Choice] | None = None
    usage: ChatUsage | None = None
    model: str | None = None
    error: dict[str, Any] | None = None


decode_answer = msgspec.json.Decoder(ChatAnswer).decode
decode_chunk = msgspec.json.Decoder(ChatChunk).decode


def message_texts(message: _Message) -> list[str]:
    """What counts as generated text of a message or delta (as :mod:`gateway.wire` says)."""
    texts = [t for t in (message.content, message.reasoning_content, message.refusal) if t]
    for call in message.tool_calls or ():
        if call.function is not None:
            texts.extend(t for t in (call.function.name, call.function.arguments) if t)
    return texts


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def usage_json(usage: TokenUsage, reasoning_tokens: int = 0) -> dict[str, Any]:
    """The Responses API's ``usage`` for what the gateway metered."""
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens},
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
    request: Mapping[str, Any], answer: ChatAnswer, usage: TokenUsage
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
            response["output"].append(_message_item(_new_id("msg"), parts, "completed"))
        for call in message.tool_calls or ():
            function = call.function or _Function()
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
    return b"event: " + payload["type"].encode() + b"\ndata: " + msgspec.json.encode(payload) + (
        b"\n\n"
    )


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

    def _call(self, out: list[bytes], call: _ToolCall) -> None:
        function = call.function or _Function()
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
            out, "response.output_item.added", output_index=item.output_index,
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
            out, "response.output_item.done", output_index=item.output_index,
            item=item.item("completed"),
        )

    def _close_all(self, out: list[bytes]) -> None:
        for item in self._items:
            self._close(out, item)

    def finish(self, usage: TokenUsage) -> list[bytes]:
        """What ends a stream once it is settled: open items closed, then
        ``response.completed`` (``response.incomplete`` when cut short by the bound) with
        the usage the gateway metered."""
        out = self.start()
        self._close_all(out)
        response = self._response("completed")
        response["output"] = [item.item("completed") for item in self._items]
        _finish(response, self.finish_reason)
        response["usage"] = usage_json(usage, self.reasoning_tokens)
        self._emit(out, f"response.{response['status']}", response=response)
        return out

    def error(
        self, *, message: str, code: str | None, param: str | None = None, type: str = "api_error"
    ) -> bytes:
        event = error_event(self.sequence_number, message=message, code=code, param=param,
                            type=type)
        self.sequence_number += 1
        return event
