"""OpenAI wire shapes, as far as the gateway reads them (to meter an answer, and to translate a
chat completion into the Responses API). msgspec ignores every field not named here, so decoding
an answer costs only what metering needs; answers are relayed as raw bytes. Decoded JSON cannot
hold a reference cycle, so the shapes are ``gc=False``: not tracked by the garbage collector
(cheaper to make and to free, one per stream chunk).

Generated text rides in several fields of a message or delta, by backend: ``content``,
``reasoning`` (vLLM 0.11 and later), ``reasoning_content`` (DeepSeek, llama.cpp, SGLang, older
vLLM), ``refusal``, tool-call names and arguments, the legacy ``function_call``, and the
transcript of generated audio. :func:`message_texts` reads every one of them; the fast reading
of a plain delta (:func:`decode_plain_delta`) refuses a delta with any other field, so that a
field it does not know never passes as an empty delta."""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = [
    "Answer",
    "Choice",
    "Chunk",
    "Function",
    "Message",
    "ToolCall",
    "Usage",
    "decode_answer",
    "decode_chunk",
    "decode_chunk_strictly",
    "decode_plain_delta",
    "message_texts",
    "plain_delta",
]


class PromptDetails(msgspec.Struct, gc=False):
    cached_tokens: int | None = None


class CompletionDetails(msgspec.Struct, gc=False):
    reasoning_tokens: int | None = None


class Usage(msgspec.Struct, gc=False):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    prompt_tokens_details: PromptDetails | None = None
    completion_tokens_details: CompletionDetails | None = None

    @property
    def reasoning_tokens(self) -> int:
        """The hidden reasoning the completion count includes, as reported (0 if not)."""
        details = self.completion_tokens_details
        tokens = details.reasoning_tokens if details is not None else None
        return tokens if isinstance(tokens, int) and tokens > 0 else 0


class Function(msgspec.Struct, gc=False):
    name: str | None = None
    arguments: str | None = None


class ToolCall(msgspec.Struct, gc=False):
    index: int = 0  # which call a streamed piece belongs to
    id: str | None = None
    function: Function | None = None


class Audio(msgspec.Struct, gc=False):
    transcript: str | None = None  # the generated speech's text (its audio is billed as such)


class Message(msgspec.Struct, gc=False):
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None
    function_call: Function | None = None
    audio: Audio | None = None


class Choice(msgspec.Struct, gc=False):
    index: int = 0
    message: Message | None = None  # chat answers
    delta: Message | None = None  # chat stream chunks
    text: str | None = None  # legacy completions
    finish_reason: str | None = None


class Answer(msgspec.Struct, gc=False):
    """A non-streamed answer (chat, completion or embeddings)."""

    choices: list[Choice] | None = None
    usage: Usage | None = None
    model: str | None = None
    created: int | None = None


class Chunk(msgspec.Struct, gc=False):
    """One streamed chunk."""

    choices: list[Choice] | None = None
    usage: Usage | None = None
    error: dict[str, object] | None = None
    model: str | None = None


_NO_USAGE = msgspec.Raw(b"null")


class _LenientAnswer(msgspec.Struct, gc=False):
    """An answer whose usage block did not fit :class:`Usage`: read apart, leniently."""

    choices: list[Choice] | None = None
    raw_usage: msgspec.Raw = msgspec.field(default=_NO_USAGE, name="usage")
    error: dict[str, object] | None = None
    model: str | None = None


_usage = msgspec.json.Decoder(Usage)


def _lenient_usage(raw: msgspec.Raw) -> Usage | None:
    """The usage block, read apart from the answer: a malformed one (a count that is not an
    integer, not an object at all) must not make the answer itself unreadable. What is not an
    integer is left out, and the meter counts that part itself."""
    data = bytes(raw)
    if data == b"null":
        return None
    try:
        return _usage.decode(data)
    except msgspec.ValidationError:
        pass
    value = msgspec.json.decode(data)  # valid JSON: it was parsed as part of the document

    def count(field: object) -> int | None:
        return field if type(field) is int else None

    if not isinstance(value, dict):
        return None
    details = value.get("prompt_tokens_details")
    cached = count(details.get("cached_tokens")) if isinstance(details, dict) else None
    return Usage(
        prompt_tokens=count(value.get("prompt_tokens")),
        completion_tokens=count(value.get("completion_tokens")),
        total_tokens=count(value.get("total_tokens")),
        prompt_tokens_details=PromptDetails(cached) if cached is not None else None,
    )


_answer = msgspec.json.Decoder(Answer)
_chunk = msgspec.json.Decoder(Chunk)
_lenient = msgspec.json.Decoder(_LenientAnswer)


def decode_answer(data: bytes) -> Answer:
    """Raise ``msgspec.DecodeError`` (a ``ValueError``) if not a JSON object of that shape."""
    try:
        return _answer.decode(data)
    except msgspec.ValidationError:
        lenient = _lenient.decode(data)  # raises again if the trouble is not the usage
        return Answer(lenient.choices, _lenient_usage(lenient.raw_usage), lenient.model)


#: :func:`decode_chunk` without its second, lenient reading: ``msgspec.ValidationError`` where
#: that one would read the usage block apart.
decode_chunk_strictly = _chunk.decode


def decode_chunk(data: bytes) -> Chunk:
    try:
        return _chunk.decode(data)
    except msgspec.ValidationError:
        lenient = _lenient.decode(data)
        return Chunk(
            lenient.choices, _lenient_usage(lenient.raw_usage), lenient.error, lenient.model
        )


def plain_delta(chunk: Chunk) -> tuple[int, str] | None:
    """The (choice index, text) of a chunk that is one choice's text delta and nothing else to
    meter (no usage, error, tool call, reasoning or refusal): most chunks of any stream. None for
    every other chunk."""
    choices = chunk.choices
    if chunk.usage is not None or chunk.error is not None or choices is None or len(choices) != 1:
        return None
    choice = choices[0]
    delta = choice.delta
    if delta is None or choice.message is not None or choice.text or not content_only(delta):
        return None
    return choice.index, delta.content or ""


class _PlainDelta(msgspec.Struct, gc=False, forbid_unknown_fields=True):
    """A delta whose only generated text is ``content``: every other field it may have is here,
    typed to the only values that allow (vLLM may send an empty ``tool_calls``), and any field
    not named here makes it no plain delta."""

    content: str | None = None
    role: str | None = None
    reasoning_content: None = None
    reasoning: None = None
    refusal: None = None
    tool_calls: tuple[()] | None = None
    function_call: None = None
    audio: None = None


class _PlainChoice(msgspec.Struct, gc=False):
    delta: _PlainDelta
    index: int = 0
    message: None = None
    text: Literal[""] | None = None


class _PlainChunk(msgspec.Struct, gc=False):
    """A :class:`Chunk` that :func:`plain_delta` answers for, and nothing else: each field
    :class:`Chunk` reads is here, typed to the only values that answer allows."""

    choices: tuple[_PlainChoice]
    usage: None = None
    error: None = None


_plain = msgspec.json.Decoder(_PlainChunk)


def decode_plain_delta(data: bytes) -> tuple[int, str]:
    """``plain_delta(decode_chunk_strictly(data))`` in one step, checked by the decoder: raise
    ``msgspec.DecodeError`` (``ValidationError`` included) where that is None or raises, and
    for a delta with a field :class:`Message` does not read (the relay then reads it in full:
    the same text metered, none passed as an empty delta)."""
    choice = _plain.decode(data).choices[0]
    return choice.index, choice.delta.content or ""


def content_only(message: Message) -> bool:
    """Whether ``content`` is the message's only generated text (the usual stream delta)."""
    return (
        message.reasoning_content is None
        and message.reasoning is None
        and message.refusal is None
        and not message.tool_calls
        and message.function_call is None
        and message.audio is None
    )


def message_texts(message: Message) -> list[str]:
    """The generated text of a message or delta that counts as completion tokens: reasoning
    first (it is generated first), then the answer, refusal, tool calls and audio transcript."""
    texts = [
        t
        for t in (message.reasoning, message.reasoning_content, message.content, message.refusal)
        if t
    ]
    for call in message.tool_calls or ():
        if call.function is not None:
            texts.extend(t for t in (call.function.name, call.function.arguments) if t)
    if message.function_call is not None:
        texts.extend(t for t in (message.function_call.name, message.function_call.arguments) if t)
    if message.audio is not None and message.audio.transcript:
        texts.append(message.audio.transcript)
    return texts
