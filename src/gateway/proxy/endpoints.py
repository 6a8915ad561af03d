"""The metered client endpoints: what each one's body must hold, how its prompt is counted,
which fields bound what it generates, and what a request asks for (:func:`plan_request`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.config import BackendConfig
from gateway.errors import InvalidRequest
from gateway.protocol.dialects import BOUND_FIELDS, VENDOR_BOUND_FIELDS, Dialect, OpenAIDialect
from gateway.responses_api.dialects import responses_dialect
from gateway.tokens import TokenCounter

__all__ = ["CHAT", "COMPLETIONS", "EMBEDDINGS", "RESPONSES", "Endpoint", "Plan", "plan_request"]

#: The most choices one request may ask for (``n``, ``best_of``).
MAX_CHOICES = 128
#: Every field some backend reads as the bound on each generated choice.
_ANY_BOUND = BOUND_FIELDS + VENDOR_BOUND_FIELDS


def _require_list(field: str) -> Callable[[Mapping[str, Any]], None]:
    def check(body: Mapping[str, Any]) -> None:
        value = body.get(field)
        if not isinstance(value, list) or not value:
            raise InvalidRequest(
                f"'{field}' is required and must be a non-empty array.", param=field
            )
        if field == "messages":
            for i, message in enumerate(value):
                if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                    raise InvalidRequest(
                        f"'messages[{i}]' must be an object with a string 'role'.",
                        param=f"messages[{i}]",
                    )
                # what the prompt is counted from must have the shape OpenAI gives it
                content = message.get("content")
                if not (
                    content is None
                    or isinstance(content, str)
                    or (isinstance(content, list) and all(isinstance(p, dict) for p in content))
                ):
                    raise InvalidRequest(
                        f"'messages[{i}].content' must be a string, an array of parts or null.",
                        param=f"messages[{i}].content",
                    )
                if "name" in message and not isinstance(message["name"], str):
                    raise InvalidRequest(
                        f"'messages[{i}].name' must be a string.", param=f"messages[{i}].name"
                    )

    return check


def _is_tokens(value: object) -> bool:
    return isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    )


def _require_input(field: str) -> Callable[[Mapping[str, Any]], None]:
    """A string, or a non-empty array of strings, of token ids, or of token-id arrays."""

    def check(body: Mapping[str, Any]) -> None:
        value = body.get(field)
        if isinstance(value, str):
            return
        if (
            isinstance(value, list)
            and value
            and (
                all(isinstance(v, str) for v in value)
                or _is_tokens(value)
                or all(_is_tokens(v) and v for v in value)
            )
        ):
            return
        raise InvalidRequest(
            f"'{field}' is required: a string, or a non-empty array of strings, of token ids "
            "or of token-id arrays.",
            param=field,
        )

    return check


def _one(_body: Mapping[str, Any]) -> int:
    return 1


def _prompts(body: Mapping[str, Any]) -> int:
    """How many prompts a completions request holds (each gets its own choices): a list of
    strings or of token-id arrays holds one each, a string or one token-id array one."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and not _is_tokens(prompt):
        return len(prompt)
    return 1


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str  # as recorded in usage: "chat.completions"
    path: str  # upstream path below the backend's base_url
    streams: bool
    generates: bool  # produces completion tokens (and so takes a bound)
    bound_fields: tuple[str, ...]  # the endpoint's own fields bounding each choice
    validate: Callable[[Mapping[str, Any]], None]
    count: Callable[[TokenCounter, Mapping[str, Any]], int]
    #: The field a backend reads as the bound, set when the client sent none (None: no bound).
    bound_field: Callable[[BackendConfig], str] | None = None
    #: How requests and answers are read and written for a backend; None: relayed as is.
    translate: Callable[[BackendConfig], Dialect] | None = None
    #: How many prompts a request holds (each generates its own choices).
    prompts: Callable[[Mapping[str, Any]], int] = _one
    #: ``best_of`` candidates are generated (and billed) for each prompt, ``n`` returned.
    best_of: bool = False

    def dialect(self, backend: BackendConfig) -> Dialect:
        if self.translate is not None:
            return self.translate(backend)
        field = self.bound_field(backend) if self.bound_field is not None else None
        return OpenAIDialect(self.path, field)


@dataclass(frozen=True, slots=True)
class Plan:
    """What the client asked for, read once from the body."""

    model: str
    stream: bool
    candidates: int  # completions the backend generates: n (or best_of) for each prompt
    bound: int | None  # the tightest bound on each one the client set, in any field
    wants_usage: bool  # the client asked stream_options.include_usage


def _int_field(body: Mapping[str, Any], name: str, *, minimum: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise InvalidRequest(f"'{name}' must be an integer >= {minimum}.", param=name)
    return value


def plan_request(endpoint: Endpoint, body: Mapping[str, Any]) -> Plan:
    """Read and check what a request asks for; ``InvalidRequest`` saying what is wrong."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a string.", param="model")
    endpoint.validate(body)
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean.", param="stream")
    if stream and not endpoint.streams:
        raise InvalidRequest(f"{endpoint.name} does not stream.", param="stream")
    choices = _int_field(body, "n", minimum=1) or 1
    if choices > MAX_CHOICES:
        raise InvalidRequest(f"'n' must be at most {MAX_CHOICES}.", param="n")
    candidates = choices
    if endpoint.best_of:
        best_of = _int_field(body, "best_of", minimum=1)
        if best_of is not None:
            if best_of < choices:
                raise InvalidRequest("'best_of' must be at least 'n'.", param="best_of")
            if best_of > MAX_CHOICES:
                raise InvalidRequest(f"'best_of' must be at most {MAX_CHOICES}.", param="best_of")
            candidates = best_of
    candidates *= endpoint.prompts(body)
    bounds = [
        value
        for name in endpoint.bound_fields
        if (value := _int_field(body, name, minimum=1)) is not None
    ]
    # another API's or server's name for the bound, which some backend may read: a positive
    # one bounds what is reserved too (any other value is overwritten upstream)
    for name in _ANY_BOUND:
        if name in body:
            value = body[name]
            if name not in endpoint.bound_fields and type(value) is int and value > 0:
                bounds.append(value)
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequest("'stream_options' must be an object.", param="stream_options")
    wants_usage = options.get("include_usage") if options else False
    if wants_usage is None:
        wants_usage = False
    if not isinstance(wants_usage, bool):
        raise InvalidRequest(
            "'stream_options.include_usage' must be a boolean.",
            param="stream_options.include_usage",
        )
    tools = body.get("tools")
    if tools is not None and (
        not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools)
    ):
        raise InvalidRequest("'tools' must be an array of objects.", param="tools")
    return Plan(model, stream, candidates, min(bounds) if bounds else None, wants_usage)


CHAT = Endpoint(
    name="chat.completions",
    path="/chat/completions",
    streams=True,
    generates=True,
    bound_fields=("max_completion_tokens", "max_tokens"),
    validate=_require_list("messages"),
    count=lambda c, b: c.count_chat_prompt(b.get("messages") or [], b.get("tools")),
    bound_field=lambda backend: backend.chat_bound_field,
)

COMPLETIONS = Endpoint(
    name="completions",
    path="/completions",
    streams=True,
    generates=True,
    bound_fields=("max_tokens",),
    validate=_require_input("prompt"),
    count=lambda c, b: c.count_completion_prompt(b.get("prompt")),
    bound_field=lambda _backend: "max_tokens",
    prompts=_prompts,
    best_of=True,
)

EMBEDDINGS = Endpoint(
    name="embeddings",
    path="/embeddings",
    streams=False,
    generates=False,
    bound_fields=(),
    validate=_require_input("input"),
    count=lambda c, b: c.count_embedding_input(b.get("input")),
)


def _require_responses_input(body: Mapping[str, Any]) -> None:
    value = body.get("input")
    if isinstance(value, str):
        return
    if not isinstance(value, list):
        raise InvalidRequest("'input' is required: a string or an array of items.", param="input")
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise InvalidRequest(f"'input[{i}]' must be an object.", param=f"input[{i}]")
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise InvalidRequest("'instructions' must be a string.", param="instructions")


RESPONSES = Endpoint(
    name="responses",
    path="/responses",
    streams=True,
    generates=True,
    bound_fields=("max_output_tokens",),
    validate=_require_responses_input,
    count=lambda c, b: c.count_responses_input(
        b.get("instructions"), b.get("input"), b.get("tools")
    ),
    translate=responses_dialect,
)
