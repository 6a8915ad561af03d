"""The two encodings the gateway meters with, loaded offline.

``cl100k_base`` and ``o200k_base`` ship inside the package as gzipped tiktoken BPE files
(``gateway/encodings/<name>.tiktoken.gz``, one ``base64token rank`` per line). They are loaded
from the package, never from the network: ``tiktoken.get_encoding`` and
``tiktoken.encoding_for_model`` are never called because they download on a cold cache. The
uncompressed bytes are checked against the same SHA-256 that tiktoken pins, and each encoding is
built once per process (thread-safe) and shared.
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
from typing import Final

import tiktoken
from tiktoken.model import MODEL_PREFIX_TO_ENCODING, MODEL_TO_ENCODING

__all__ = [
    "DEFAULT_ENCODING",
    "SUPPORTED_ENCODINGS",
    "EncodingError",
    "encoding_name_for_model",
    "get_encoding",
    "resolve_encoding",
]

SUPPORTED_ENCODINGS: Final = ("cl100k_base", "o200k_base")
"""The encodings shipped with the package, hence the only ones a route may name."""

DEFAULT_ENCODING: Final = "o200k_base"
"""The encoding used when neither the route nor tiktoken's model tables name one."""

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
