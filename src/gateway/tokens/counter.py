"""Counting a request's prompt the way OpenAI bills it.

The recipe of the OpenAI cookbook ("How to count tokens with tiktoken"): 3 tokens per chat
message, 1 more per ``name``, the tokens of every string value of the message, and 3 for the
priming of the reply. Content parts that are not text are bounded by their size
(:mod:`gateway.tokens.parts`). The counters take the raw decoded request body parts and never
raise.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Final

import msgspec

from gateway.tokens.encodings import get_encoding
from gateway.tokens.parts import audio_part_tokens, file_part_tokens, image_part_tokens

__all__ = ["TokenCounter"]

_TOKENS_PER_MESSAGE: Final = 3  # <|start|>{role/name}\n{content}<|end|>\n
_TOKENS_PER_NAME: Final = 1
_REPLY_PRIMING: Final = 3  # every reply is primed with <|start|>assistant<|message|>

#: Counts are cached: conversations resend their system prompt and history with every turn, and
#: every message its role, so the same strings are counted again and again (a role's count from
#: the cache cost ~1.6% of a chat request's instructions less than from tiktoken).
_CACHE_ENTRIES = 16_384


@functools.cache
def _counts_for(name: str) -> Callable[[str], int]:
    encode = get_encoding(name).encode_ordinary

    @functools.lru_cache(maxsize=_CACHE_ENTRIES)
    def count(text: str) -> int:
        return len(encode(text))

    return count


class TokenCounter:
    """Counts tokens of request parts with one shipped encoding.

    Cheap to construct (encodings are cached per process). Every ``count_*`` method takes raw
    decoded JSON and never raises; shapes that OpenAI would reject count 0, except content
    parts that are not text, which count what a well-formed part of their kind would at most
    (see :mod:`gateway.tokens.parts`).
    """

    __slots__ = ("_cached", "encoding_name")

    def __init__(self, encoding_name: str) -> None:
        self.encoding_name: Final = encoding_name
        self._cached = _counts_for(encoding_name)

    def __repr__(self) -> str:
        return f"TokenCounter({self.encoding_name!r})"

    def count_text(self, text: str) -> int:
        """Tokens in ``text``; special-token text such as ``<|endoftext|>`` counts as ordinary."""
        if not text:
            return 0
        return self._cached(text)

    def prefix(self, text: str, tokens: int) -> str:
        """The longest start of ``text`` that is at most ``tokens`` tokens (whole characters:
        a character split across tokens is left out)."""
        if tokens <= 0:
            return ""
        encoding = get_encoding(self.encoding_name)
        ids = encoding.encode_ordinary(text)
        if len(ids) <= tokens:
            return text
        return encoding.decode_bytes(ids[:tokens]).decode("utf-8", "ignore")

    def count_chat_prompt(self, messages: Sequence[object], tools: object = None) -> int:
        """Prompt tokens of a chat completion request, per the OpenAI cookbook recipe.

        Each message (a JSON object) counts 3, plus 1 for a ``name``, plus the tokens of its
        string values: ``content`` as a string or a list of parts (text and refusal parts
        count their text; ``image_url``, ``file`` and ``input_audio`` parts are bounded by
        their size as :mod:`gateway.tokens.parts` says: `IMAGE_PART_TOKENS` at low detail, the tile
        formula on the header's pixel size or `MAX_IMAGE_TOKENS`; a byte per decoded byte of
        inline file data or `UNSIZED_FILE_TOKENS`; `AUDIO_TOKENS_PER_SECOND` per second of
        audio), the function names and argument strings of ``tool_calls`` and
        the legacy ``function_call``, and every other string value (``role``, ``name``,
        ``tool_call_id``, ``refusal``...). Messages that are not objects count 0. The reply
        priming adds 3.

        ``tools`` (the request's tool definitions; pass legacy ``functions`` here too) is an
        estimate: OpenAI does not publish how definitions are rendered into the prompt, so the
        tokens of their compact JSON serialisation are counted.
        """
        total = _REPLY_PRIMING
        if isinstance(messages, list | tuple):
            for message in messages:
                if isinstance(message, dict):
                    total += self._count_message(message)
        return total + self._count_tools(tools)

    def count_completion_prompt(self, prompt: object) -> int:
        """Tokens of a legacy completions ``prompt``.

        A string, a list of strings, a list of token ids (its length) or a list of lists of
        token ids; a list may mix these. Anything else counts 0.
        """
        return self._count_text_or_ids(prompt, 0)

    def count_embedding_input(self, input: object) -> int:
        """Tokens of an embeddings ``input``: the same shapes as a completions ``prompt``."""
        return self._count_text_or_ids(input, 0)

    def count_responses_input(
        self, instructions: object, input: object, tools: object = None
    ) -> int:
        """Prompt tokens of a Responses API request, by the chat recipe above.

        ``instructions`` counts as a system message and a string ``input`` as a user message.
        Input items count as the chat messages they stand for: a message item (``type``
        "message" or none) by its ``role`` and ``content`` (``input_text``/``output_text``
        parts their text, ``refusal`` parts their refusal; ``input_image``, ``input_file`` and
        ``input_audio`` parts are bounded by their size as in chat), a ``function_call`` as an
        assistant message with its name and arguments, a ``function_call_output`` as a tool
        message with its output (a string or a list of parts). An ``input_image``,
        ``input_file`` or ``input_audio`` given as an item counts as that part alone. Other
        items (reasoning, built-in tool calls, references) count 0. The reply priming adds 3;
        ``tools`` are estimated from their JSON, as for chat.
        """
        total = _REPLY_PRIMING
        if isinstance(instructions, str):
            total += _TOKENS_PER_MESSAGE + self.count_text("system") + self.count_text(instructions)
        if isinstance(input, str):
            total += _TOKENS_PER_MESSAGE + self.count_text("user") + self.count_text(input)
        elif isinstance(input, list | tuple):
            for item in input:
                if isinstance(item, dict):
                    total += self._count_item(item)
        return total + self._count_tools(tools)

    def _count_item(self, item: dict[object, object]) -> int:
        kind = item.get("type", "message")
        if kind == "message":
            role, content = item.get("role"), item.get("content")
        elif kind == "function_call":
            role, content = "assistant", None
        elif kind == "function_call_output":
            role, content = "tool", item.get("output")
        elif kind in ("input_image", "input_file", "input_audio"):
            return self._count_content([item])  # a bare part: what it would count in a message
        else:
            return 0
        total = _TOKENS_PER_MESSAGE + self._count_str(role) + self._count_content(content)
        if kind == "function_call":
            total += self._count_function(item)
        return total

    def _count_message(self, message: dict[object, object]) -> int:
        total = _TOKENS_PER_MESSAGE
        for key, value in message.items():
            if key == "content":
                total += self._count_content(value)
            elif key == "tool_calls":
                if isinstance(value, list):
                    for call in value:
                        if isinstance(call, dict):
                            total += self._count_function(call.get("function"))
            elif key == "function_call":
                total += self._count_function(value)
            elif isinstance(value, str):
                total += self.count_text(value)
            if key == "name":
                total += _TOKENS_PER_NAME
        return total

    def _count_content(self, content: object) -> int:
        if isinstance(content, str):
            return self.count_text(content)
        if not isinstance(content, list):
            return 0
        total = 0
        for part in content:
            if isinstance(part, str):
                total += self.count_text(part)
            elif isinstance(part, dict):
                kind = part.get("type")
                if kind in ("text", "input_text", "output_text"):
                    total += self._count_str(part.get("text"))
                elif kind == "refusal":
                    total += self._count_str(part.get("refusal"))
                elif kind in ("image_url", "input_image"):
                    total += image_part_tokens(part)
                elif kind in ("file", "input_file"):
                    total += file_part_tokens(part)
                elif kind == "input_audio":
                    total += audio_part_tokens(part)
        return total

    def _count_function(self, function: object) -> int:
        if not isinstance(function, dict):
            return 0
        return self._count_str(function.get("name")) + self._count_str(function.get("arguments"))

    def _count_tools(self, tools: object) -> int:
        if not tools:
            return 0
        if isinstance(tools, str):
            return self.count_text(tools)
        try:
            text = msgspec.json.encode(tools).decode("utf-8", "replace")
        except (TypeError, ValueError, RecursionError, msgspec.EncodeError):
            return 0
        return self.count_text(text)

    def _count_str(self, value: object) -> int:
        return self.count_text(value) if isinstance(value, str) else 0

    def _count_text_or_ids(self, value: object, depth: int) -> int:
        # depth 0: the field itself; 1: an item of its list; 2: a token id of a nested list.
        if isinstance(value, str):
            return self.count_text(value) if depth < 2 else 0
        if isinstance(value, bool):
            return 0
        if isinstance(value, int):
            return 1 if depth > 0 else 0
        if isinstance(value, list | tuple) and depth < 2:
            return sum(self._count_text_or_ids(item, depth + 1) for item in value)
        return 0
