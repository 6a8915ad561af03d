"""Content parts that are not text, bounded by their size.

So that the reservation made from the prompt's estimate covers what the backend will bill for
them (the backend's reported count is what is charged in the end):

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
sensible applies (an audio part without data...). Nothing here raises.
"""

from __future__ import annotations

import binascii
import math
import re
import struct
from fractions import Fraction
from typing import Final

__all__ = [
    "AUDIO_MIN_BYTES_PER_SECOND",
    "AUDIO_TOKENS_PER_SECOND",
    "IMAGE_PART_TOKENS",
    "IMAGE_TILE_TOKENS",
    "MAX_IMAGE_TOKENS",
    "UNSIZED_FILE_TOKENS",
    "audio_part_tokens",
    "file_part_tokens",
    "image_part_tokens",
    "image_tokens",
]

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


def image_part_tokens(part: dict[object, object]) -> int:
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


def file_part_tokens(part: dict[object, object]) -> int:
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


def audio_part_tokens(part: dict[object, object]) -> int:
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
