"""``probe_image`` reads headers only: it never decodes pixels, least of all of an image over the limits.

A PNG header announcing 100000x100000 once took a pipeline stub to 9.5 GB: the EXIF orientation was read
before the pixel limit was checked, and PIL's ``getexif`` on a PNG without an eXIf chunk loads the
whole image.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFile

from mobilesamv2.processing.image import InvalidImageError, decode_image, probe_image

sys.path.insert(0, str(Path(__file__).parent / "integration"))
import hostile_files as hf


@pytest.fixture
def no_pixel_decoding(monkeypatch):
    """Any PIL pixel load during the test fails it."""
    loads: list[str] = []

    def load(self, *args, **kwargs):
        loads.append(f"{self.format} {self.size}")
        raise AssertionError(f"pixels decoded while probing a {self.format} {self.size}")

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return loads


@pytest.mark.parametrize(
    "make",
    [hf.png_header_bomb, hf.jpeg_header_bomb, hf.gif_header_bomb, hf.webp_header_bomb, hf.tiff_header_bomb,
     hf.bmp_header_bomb],
    ids=["png", "jpeg", "gif", "webp", "tiff", "bmp"],
)  # fmt: skip
def test_a_header_bomb_is_refused_without_decoding(make, no_pixel_decoding):
    with pytest.raises(InvalidImageError, match=r"over the limit of .* \(max_image_pixels\)"):
        probe_image(make())
    assert no_pixel_decoding == []


def png(rgb: np.ndarray, exif: Image.Exif | None = None) -> bytes:
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format="PNG", **({"exif": exif} if exif is not None else {}))
    return out.getvalue()


def test_an_ordinary_png_is_probed_without_decoding(no_pixel_decoding):
    header = probe_image(png(np.zeros((30, 50, 3), np.uint8)))
    assert (header.format, header.height, header.width) == ("PNG", 30, 50)
    assert no_pixel_decoding == []


def test_png_exif_orientation_is_still_read_from_the_exif_chunk(no_pixel_decoding):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: OpenCV returns the image turned
    data = png(np.zeros((30, 50, 3), np.uint8), exif)
    header = probe_image(data)
    assert (header.height, header.width) == (50, 30)
    assert no_pixel_decoding == []


def test_png_exif_orientation_matches_opencv(monkeypatch):
    exif = Image.Exif()
    exif[0x0112] = 6
    rgb = np.random.default_rng(0).integers(0, 255, (30, 50, 3), dtype=np.uint8)
    data = png(rgb, exif)
    expected = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    decoded = decode_image(data)
    assert decoded.shape == expected.shape == (50, 30, 3)
    np.testing.assert_array_equal(decoded, expected)
