"""A Responses API request as a chat completion request, for backends that speak only chat.

:func:`chat_request` turns a ``POST /responses`` body into a ``POST /chat/completions`` body:
``instructions`` become a system message; ``input`` (a string, or items: messages with text
and image parts, ``function_call`` and ``function_call_output``) becomes messages; function
tools, ``tool_choice``, ``parallel_tool_calls``, ``temperature``, ``top_p``, ``text.format``
(structured output), ``reasoning.effort`` and ``user`` map to their chat twins, the completion
bound to ``max_tokens``. Server-side state (``previous_response_id``, ``conversation``,
``prompt`` templates, ``item_reference``, ``background``) and built-in tools cannot be
translated: :class:`~gateway.errors.InvalidRequest` says so. Bookkeeping fields with no chat
meaning (``store``, ``metadata``, ``include``, ``truncation``...) are dropped; fields the
Responses API does not define pass through, as on every endpoint. The answer's way back is
:mod:`gateway.responses_api.chat_answer`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.errors import InvalidRequest
from gateway.protocol.dialects import bound_body

__all__ = ["chat_messages", "chat_request"]

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


#: What to do instead, for requests that lean on state stored server-side.
_RESEND = (
    " Send the whole conversation in 'input' instead: earlier messages and function_call "
    "items themselves (the Vercel AI SDK does with providerOptions: {openai: {store: false}})."
)


def _refuse(message: str, param: str, hint: str = "") -> InvalidRequest:
    return InvalidRequest(
        f"{message}. This model's backend speaks only chat completions, so the gateway "
        f"translates Responses requests for it, and this cannot be translated.{hint}",
        param=param,
        code="unsupported_parameter",
    )


def chat_request(
    body: Mapping[str, Any],
    *,
    upstream_model: str,
    cap: int | None,
    stream: bool,
    field: str = "max_tokens",
) -> dict[str, Any]:
    """The chat completion request for a Responses request, bounded to ``cap`` generated
    tokens in ``field`` (the chat field the backend reads) and in any bound field the client
    passed through; ``InvalidRequest`` if it cannot be translated."""
    for name, why in _STATEFUL.items():
        if body.get(name) is not None:
            raise _refuse(f"'{name}' is not supported here: {why}", name, _RESEND)
    if body.get("background"):
        raise _refuse(
            "'background' is not supported here: it needs a server that runs "
            "the response on its own and stores it",
            "background",
        )
    choices = body.get("n")
    if choices is not None and choices != 1:
        # the Responses API has one output: more choices would be generated (and billed by
        # the backend) and never shown
        raise _refuse("'n' is not supported here: the Responses API answers with one output", "n")
    out: dict[str, Any] = {k: v for k, v in body.items() if k not in _KNOWN}
    out["model"] = upstream_model
    out["messages"] = chat_messages(body.get("instructions"), body.get("input"))
    if stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    if cap is not None:
        bound_body(out, cap, field)
    elif body.get("max_output_tokens") is not None:
        out[field] = body["max_output_tokens"]
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
            raise _refuse(
                f"'{param}' is an item_reference: it names an item stored server-side",
                param,
                _RESEND,
            )
        else:
            raise _refuse(
                f"'{param}' is a {kind!r} item: only messages, function_call and "
                "function_call_output items have a chat equivalent",
                param,
            )
    return messages


def _string(item: Mapping[str, Any], name: str, param: str) -> str:
    value = item.get(name)
    if not isinstance(value, str):
        raise InvalidRequest(f"'{param}.{name}' must be a string.", param=f"{param}.{name}")
    return value


def _message(item: Mapping[str, Any], param: str) -> dict[str, Any]:
    role = _ROLES.get(str(item.get("role")))
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
            raise _refuse(
                f"'{param}' names its image by file_id: only image_url (a URL or "
                "a data: URL) has a chat equivalent",
                param,
            )
        image: dict[str, Any] = {"url": url}
        if part.get("detail") is not None:
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    raise _refuse(
        f"'{param}' is a {kind!r} part: only text and image parts have a chat equivalent", param
    )


def _joined_text(value: object) -> str:
    if not isinstance(value, list):
        return ""
    return "".join(
        str(p.get("text", ""))
        for p in value
        if isinstance(p, dict) and p.get("type") in ("input_text", "output_text", "text")
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
            raise _refuse(
                f"'{param}' is a {kind!r} tool: only function tools have a chat "
                "equivalent (built-in tools run on OpenAI's servers)",
                param,
            )
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
    raise _refuse(
        "'tool_choice' names a built-in tool or a tool set: only auto, none, "
        "required and one function have a chat equivalent",
        "tool_choice",
    )


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
