"""The metered client endpoints: what each one's body must hold, how its prompt is counted,
and which fields bound what it generates."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.config import BackendConfig
from gateway.dialects import Dialect, OpenAIDialect
from gateway.errors import InvalidRequest
from gateway.responses import responses_dialect
from gateway.tokens import TokenCounter

__all__ = ["CHAT", "COMPLETIONS", "EMBEDDINGS", "RESPONSES", "Endpoint"]


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


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str  # as recorded in usage: "chat.completions"
    path: str  # upstream path below the backend's base_url
    streams: bool
    generates: bool  # produces completion tokens (and so takes a bound)
    bound_fields: tuple[str, ...]  # the last one is what the gateway sets when none was given
    validate: Callable[[Mapping[str, Any]], None]
    count: Callable[[TokenCounter, Mapping[str, Any]], int]
    #: How requests and answers are read and written for a backend; None: relayed as is.
    translate: Callable[[BackendConfig], Dialect] | None = None

    def count_prompt(self, counter: TokenCounter, body: Mapping[str, Any]) -> int:
        return self.count(counter, body)

    def dialect(self, backend: BackendConfig) -> Dialect:
        if self.translate is not None:
            return self.translate(backend)
        return OpenAIDialect(self.path)


CHAT = Endpoint(
    name="chat.completions",
    path="/chat/completions",
    streams=True,
    generates=True,
    bound_fields=("max_completion_tokens", "max_tokens"),
    validate=_require_list("messages"),
    count=lambda c, b: c.count_chat_prompt(b.get("messages") or [], b.get("tools")),
)

COMPLETIONS = Endpoint(
    name="completions",
    path="/completions",
    streams=True,
    generates=True,
    bound_fields=("max_tokens",),
    validate=_require_input("prompt"),
    count=lambda c, b: c.count_completion_prompt(b.get("prompt")),
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
