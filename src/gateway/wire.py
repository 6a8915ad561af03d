"""OpenAI wire shapes, as far as the gateway reads them. msgspec ignores every field not named
here, so decoding an answer costs only what metering needs; answers are relayed as raw bytes."""

from __future__ import annotations

import msgspec

__all__ = [
    "Answer",
    "Chunk",
    "Usage",
    "decode_answer",
    "decode_chunk",
]


class PromptDetails(msgspec.Struct):
    cached_tokens: int | None = None


class Usage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    prompt_tokens_details: PromptDetails | None = None


class Function(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class ToolCall(msgspec.Struct):
    function: Function | None = None


class Message(msgspec.Struct):
    content: str | None = None
    reasoning_content: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None
    function_call: Function | None = None


class Choice(msgspec.Struct):
    index: int = 0
    message: Message | None = None  # chat answers
    delta: Message | None = None  # chat stream chunks
    text: str | None = None  # legacy completions


class Answer(msgspec.Struct):
    """A non-streamed answer (chat, completion or embeddings)."""

    choices: list[Choice] | None = None
    usage: Usage | None = None


class Chunk(msgspec.Struct):
    """One streamed chunk."""

    choices: list[Choice] | None = None
    usage: Usage | None = None
    error: dict[str, object] | None = None


_answer = msgspec.json.Decoder(Answer)
_chunk = msgspec.json.Decoder(Chunk)


def decode_answer(data: bytes) -> Answer:
    """Raise ``msgspec.DecodeError`` (a ``ValueError``) if not a JSON object of that shape."""
    return _answer.decode(data)


def decode_chunk(data: bytes) -> Chunk:
    return _chunk.decode(data)


def message_texts(message: Message) -> list[str]:
    """The generated text of a message or delta that counts as completion tokens."""
    texts = [t for t in (message.content, message.reasoning_content, message.refusal) if t]
    for call in message.tool_calls or ():
        if call.function is not None:
            texts.extend(t for t in (call.function.name, call.function.arguments) if t)
    if message.function_call is not None:
        texts.extend(
            t for t in (message.function_call.name, message.function_call.arguments) if t
        )
    return texts
