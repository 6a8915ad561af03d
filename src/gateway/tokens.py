"""Offline tiktoken encodings and OpenAI-style token counting.

The two encodings the gateway meters with (``cl100k_base`` and ``o200k_base``) ship inside the
package as gzipped tiktoken BPE files (``encodings/<name>.tiktoken.gz``, one ``base64token rank``
per line). They are loaded from the package, never from the network: ``tiktoken.get_encoding``
and ``tiktoken.encoding_for_model`` are never called because they download on a cold cache. The
uncompressed bytes are checked against the same SHA-256 that tiktoken pins, and each encoding is
built once per process (thread-safe) and shared.

Counting follows the OpenAI cookbook ("How to count tokens with tiktoken"): 3 tokens per chat
message, 1 more per ``name``, the tokens of every string value of the message, and 3 for the
priming of the reply. The counters take the raw decoded request body parts and never raise:
anything that is not a shape OpenAI accepts counts 0.
"""

from __future__ import annotations

import base64
import binascii
import functools
import gzip
import hashlib
import importlib.resources
import threading
import zlib
from collections.abc import Callable, Sequence
from typing import Final

import msgspec
import tiktoken
from tiktoken.model import MODEL_PREFIX_TO_ENCODING, MODEL_TO_ENCODING

__all__ = [
    "DEFAULT_ENCODING",
    "IMAGE_PART_TOKENS",
    "SUPPORTED_ENCODINGS",
    "EncodingError",
    "TokenCounter",
    "encoding_name_for_model",
    "get_encoding",
    "resolve_encoding",
]

SUPPORTED_ENCODINGS: Final = ("cl100k_base", "o200k_base")
"""The encodings shipped with the package, hence the only ones a route may name."""

DEFAULT_ENCODING: Final = "o200k_base"
"""The encoding used when neither the route nor tiktoken's model tables name one."""

IMAGE_PART_TOKENS: Final = 85
"""What one image content part counts: the price of a low-detail image."""

_TOKENS_PER_MESSAGE: Final = 3  # <|start|>{role/name}\n{content}<|end|>\n
_TOKENS_PER_NAME: Final = 1
_REPLY_PRIMING: Final = 3  # every reply is primed with <|start|>assistant<|message|>

# Copied from tiktoken_ext/openai_public.py (tiktoken 0.14); its functions download, so only the
# constants are reused. The SHA-256 are of the uncompressed files, as tiktoken pins them.
_ENDOFTEXT: Final = "<|endoftext|>"
_FIM_PREFIX: Final = "<|fim_prefix|>"
_FIM_MIDDLE: Final = "<|fim_middle|>"
_FIM_SUFFIX: Final = "<|fim_suffix|>"
_ENDOFPROMPT: Final = "<|endofprompt|>"

_CL100K_PAT_STR: Final = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
_O200K_PAT_STR: Final = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)

_PAT_STR: Final[dict[str, str]] = {
    "cl100k_base": _CL100K_PAT_STR,
    "o200k_base": _O200K_PAT_STR,
}
_SPECIAL_TOKENS: Final[dict[str, dict[str, int]]] = {
    "cl100k_base": {
        _ENDOFTEXT: 100257,
        _FIM_PREFIX: 100258,
        _FIM_MIDDLE: 100259,
        _FIM_SUFFIX: 100260,
        _ENDOFPROMPT: 100276,
    },
    "o200k_base": {_ENDOFTEXT: 199999, _ENDOFPROMPT: 200018},
}
_SHA256: Final[dict[str, str]] = {
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
}

_load_lock = threading.Lock()


class EncodingError(Exception):
    """An encoding that is not shipped with the gateway, or whose shipped file is corrupt."""


def _check_supported(name: str) -> None:
    if name not in SUPPORTED_ENCODINGS:
        raise EncodingError(
            f"unknown encoding {name!r}; the gateway ships {', '.join(SUPPORTED_ENCODINGS)}"
        )


def _load_ranks(compressed: bytes, name: str) -> dict[bytes, int]:
    """Gunzip a tiktoken BPE file, verify its pinned SHA-256 and parse its mergeable ranks."""
    _check_supported(name)
    try:
        contents = gzip.decompress(compressed)
    except (OSError, EOFError, zlib.error) as exc:
        raise EncodingError(f"encoding file for {name} is not valid gzip: {exc}") from exc
    digest = hashlib.sha256(contents).hexdigest()
    if digest != _SHA256[name]:
        raise EncodingError(
            f"encoding file for {name} is corrupt: sha256 {digest}, expected {_SHA256[name]}"
        )
    try:
        return {
            base64.b64decode(token): int(rank)
            for token, rank in (line.split() for line in contents.splitlines() if line)
        }
    except (ValueError, binascii.Error) as exc:  # pragma: no cover - the hash already guards
        raise EncodingError(f"encoding file for {name} is malformed: {exc}") from exc


@functools.cache
def _build_encoding(name: str) -> tiktoken.Encoding:
    resource = importlib.resources.files("gateway") / "encodings" / f"{name}.tiktoken.gz"
    try:
        compressed = resource.read_bytes()
    except OSError as exc:
        raise EncodingError(f"encoding file for {name} is missing from the package") from exc
    return tiktoken.Encoding(
        name=name,
        pat_str=_PAT_STR[name],
        mergeable_ranks=_load_ranks(compressed, name),
        special_tokens=dict(_SPECIAL_TOKENS[name]),
    )


def get_encoding(name: str) -> tiktoken.Encoding:
    """The shipped encoding ``name``, loaded once per process; raises `EncodingError`."""
    _check_supported(name)
    # functools.cache alone could build an encoding twice when two threads race on a cold cache
    # (0.2-0.3 s and 40-70 MB each); the lock makes the first load happen once.
    with _load_lock:
        return _build_encoding(name)


def encoding_name_for_model(model: str) -> str | None:
    """The shipped encoding tiktoken's model tables give for ``model``, or None.

    Uses tiktoken's exact-name table, then its prefix table (pure data, nothing downloaded).
    Models whose encoding the gateway does not ship (p50k, r50k, gpt2, o200k_harmony) give None.
    """
    name = MODEL_TO_ENCODING.get(model)
    if name is None:
        for prefix, prefix_name in MODEL_PREFIX_TO_ENCODING.items():
            if model.startswith(prefix):
                name = prefix_name
                break
    return name if name in SUPPORTED_ENCODINGS else None


def resolve_encoding(tokenizer: str | None, upstream_model: str, model: str) -> str:
    """The encoding a route counts with.

    The route's ``tokenizer`` if set, else the encoding tiktoken knows for the upstream model,
    else the one it knows for the public model name, else ``o200k_base``. A ``tokenizer`` is
    returned as given: config should check it is one of `SUPPORTED_ENCODINGS`, as
    `TokenCounter` raises `EncodingError` for any other name.
    """
    if tokenizer:
        return tokenizer
    return (
        encoding_name_for_model(upstream_model)
        or encoding_name_for_model(model)
        or DEFAULT_ENCODING
    )


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
    decoded JSON and never raises; shapes that OpenAI would reject count 0.
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
        string values: ``content`` as a string or a list of parts (text parts count their text,
        image parts count `IMAGE_PART_TOKENS`, audio and file parts count 0 as their tokens do
        not derive from text), the function names and argument strings of ``tool_calls`` and
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
        parts their text, ``refusal`` parts their refusal, ``input_image`` parts
        `IMAGE_PART_TOKENS`), a ``function_call`` as an assistant message with its name and
        arguments, a ``function_call_output`` as a tool message with its output. Other items
        (reasoning, built-in tool calls, references) count 0. The reply priming adds 3;
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
                if kind in ("image_url", "input_image"):
                    total += IMAGE_PART_TOKENS
                elif kind in ("text", "input_text", "output_text"):
                    total += self._count_str(part.get("text"))
                elif kind == "refusal":
                    total += self._count_str(part.get("refusal"))
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
