"""Offline tiktoken encodings and OpenAI-style token counting.

The two encodings the gateway meters with (``cl100k_base`` and ``o200k_base``) ship inside the
package as gzipped tiktoken BPE files (``encodings/<name>.tiktoken.gz``, one ``base64token rank``
per line). They are loaded from the package, never from the network: ``tiktoken.get_encoding``
and ``tiktoken.encoding_for_model`` are never called because they download on a cold cache. The
uncompressed bytes are checked against the same SHA-256 that tiktoken pins, and each encoding is
built once per process (thread-safe) and shared.

Counting follows the OpenAI cookbook ("How to count tokens with tiktoken"): 3 tokens per chat
message, 1 more per ``name``, the tokens of every string value of the message, and 3 for the
priming of the reply. The counters take the raw decoded request body parts and never raise.

Content parts that are not text are bounded by their size, so that the reservation made from
the estimate covers what the backend will bill for them (the backend's reported count is what
is charged in the end):

* an image counts what OpenAI bills for it: `IMAGE_PART_TOKENS` at ``detail: "low"``, else
  the high-detail tile formula (`image_tokens`) on the pixel size read from the header of a
  base64 ``data:`` URL (PNG, JPEG, GIF, WebP); an image whose size cannot be read (a remote
  URL, a ``file_id``, another format, a broken header) counts `MAX_IMAGE_TOKENS`;
* an inline file (``file_data``) counts one token per decoded byte, worked out from the base64
  length without decoding it; a file given only by ``file_id`` or ``file_url`` counts
  `UNSIZED_FILE_TOKENS`;
* inline audio counts `AUDIO_TOKENS_PER_SECOND` per second: the duration of a WAV from its
  header, of anything else from its size at `AUDIO_MIN_BYTES_PER_SECOND`.

Anything malformed counts what a well-formed part of its kind would at most, or 0 where nothing
sensible applies (a message that is not an object, an audio part without data...).
"""

from __future__ import annotations

import base64
import binascii
import functools
import gzip
import hashlib
import importlib.resources
import math
import re
import struct
import threading
import zlib
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Final

import msgspec
import tiktoken
from tiktoken.model import MODEL_PREFIX_TO_ENCODING, MODEL_TO_ENCODING

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

SUPPORTED_ENCODINGS: Final = ("cl100k_base", "o200k_base")
"""The encodings shipped with the package, hence the only ones a route may name."""

DEFAULT_ENCODING: Final = "o200k_base"
"""The encoding used when neither the route nor tiktoken's model tables name one."""

IMAGE_PART_TOKENS: Final = 85
"""What a low-detail image counts (``detail: "low"``, whatever its size); also the base that
every high-detail image pays on top of its tiles."""

IMAGE_TILE_TOKENS: Final = 170
"""What each 512-pixel tile of a high-detail image adds to `IMAGE_PART_TOKENS`."""

_IMAGE_MAX_SIDE: Final = 2048  # a high-detail image is first scaled to fit in 2048 x 2048,
_IMAGE_SHORT_SIDE: Final = 768  # then so that its shortest side is at most 768,
_IMAGE_TILE_SIDE: Final = 512  # then cut in 512 x 512 tiles.

MAX_IMAGE_TOKENS: Final = IMAGE_PART_TOKENS + IMAGE_TILE_TOKENS * (
    math.ceil(_IMAGE_SHORT_SIDE / _IMAGE_TILE_SIDE) * math.ceil(_IMAGE_MAX_SIDE / _IMAGE_TILE_SIDE)
)
"""The most one image can cost, 1445: what an image counts when its pixel size cannot be read.

After the high-detail scaling an image's shortest side is at most 768 pixels (2 tiles) and its
longest at most 2048 (4 tiles), so no image has more than 2 x 4 = 8 tiles: 85 + 170 x 8 (a
768 x 2048 image reaches it)."""

UNSIZED_FILE_TOKENS: Final = 1_000_000
"""What a file part counts when the gateway cannot see its size (only a ``file_id`` or a
``file_url``): it is reserved for as if it were a 1 MB file (one token per byte, as inline
files count), so a wallet that cannot hold that is refused with 402 before anything goes
upstream. What is charged in the end is the backend's reported prompt count."""

AUDIO_TOKENS_PER_SECOND: Final = 20
"""What a second of input audio counts: twice the ~10 tokens a second OpenAI bills, a bound."""

AUDIO_MIN_BYTES_PER_SECOND: Final = 1000
"""The lowest audio bitrate considered, 8 kbit/s: audio whose duration cannot be read from a
WAV header (mp3 and the rest) is taken to last its decoded size at this rate."""

_DATA_URL_HEADER_MAX: Final = 1024  # how far into a data: URL its comma is looked for
_IMAGE_HEAD_BYTES: Final = 32  # PNG needs 24 bytes, GIF 10, WebP 30
_JPEG_FIRST_SCAN_BYTES: Final = 4096  # a JPEG's frame header is looked for in its first 4 KiB,
_JPEG_SCAN_BYTES: Final = 64 * 1024  # then in its first 64 KiB (further: the size is unread)
_WAV_HEAD_BYTES: Final = 4096  # the fmt and data chunks of a WAV are looked for in these
# WAV formats whose byte rate follows from sample rate x channels x bits: PCM, IEEE float,
# A-law, mu-law (and WAVE_FORMAT_EXTENSIBLE carrying one of them).
_WAV_SAMPLE_FORMATS: Final = (1, 3, 6, 7)
_WAV_EXTENSIBLE: Final = 0xFFFE

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


# --- parts that are not text: bounded by their size ---------------------------------------------


def image_tokens(width: int, height: int) -> int:
    """What OpenAI bills for a ``width`` x ``height`` image at high detail.

    The image is scaled to fit in 2048 x 2048 (keeping its aspect, never up), then so that its
    shortest side is at most 768; it costs `IMAGE_PART_TOKENS` plus `IMAGE_TILE_TOKENS` per
    512 x 512 tile that covers it. A size that is not positive counts `MAX_IMAGE_TOKENS`.
    Exact fractions are used, so a side is never rounded past a tile boundary.
    """
    if width <= 0 or height <= 0:
        return MAX_IMAGE_TOKENS
    w, h = Fraction(width), Fraction(height)
    longest = max(w, h)
    if longest > _IMAGE_MAX_SIDE:
        w, h = w * _IMAGE_MAX_SIDE / longest, h * _IMAGE_MAX_SIDE / longest
    shortest = min(w, h)
    if shortest > _IMAGE_SHORT_SIDE:
        w, h = w * _IMAGE_SHORT_SIDE / shortest, h * _IMAGE_SHORT_SIDE / shortest
    tiles = math.ceil(w / _IMAGE_TILE_SIDE) * math.ceil(h / _IMAGE_TILE_SIDE)
    return IMAGE_PART_TOKENS + IMAGE_TILE_TOKENS * tiles


def _data_url(value: str) -> tuple[int, bool] | None:
    """Where the payload of a ``data:`` URL starts and whether it is base64; None when
    ``value`` is not one (or its comma is not within the first kilobyte)."""
    if value[:5].lower() != "data:":
        return None
    comma = value.find(",", 5, _DATA_URL_HEADER_MAX)
    if comma < 0:
        return None
    return comma + 1, value[5:comma].rstrip().lower().endswith(";base64")


def _payload(value: str) -> tuple[int, bool]:
    """``_data_url``, or the whole of ``value`` as bare base64."""
    return _data_url(value) or (0, True)


def _decoded_size(text: str, start: int, is_base64: bool) -> int:
    """The most bytes ``text[start:]`` decodes to, worked out without decoding it.

    Base64: 3 bytes per 4 characters less the ``=`` padding (whitespace, if any, is counted as
    data: an upper bound). Otherwise (a percent-encoded data URL) a byte per character, 4 per
    character if the text is not ASCII (``str.isascii`` costs nothing in CPython).
    """
    n = len(text) - start
    if not is_base64:
        return n if text.isascii() else 4 * n
    for _ in range(2):
        if n > 0 and text[start + n - 1] == "=":
            n -= 1
    return n * 3 // 4


_B64_NOISE: Final = re.compile(r"[^A-Za-z0-9+/]")
_URLSAFE: Final = str.maketrans("-_", "+/")


def _b64_head(text: str, start: int, size: int) -> bytes:
    """At most the first ``size`` bytes that the base64 ``text[start:]`` decodes to (fewer if
    it is shorter, has whitespace or is broken); only the characters they need are read."""
    chunk = text[start : start + (size + 2) // 3 * 4]
    end = chunk.find("=")
    if end >= 0:
        chunk = chunk[:end]
    chunk = _B64_NOISE.sub("", chunk.translate(_URLSAFE))
    tail = len(chunk) % 4
    if tail == 1:
        chunk = chunk[:-1]
    elif tail:
        chunk += "=" * (4 - tail)
    try:
        return binascii.a2b_base64(chunk)
    except (binascii.Error, ValueError):  # pragma: no cover - the chunk is cleaned above
        return b""


def _image_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) from the start of a PNG, GIF or WebP file, or None."""
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" and len(head) >= 24:
        width, height = struct.unpack(">II", head[16:24])
        return width, height
    if head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
        width, height = struct.unpack("<HH", head[6:10])
        return width, height
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        chunk = head[12:16]
        if chunk == b"VP8 " and head[23:26] == b"\x9d\x01\x2a" and len(head) >= 30:
            width, height = struct.unpack("<HH", head[26:30])
            return width & 0x3FFF, height & 0x3FFF  # the top 2 bits are a scaling hint
        if chunk == b"VP8L" and len(head) >= 25 and head[20] == 0x2F:
            bits = int.from_bytes(head[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        if chunk == b"VP8X" and len(head) >= 30:
            return (
                int.from_bytes(head[24:27], "little") + 1,
                int.from_bytes(head[27:30], "little") + 1,
            )
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the first frame header (SOF0..SOF15 but DHT, JPG and DAC) of a
    JPEG's start, or None when it is not within ``data`` or the segments are broken."""
    if data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 1 < n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # a fill byte
            i += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # the image ends or its scan starts before a frame header
            return None
        if i + 4 > n:
            return None
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if length < 2:
            return None
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 9 > n:
                return None
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return width, height
        i += 2 + length
    return None


def _image_part_tokens(part: dict[object, object]) -> int:
    """An image part: chat's ``image_url`` (an object with ``url`` and ``detail``, or a
    string) or the Responses API's ``input_image`` (``image_url`` or ``file_id``, ``detail``)."""
    image, detail = part.get("image_url"), part.get("detail")
    if isinstance(image, dict):
        detail = image.get("detail", detail)
        image = image.get("url")
    if detail == "low":
        return IMAGE_PART_TOKENS
    if not isinstance(image, str):
        return MAX_IMAGE_TOKENS
    payload = _data_url(image)
    if payload is None or not payload[1]:
        return MAX_IMAGE_TOKENS
    start = payload[0]
    head = _b64_head(image, start, _IMAGE_HEAD_BYTES)
    size = _image_size(head)
    if size is None and head[:2] == b"\xff\xd8":  # most frame headers are in the first 4 KiB
        for scan in (_JPEG_FIRST_SCAN_BYTES, _JPEG_SCAN_BYTES):
            size = _jpeg_size(_b64_head(image, start, scan))
            if size is not None:
                break
    return MAX_IMAGE_TOKENS if size is None else image_tokens(*size)


def _file_part_tokens(part: dict[object, object]) -> int:
    """A file part: chat's ``file`` (``{"file": {"file_data" | "file_id", ...}}``) or the
    Responses API's ``input_file`` (``file_data``, ``file_id`` or ``file_url`` on the part)."""
    file = part.get("file", part)
    data = file.get("file_data") if isinstance(file, dict) else None
    if not isinstance(data, str):
        return UNSIZED_FILE_TOKENS
    return _decoded_size(data, *_payload(data))


def _wav_audio(head: bytes, size: int) -> tuple[int, int] | None:
    """(audio bytes, byte rate) of a WAV file of ``size`` bytes from its start, or None when it
    is not a WAV whose rate can be trusted.

    The rate is the ``fmt `` chunk's byte rate, but no more than sample rate x channels x bits
    / 8 (either alone if the other is 0), and only for sample formats (PCM, float, A-law,
    mu-law): a compressed WAV's byte rate is not checked against anything, so it is not used.
    The audio is everything after the ``data`` chunk's header (the whole file when that is not
    in ``head``): its declared size is not used, as streamed WAVs leave it 0 or 0xFFFFFFFF and
    it may understate what follows.
    """
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    rate: int | None = None
    i = 12
    while i + 8 <= len(head):
        chunk, length = head[i : i + 4], int.from_bytes(head[i + 4 : i + 8], "little")
        body = i + 8
        if chunk == b"fmt ":
            if length < 16 or body + 16 > len(head):
                return None
            fmt, channels, sample_rate, byte_rate, _align, bits = struct.unpack(
                "<HHIIHH", head[body : body + 16]
            )
            if fmt == _WAV_EXTENSIBLE and length >= 26 and body + 26 <= len(head):
                fmt = int.from_bytes(head[body + 24 : body + 26], "little")  # the subformat
            rates = [r for r in (byte_rate, sample_rate * channels * bits // 8) if r > 0]
            if fmt not in _WAV_SAMPLE_FORMATS or not rates:
                return None
            rate = min(rates)
        elif chunk == b"data":
            return (max(size - body, 0), rate) if rate is not None else None
        i = body + length + (length & 1)
    return (size, rate) if rate is not None else None


def _audio_part_tokens(part: dict[object, object]) -> int:
    """An ``input_audio`` part (``{"input_audio": {"data": base64, "format": ...}}``; the data
    may also be a data: URL or sit on the part itself). Its ``format`` is not trusted: a WAV is
    recognised by its header."""
    audio = part.get("input_audio", part)
    data = audio.get("data") if isinstance(audio, dict) else None
    if not isinstance(data, str):
        return 0
    start, is_base64 = _payload(data)
    size = _decoded_size(data, start, is_base64)
    wav = _wav_audio(_b64_head(data, start, _WAV_HEAD_BYTES), size) if is_base64 else None
    audio_bytes, rate = wav or (size, AUDIO_MIN_BYTES_PER_SECOND)
    return -(-audio_bytes * AUDIO_TOKENS_PER_SECOND // rate)


class TokenCounter:
    """Counts tokens of request parts with one shipped encoding.

    Cheap to construct (encodings are cached per process). Every ``count_*`` method takes raw
    decoded JSON and never raises; shapes that OpenAI would reject count 0, except content
    parts that are not text, which count what a well-formed part of their kind would at most
    (see the module docstring).
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
        their size as the module docstring says: `IMAGE_PART_TOKENS` at low detail, the tile
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
                    total += _image_part_tokens(part)
                elif kind in ("file", "input_file"):
                    total += _file_part_tokens(part)
                elif kind == "input_audio":
                    total += _audio_part_tokens(part)
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
