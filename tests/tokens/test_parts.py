"""Content parts that are not text, bounded by their size (gateway.tokens.parts)."""

from __future__ import annotations

import base64
import math
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.tokens import (
    AUDIO_MIN_BYTES_PER_SECOND,
    AUDIO_TOKENS_PER_SECOND,
    IMAGE_PART_TOKENS,
    IMAGE_TILE_TOKENS,
    MAX_IMAGE_TOKENS,
    UNSIZED_FILE_TOKENS,
    image_tokens,
)
from media import data_url, gif, jpeg, jpeg_segment, png, riff, webp_vp8, webp_vp8l, webp_vp8x
from tokens.cases import O200K

_PROPERTY_SETTINGS = settings(max_examples=200, deadline=None)


# --- parts that are not text: bounded by their size ----------------------------------------------


def _chat_part(part: object) -> int:
    """What one content part adds to a chat message."""
    empty = O200K.count_chat_prompt([{"role": "user", "content": []}])
    return O200K.count_chat_prompt([{"role": "user", "content": [part]}]) - empty


def _responses_part(part: object) -> int:
    """What one content part adds to a Responses API message item."""
    empty = O200K.count_responses_input(None, [{"role": "user", "content": []}])
    return O200K.count_responses_input(None, [{"role": "user", "content": [part]}]) - empty


def _image(url: object, detail: object = None) -> dict[str, object]:
    image: dict[str, object] = {"url": url}
    if detail is not None:
        image["detail"] = detail
    return {"type": "image_url", "image_url": image}


def _input_image(url: object, detail: object = "auto") -> dict[str, object]:
    return {"type": "input_image", "image_url": url, "detail": detail}


def test_the_most_an_image_costs() -> None:
    # after scaling the shortest side is <= 768 (2 tiles) and the longest <= 2048 (4 tiles)
    assert MAX_IMAGE_TOKENS == IMAGE_PART_TOKENS + IMAGE_TILE_TOKENS * 2 * 4 == 1445
    assert (IMAGE_PART_TOKENS, IMAGE_TILE_TOKENS) == (85, 170)


@pytest.mark.parametrize(
    ("width", "height", "expected"),
    [
        (1024, 1024, 85 + 170 * 4),  # shortest side 1024 -> 768: 768x768, 2x2 tiles
        (2048, 4096, 1105),  # fit 1024x2048, shortest side 768: 768x1536, 2x3 tiles
        (4096, 2048, 1105),
        (4096, 8192, 1105),
        (2048, 2048, 765),
        (1536, 1024, 1105),  # 1152x768: 3x2 tiles
        (800, 600, 765),  # never scaled up nor down: 2x2 tiles
        (512, 512, 255),
        (513, 512, 425),
        (100, 100, 255),
        (1, 1, 255),
        (3000, 1, 765),  # 2048 x 0.68: 4x1 tiles
        (768, 2048, MAX_IMAGE_TOKENS),  # the most tiles an image can have
        (0, 100, MAX_IMAGE_TOKENS),  # no sensible size
        (100, 0, MAX_IMAGE_TOKENS),
    ],
)
def test_image_tokens_follow_the_high_detail_formula(
    width: int, height: int, expected: int
) -> None:
    assert image_tokens(width, height) == expected


@_PROPERTY_SETTINGS
@given(
    width=st.integers(min_value=1, max_value=2**32 - 1),
    height=st.integers(min_value=1, max_value=2**32 - 1),
)
def test_image_tokens_are_bounded(width: int, height: int) -> None:
    tokens = image_tokens(width, height)
    assert IMAGE_PART_TOKENS + IMAGE_TILE_TOKENS <= tokens <= MAX_IMAGE_TOKENS
    assert (tokens - IMAGE_PART_TOKENS) % IMAGE_TILE_TOKENS == 0
    assert tokens == image_tokens(height, width)


_IMAGE_FORMATS = [
    ("image/png", png),
    ("image/gif", gif),
    ("image/webp", webp_vp8),
    ("image/webp", webp_vp8l),
    ("image/webp", webp_vp8x),
    ("image/jpeg", jpeg),
]


@pytest.mark.parametrize(("mime", "make"), _IMAGE_FORMATS, ids=lambda v: getattr(v, "__name__", v))
@pytest.mark.parametrize(
    ("width", "height", "expected"),
    [(1024, 1024, 765), (2048, 4096, 1105), (2048, 2048, 765), (300, 200, 255)],
)
def test_image_data_urls_count_their_pixel_size(
    mime: str, make: Any, width: int, height: int, expected: int
) -> None:
    url = data_url(mime, make(width, height))
    for detail in (None, "high", "auto"):
        assert _chat_part(_image(url, detail)) == expected
        assert _chat_part({"type": "image_url", "image_url": url}) == expected
        assert _responses_part(_input_image(url, detail)) == expected
    assert _chat_part(_image(url, "low")) == IMAGE_PART_TOKENS
    assert _responses_part(_input_image(url, "low")) == IMAGE_PART_TOKENS


@pytest.mark.parametrize(
    "blob",
    [
        jpeg(2048, 4096, sof=0xC2),  # progressive
        jpeg(2048, 4096, sof=0xC1),
        jpeg(2048, 4096, fill=True),  # fill bytes before the frame header
        jpeg(2048, 4096, padding=50_000),  # beyond the first scan, within 64 KiB
    ],
    ids=["progressive", "extended", "fill-bytes", "after-50KB-of-exif"],
)
def test_jpeg_frame_headers_are_found(blob: bytes) -> None:
    assert _chat_part(_image(data_url("image/jpeg", blob))) == 1105
    mime_lines = base64.encodebytes(blob).decode()  # newlines every 76 characters
    assert _chat_part(_image("data:image/jpeg;base64," + mime_lines)) == 1105
    urlsafe = base64.urlsafe_b64encode(blob).decode()
    assert _chat_part(_image("data:image/jpeg;base64," + urlsafe)) == 1105


_PNG_2048 = png(2048, 2048)
_JPEG_2048 = jpeg(2048, 2048)


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/cat.png",
        "http://example.com/cat.jpg",
        "",
        "data:image/png;base64,",
        "data:image/png;base64",  # no comma
        "data:image/png;base64,!!!!",
        "data:image/png;base64,AAAA",
        "data:image/png," + _PNG_2048.decode("latin-1"),  # not base64
        data_url("image/png", _PNG_2048[:20]),  # truncated before the size
        data_url("image/png", _PNG_2048[:8] + b"\x00\x00\x00\x0dIHDX" + _PNG_2048[16:]),
        data_url("image/png", png(0, 0)),
        data_url("image/gif", b"GIF89a\x00"),
        data_url("image/webp", webp_vp8(2048, 2048)[:28]),
        data_url("image/webp", riff(b"WEBP", b"VP8 " + b"\x00" * 30)),  # no start code
        data_url("image/bmp", b"BM" + b"\x00" * 60),  # a format not read
        data_url("image/jpeg", _JPEG_2048[:40]),  # truncated before the frame header
        data_url("image/jpeg", _JPEG_2048[:2] + b"\x00" + _JPEG_2048[2:]),  # not a marker
        data_url("image/jpeg", b"\xff\xd8" + jpeg_segment(0xDA, b"\x00" * 6) + _JPEG_2048[2:]),
        data_url("image/jpeg", b"\xff\xd8\xff\xe0\x00\x01"),  # a segment length below 2
        data_url("image/jpeg", jpeg(2048, 2048, padding=70_000)),  # beyond the 64 KiB scanned
        data_url("image/jpeg", jpeg(2048, 0)),  # height defined later (DNL): not read
    ],
)
def test_images_of_unreadable_size_count_the_most_an_image_costs(url: str) -> None:
    assert _chat_part(_image(url)) == MAX_IMAGE_TOKENS
    assert _chat_part(_image(url, "auto")) == MAX_IMAGE_TOKENS
    assert _responses_part(_input_image(url)) == MAX_IMAGE_TOKENS
    assert _chat_part(_image(url, "low")) == IMAGE_PART_TOKENS


@pytest.mark.parametrize(
    "part",
    [
        {"type": "input_image", "file_id": "file_1", "detail": "high"},
        {"type": "input_image", "file_id": "file_1"},
        {"type": "input_image"},
        {"type": "image_url"},
        {"type": "image_url", "image_url": None},
        {"type": "image_url", "image_url": 42},
        {"type": "image_url", "image_url": {"url": ["x"]}},
        {"type": "image_url", "image_url": {"detail": "high"}},
        {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": 3}},
    ],
)
def test_images_without_a_readable_url_count_the_most(part: dict[str, object]) -> None:
    assert _chat_part(part) == MAX_IMAGE_TOKENS
    assert _responses_part(part) == MAX_IMAGE_TOKENS
    if not isinstance(part.get("image_url"), dict):
        assert _chat_part({**part, "detail": "low"}) == IMAGE_PART_TOKENS


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 5, 1000, 200_000])
def test_inline_files_count_their_decoded_size(size: int) -> None:
    blob = (b"%PDF-1.4\n" * (size // 9 + 1))[:size]
    padded = base64.b64encode(blob).decode()
    for data in (
        "data:application/pdf;base64," + padded,
        "data:application/pdf;base64," + padded.rstrip("="),
        padded,
        padded.rstrip("="),
    ):
        assert _chat_part({"type": "file", "file": {"file_data": data, "filename": "a.pdf"}}) == (
            size
        )
        assert _responses_part({"type": "input_file", "file_data": data}) == size


def test_inline_files_that_are_not_base64_count_a_byte_a_character() -> None:
    assert _chat_part({"type": "file", "file": {"file_data": "data:text/plain,a%20b"}}) == 5
    assert _chat_part({"type": "file", "file": {"file_data": "data:text/plain,é"}}) == 4


@pytest.mark.parametrize(
    "part",
    [
        {"type": "file", "file": {"file_id": "file_1"}},
        {"type": "file", "file": {"file_data": 42}},
        {"type": "file", "file": {}},
        {"type": "file", "file": "file_1"},
        {"type": "file"},
        {"type": "input_file", "file_id": "file_1"},
        {"type": "input_file", "file_url": "https://example.com/a.pdf"},
        {"type": "input_file", "file_data": None, "file_id": "file_1"},
    ],
)
def test_files_of_unseen_size_count_as_a_megabyte(part: dict[str, object]) -> None:
    assert UNSIZED_FILE_TOKENS == 1_000_000
    assert _chat_part(part) == UNSIZED_FILE_TOKENS
    assert _responses_part(part) == UNSIZED_FILE_TOKENS


def _wav(
    frames: int,
    *,
    rate: int = 16_000,
    channels: int = 1,
    bits: int = 16,
    fmt: int = 1,
    byte_rate: int | None = None,
    subformat: int | None = None,
    before_data: bytes = b"",
    data_size: int | None = None,
) -> bytes:
    block = channels * bits // 8
    fields = struct.pack(
        "<HHIIHH",
        0xFFFE if subformat is not None else fmt,
        channels,
        rate,
        rate * block if byte_rate is None else byte_rate,
        block,
        bits,
    )
    if subformat is not None:  # WAVE_FORMAT_EXTENSIBLE: the subformat GUID starts with it
        fields += struct.pack("<HHI", 22, bits, 0) + struct.pack("<H", subformat) + b"\x00" * 14
    audio = b"\x01\x02" * (frames * block // 2)
    size = len(audio) if data_size is None else data_size
    chunks = (
        b"fmt "
        + struct.pack("<I", len(fields))
        + fields
        + before_data
        + b"data"
        + struct.pack("<I", size)
        + audio
    )
    return riff(b"WAVE", chunks)


def _audio(data: str, format: str = "wav") -> dict[str, object]:
    return {"type": "input_audio", "input_audio": {"data": data, "format": format}}


_LIST = b"LIST" + struct.pack("<I", 27) + b"INFOISFT" + b"\x00" * 19 + b"\x00"  # odd: padded


@pytest.mark.parametrize(
    ("blob", "expected"),
    [
        (_wav(40_000), 50),  # 2.5 s at 16 kHz: 50 tokens
        (_wav(44_100, rate=44_100, channels=2), 20),  # 1 s
        (_wav(44_101, rate=44_100, channels=2), 21),  # a frame more: rounded up
        (_wav(8_000, rate=8_000, bits=8, fmt=7), 20),  # 1 s of mu-law
        (_wav(40_000, before_data=_LIST), 50),  # other chunks are not audio
        (_wav(40_000, data_size=0xFFFFFFFF), 50),  # streamed: the size is the payload's
        (_wav(40_000, data_size=10), 50),  # an understated size is not believed
        (_wav(40_000, byte_rate=10**9), 50),  # nor a byte rate above the samples'
        (_wav(40_000, byte_rate=0), 50),
        (_wav(40_000, subformat=1), 50),  # WAVE_FORMAT_EXTENSIBLE carrying PCM
    ],
)
def test_wav_audio_counts_its_duration(blob: bytes, expected: int) -> None:
    data = base64.b64encode(blob).decode()
    assert _chat_part(_audio(data)) == expected
    assert _chat_part(_audio(data, "mp3")) == expected  # the header decides, not the format
    assert _chat_part(_audio("data:audio/wav;base64," + data)) == expected
    assert _responses_part(_audio(data)) == expected


def _by_size(size: int) -> int:
    return math.ceil(size * AUDIO_TOKENS_PER_SECOND / AUDIO_MIN_BYTES_PER_SECOND)


@pytest.mark.parametrize(
    "blob",
    [
        b"\xff\xfb\x90\x00" + b"\x00" * 9_996,  # an mp3 frame header and 10,000 bytes
        b"ID3" + b"\x00" * 10_000,
        b"RIFF",
        b"",
        _wav(40_000, fmt=0x55),  # MPEG in a WAV: its byte rate is not checked against samples
        _wav(40_000, subformat=0x55),
        _wav(40_000, bits=0, byte_rate=0),
        _wav(40_000, channels=0),
        _wav(40_000)[:30],  # the fmt chunk cut short
        riff(b"WAVE", b"data" + struct.pack("<I", 100) + b"\x00" * 100),  # no fmt chunk
        riff(b"AVI ", b"\x00" * 100),
    ],
)
def test_other_audio_counts_its_size_at_8_kbit_per_second(blob: bytes) -> None:
    assert AUDIO_MIN_BYTES_PER_SECOND == 1000
    assert AUDIO_TOKENS_PER_SECOND == 20
    data = base64.b64encode(blob).decode()
    assert _chat_part(_audio(data, "mp3")) == _by_size(len(blob))
    assert _chat_part(_audio(data.rstrip("="), "wav")) == _by_size(len(blob))
    assert _responses_part(_audio(data, "mp3")) == _by_size(len(blob))


def test_mp3_by_size() -> None:
    assert _chat_part(_audio(base64.b64encode(b"\x00" * 10_000).decode(), "mp3")) == 200
    assert _chat_part(_audio(base64.b64encode(b"\x00" * 10_001).decode(), "mp3")) == 201


@pytest.mark.parametrize(
    "part",
    [
        {"type": "input_audio"},
        {"type": "input_audio", "input_audio": "UklGRg=="},
        {"type": "input_audio", "input_audio": {"format": "wav"}},
        {"type": "input_audio", "input_audio": {"data": 42, "format": "wav"}},
    ],
)
def test_audio_parts_without_data_count_nothing(part: dict[str, object]) -> None:
    assert _chat_part(part) == 0
    assert _responses_part(part) == 0


def test_responses_parts_given_as_items_count_as_the_part_alone() -> None:
    image = _input_image(data_url("image/png", png(1024, 1024)), "high")
    wav = _audio(base64.b64encode(_wav(40_000)).decode())
    pdf = {"type": "input_file", "file_data": data_url("application/pdf", b"%PDF-" * 100)}
    assert O200K.count_responses_input(None, [image]) == 3 + 765
    assert O200K.count_responses_input(None, [wav]) == 3 + 50
    assert O200K.count_responses_input(None, [pdf]) == 3 + 500
    assert O200K.count_responses_input(None, [{"type": "input_file", "file_id": "f"}]) == (
        3 + UNSIZED_FILE_TOKENS
    )


def test_tool_output_parts_are_bounded_too() -> None:
    image = _input_image("https://example.com/chart.png")
    item = {"type": "function_call_output", "call_id": "c", "output": [image]}
    assert O200K.count_responses_input(None, [item]) == (
        3 + 3 + O200K.count_text("tool") + MAX_IMAGE_TOKENS
    )


_MAGIC = st.sampled_from(
    [
        b"",
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR",
        b"GIF89a",
        b"RIFF\x00\x00\x00\x00WEBPVP8 ",
        b"RIFF\x00\x00\x00\x00WEBPVP8L",
        b"RIFF\x00\x00\x00\x00WEBPVP8X",
        b"RIFF\x00\x00\x00\x00WAVEfmt ",
        b"\xff\xd8",
        b"\xff\xd8\xff\xc0",
    ]
)


@_PROPERTY_SETTINGS
@given(
    magic=_MAGIC,
    tail=st.binary(max_size=80),
    cut=st.integers(min_value=0, max_value=200),
    junk=st.text(max_size=6),
    prefix=st.sampled_from(["data:image/png;base64,", "data:audio/wav;base64,", "data:,", ""]),
)
def test_parts_of_any_bytes_never_raise(
    magic: bytes, tail: bytes, cut: int, junk: str, prefix: str
) -> None:
    encoded = base64.b64encode(magic + tail).decode()
    data = prefix + encoded[: len(encoded) - cut % (len(encoded) + 1)] + junk
    for detail in ("high", "low", None):
        tokens = _chat_part(_image(data, detail))
        assert IMAGE_PART_TOKENS <= tokens <= MAX_IMAGE_TOKENS
        assert _responses_part(_input_image(data, detail)) == tokens
    assert _chat_part(_audio(data)) >= 0
    assert _responses_part(_audio(data)) >= 0
    file_tokens = _chat_part({"type": "file", "file": {"file_data": data}})
    assert 0 <= file_tokens <= 4 * len(data)
    assert _responses_part({"type": "input_file", "file_data": data}) == file_tokens
