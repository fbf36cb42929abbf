"""Hostile image files for tests/integration/test_hostile_input.py, made in memory (nothing is downloaded).

Decompression bombs (headers announcing huge sizes over a few bytes, and real zero-filled PNGs that inflate to
hundreds of MB), truncated files of every format, polyglots, extreme aspect ratios, multi-frame and unusual
pixel formats. Each maker returns the file's bytes; the big ones are cached for the session.
"""

from __future__ import annotations

import functools
import io
import struct
import zipfile
import zlib

import cv2
import numpy as np
from PIL import Image

SIDE = (48, 64)  # (h, w) of the small picture the good files are made of


@functools.cache
def picture() -> np.ndarray:
    """A 48x64 RGB picture of 8x8 blocks (compresses well in every format)."""
    rng = np.random.default_rng(11)
    blocks = rng.integers(0, 256, (SIDE[0] // 8, SIDE[1] // 8, 3), dtype=np.uint8)
    return np.ascontiguousarray(np.repeat(np.repeat(blocks, 8, axis=0), 8, axis=1))


def pil_bytes(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def cv2_bytes(image: np.ndarray, ext: str) -> bytes:
    ok, data = cv2.imencode(ext, image)
    assert ok, ext
    return data.tobytes()


@functools.cache
def good(fmt: str) -> bytes:
    """The picture as a plain file of ``fmt`` (JPEG, PNG, GIF, WEBP, TIFF, BMP)."""
    params = {"WEBP": {"lossless": True}, "JPEG": {"quality": 90}}.get(fmt, {})
    return pil_bytes(Image.fromarray(picture()), fmt, **params)


# --------------------------------------------------------------------------------------------------- PNG


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png(width: int, height: int, idat: bytes, color_type: int = 0, bit_depth: int = 8) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    )


@functools.cache
def zeros_png(width: int, height: int) -> bytes:
    """A real grayscale PNG of ``width x height`` zeros: every row is there, compressed ~1000:1."""
    rows_per_feed = max(1, (8 << 20) // (width + 1))
    compressor = zlib.compressobj(9)
    block = b"\x00" * ((width + 1) * rows_per_feed)
    parts, left = [], height
    while left > 0:
        n = min(left, rows_per_feed)
        parts.append(compressor.compress(block if n == rows_per_feed else block[: (width + 1) * n]))
        left -= n
    parts.append(compressor.flush())
    return png(width, height, b"".join(parts))


def png_header_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A PNG header announcing ``width x height`` gray pixels over one compressed row of data."""
    return png(width, height, zlib.compress(b"\x00" * 9))


def png_lying_header() -> bytes:
    """IHDR says 4000x3000 RGB; the data holds 16x16 pixels."""
    rows = b"".join(b"\x00" + bytes(48) for _ in range(16))
    return png(4000, 3000, zlib.compress(rows), color_type=2)


def png_bad_crc() -> bytes:
    data = bytearray(good("PNG"))
    data[29] ^= 0xFF  # IHDR's CRC
    return bytes(data)


# -------------------------------------------------------------------------------------- other formats


def jpeg_header_bomb(width: int = 65_000, height: int = 65_000) -> bytes:
    """A real small JPEG whose SOF0 frame header is rewritten to announce ``width x height``."""
    data = bytearray(good("JPEG"))
    sof = data.find(b"\xff\xc0")
    assert sof > 0
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def gif_header_bomb() -> bytes:
    """A 1x1 GIF whose logical screen is 65535x65535."""
    data = bytearray(pil_bytes(Image.new("P", (1, 1)), "GIF"))
    data[6:10] = struct.pack("<HH", 65535, 65535)
    return bytes(data)


def webp_header_bomb() -> bytes:
    """A lossless WebP whose VP8L header announces 16384x16384 over a 16x16 bitstream."""
    data = bytearray(pil_bytes(Image.new("RGB", (16, 16)), "WEBP", lossless=True))
    at = data.find(b"VP8L") + 8  # chunk header (fourcc, size), then signature byte 0x2f
    assert data[at] == 0x2F
    bits = int.from_bytes(data[at + 1 : at + 5], "little")
    bits = (bits & ~((1 << 28) - 1)) | (16383 << 14) | 16383  # width-1, height-1: 14 bits each
    data[at + 1 : at + 5] = bits.to_bytes(4, "little")
    return bytes(data)


def tiff(width: int, height: int, pixels: bytes) -> bytes:
    """A minimal little-endian grayscale TIFF with one strip."""
    entries = [
        (256, 4, width),  # ImageWidth
        (257, 4, height),  # ImageLength
        (258, 3, 8),  # BitsPerSample
        (259, 3, 1),  # Compression: none
        (262, 3, 1),  # Photometric: min-is-black
        (273, 4, 0),  # StripOffsets (patched below)
        (277, 3, 1),  # SamplesPerPixel
        (278, 4, height),  # RowsPerStrip
        (279, 4, len(pixels)),  # StripByteCounts
    ]
    offset = 8 + 2 + 12 * len(entries) + 4
    ifd = struct.pack("<H", len(entries))
    for tag, kind, given in entries:
        value = offset if tag == 273 else given
        packed = struct.pack("<I", value) if kind == 4 else struct.pack("<HH", value, 0)
        ifd += struct.pack("<HHI", tag, kind, 1) + packed
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + pixels


def tiff_header_bomb() -> bytes:
    return tiff(100_000, 100_000, b"\x00" * 64)


def bmp_header_bomb() -> bytes:
    """A 24-bit BMP header announcing 50000x50000 over 64 bytes of pixels."""
    pixels = b"\x00" * 64
    info = struct.pack("<IiiHHIIiiII", 40, 50_000, 50_000, 1, 24, 0, len(pixels), 2835, 2835, 0, 0)
    head = b"BM" + struct.pack("<IHHI", 14 + len(info) + len(pixels), 0, 0, 14 + len(info))
    return head + info + pixels


def truncated(fmt: str) -> bytes:
    data = good(fmt)
    return data[: len(data) // 2]


def jpeg_with(trailer: bytes) -> bytes:
    return good("JPEG") + trailer


def zip_archive() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("payload.sh", "#!/bin/sh\necho pwned\n" * 50)
    return buffer.getvalue()


HTML = b"<html><body><script>alert(document.cookie)</script></body></html>\n"


def gif_with_script() -> bytes:
    """GIFAR-style: the GIF magic followed by script text."""
    return b"GIF89a" + HTML


@functools.cache
def jpeg_wide(width: int = 65_000, height: int = 8) -> bytes:
    return cv2_bytes(np.zeros((height, width, 3), np.uint8), ".jpg")


def frames(n: int = 3) -> list[Image.Image]:
    base = picture()
    return [Image.fromarray(np.roll(base, 8 * i, axis=1)) for i in range(n)]


@functools.cache
def multi_frame(fmt: str) -> bytes:
    first, *rest = frames()
    params = {"GIF": {"duration": 100, "loop": 0}, "WEBP": {"lossless": True}}.get(fmt, {})
    return pil_bytes(first, fmt, save_all=True, append_images=rest, **params)


def first_frame(fmt: str) -> np.ndarray:
    """What the first frame of :func:`multi_frame` decodes to (RGB)."""
    with Image.open(io.BytesIO(multi_frame(fmt))) as image:
        image.seek(0)
        return np.asarray(image.convert("RGB"))


def png16() -> bytes:
    return cv2_bytes(picture()[:, :, ::-1].astype(np.uint16) * 257, ".png")


def tiff16() -> bytes:
    return cv2_bytes(picture()[:, :, ::-1].astype(np.uint16) * 257, ".tiff")


def cmyk_jpeg() -> bytes:
    return pil_bytes(Image.fromarray(picture()).convert("CMYK"), "JPEG", quality=90)


def palette_png() -> bytes:
    return pil_bytes(Image.fromarray(picture()).convert("P", palette=Image.Palette.ADAPTIVE), "PNG")


def unsupported_format() -> bytes:
    """A valid image in a format the service does not take (PPM)."""
    return pil_bytes(Image.fromarray(picture()), "PPM")
