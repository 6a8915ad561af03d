"""Tiny media files built by hand (no Pillow), for the tests that count what they cost: images
whose headers tell their pixel size, and data URLs of them."""

from __future__ import annotations

import base64
import struct
import zlib

__all__ = [
    "data_url",
    "gif",
    "jpeg",
    "jpeg_segment",
    "png",
    "riff",
    "webp_vp8",
    "webp_vp8l",
    "webp_vp8x",
]


def png(width: int, height: int) -> bytes:
    """A valid 1-bit greyscale PNG of that size (all black)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    rows = (b"\x00" + b"\x00" * ((width + 7) // 8)) * height
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def gif(width: int, height: int) -> bytes:
    """A valid GIF: a logical screen of that size holding one black pixel."""
    return (
        b"GIF89a"
        + struct.pack("<HHBBB", width, height, 0x80, 0, 0)
        + b"\x00\x00\x00\xff\xff\xff"  # a global colour table of 2 entries
        + b","
        + struct.pack("<HHHHB", 0, 0, 1, 1, 0)
        + b"\x02\x02\x44\x01\x00"  # LZW data of one pixel
        + b";"
    )


def riff(kind: bytes, chunks: bytes) -> bytes:
    """A RIFF file of ``kind`` (WEBP, WAVE...) holding ``chunks``."""
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + kind + chunks


def webp_vp8(width: int, height: int) -> bytes:
    frame = b"\x00\x00\x00" + b"\x9d\x01\x2a" + struct.pack("<HH", width, height) + b"\x00" * 8
    return riff(b"WEBP", b"VP8 " + struct.pack("<I", len(frame)) + frame)


def webp_vp8l(width: int, height: int) -> bytes:
    bits = (width - 1) | (height - 1) << 14
    data = b"\x2f" + struct.pack("<I", bits) + b"\x00" * 7
    return riff(b"WEBP", b"VP8L" + struct.pack("<I", len(data)) + data)


def webp_vp8x(width: int, height: int) -> bytes:
    data = b"\x00" * 4 + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return riff(b"WEBP", b"VP8X" + struct.pack("<I", len(data)) + data)


def jpeg_segment(marker: int, payload: bytes) -> bytes:
    """A JPEG segment: its marker, its length, its payload."""
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def jpeg(
    width: int, height: int, *, sof: int = 0xC0, padding: int = 0, fill: bool = False
) -> bytes:
    """A JPEG's segments up to its frame header: APP0, ``padding`` bytes of APP1 segments, a
    quantisation table, a Huffman table (0xC4, which is no frame header), the frame header
    ``sof`` (with fill bytes before it if ``fill``), a scan and the end."""
    app = b""
    while padding > 0:
        size = min(padding, 65533)
        app += jpeg_segment(0xE1, b"\x00" * size)
        padding -= size
    return (
        b"\xff\xd8"
        + jpeg_segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
        + app
        + jpeg_segment(0xDB, b"\x00" + bytes(range(1, 65)))
        + jpeg_segment(0xC4, b"\x00" + b"\x00" * 16)
        + (b"\xff\xff" if fill else b"")
        + jpeg_segment(sof, struct.pack(">BHHB", 8, height, width, 1) + b"\x01\x11\x00")
        + jpeg_segment(0xDA, b"\x01\x01\x00\x00\x3f\x00")
        + b"\x12\x34\x56"
        + b"\xff\xd9"
    )


def data_url(mime: str, blob: bytes) -> str:
    return f"data:{mime};base64," + base64.b64encode(blob).decode()
