"""Tokens: the shipped encodings loaded offline (:mod:`~gateway.tokens.encodings`), OpenAI's
counting recipe (:mod:`~gateway.tokens.counter`), and content parts that are not text bounded
by their size (:mod:`~gateway.tokens.parts`)."""

from gateway.tokens.counter import TokenCounter
from gateway.tokens.encodings import (
    DEFAULT_ENCODING,
    SUPPORTED_ENCODINGS,
    EncodingError,
    encoding_name_for_model,
    get_encoding,
    resolve_encoding,
)
from gateway.tokens.parts import (
    AUDIO_MIN_BYTES_PER_SECOND,
    AUDIO_TOKENS_PER_SECOND,
    IMAGE_PART_TOKENS,
    IMAGE_TILE_TOKENS,
    MAX_IMAGE_TOKENS,
    UNSIZED_FILE_TOKENS,
    image_tokens,
)

__all__ = [
    "AUDIO_MIN_BYTES_PER_SECOND",
    "AUDIO_TOKENS_PER_SECOND",
    "DEFAULT_ENCODING",
    "IMAGE_PART_TOKENS",
    "IMAGE_TILE_TOKENS",
    "MAX_IMAGE_TOKENS",
    "SUPPORTED_ENCODINGS",
    "UNSIZED_FILE_TOKENS",
    "EncodingError",
    "TokenCounter",
    "encoding_name_for_model",
    "get_encoding",
    "image_tokens",
    "resolve_encoding",
]
