"""Image input coercion: every accepted type becomes the right payload."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from segment_everything_client.errors import ImageNotFoundError, InvalidInputError
from segment_everything_client.images import load_image, prepare_image, to_rgb_array


@pytest.fixture
def rgb() -> np.ndarray:
    img = np.zeros((6, 8, 3), np.uint8)
    img[..., 0] = 200  # red
    img[..., 1] = np.arange(8, dtype=np.uint8)[None, :] * 10
    img[..., 2] = np.arange(6, dtype=np.uint8)[:, None] * 20
    return img


@pytest.fixture
def png_file(tmp_path: Path, rgb: np.ndarray) -> Path:
    path = tmp_path / "img.png"
    assert cv2.imwrite(str(path), rgb[:, :, ::-1])
    return path


def test_path_str_sends_file_bytes(png_file: Path) -> None:
    p = prepare_image(str(png_file))
    assert p.input_name == "image"
    assert p.array.dtype == object and p.array.shape == (1,)
    assert p.array[0] == png_file.read_bytes()
    assert p.image_size is None


def test_pathlike_sends_file_bytes(png_file: Path) -> None:
    assert prepare_image(png_file).array[0] == png_file.read_bytes()


def test_missing_path_raises_image_not_found(tmp_path: Path) -> None:
    with pytest.raises(ImageNotFoundError, match="not found"):
        prepare_image(tmp_path / "nope.jpg")


def test_missing_path_is_also_a_file_not_found_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        prepare_image(str(tmp_path / "nope.jpg"))


def test_directory_is_not_an_image(tmp_path: Path) -> None:
    with pytest.raises(ImageNotFoundError):
        prepare_image(tmp_path)


def test_url_is_rejected_with_a_hint() -> None:
    with pytest.raises(InvalidInputError, match="download"):
        prepare_image("https://example.com/a.jpg")


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview])
def test_bytes_like_sent_as_bytes(wrap) -> None:
    p = prepare_image(wrap(b"\xff\xd8\xffjpeg"))
    assert p.input_name == "image" and p.array[0] == b"\xff\xd8\xffjpeg"


def test_empty_bytes_rejected() -> None:
    with pytest.raises(InvalidInputError, match="empty"):
        prepare_image(b"")


def test_rgb_array_sent_raw(rgb: np.ndarray) -> None:
    p = prepare_image(rgb)
    assert p.input_name == "image_raw"
    assert p.array.dtype == np.uint8 and p.array.flags.c_contiguous
    np.testing.assert_array_equal(p.array, rgb)
    assert p.image_size == (6, 8)


def test_bgr_flag_swaps_channels(rgb: np.ndarray) -> None:
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    np.testing.assert_array_equal(prepare_image(bgr, channel_order="bgr").array, rgb)


def test_cv2_imread_with_bgr_flag_equals_file_pixels(png_file: Path, rgb: np.ndarray) -> None:
    np.testing.assert_array_equal(prepare_image(cv2.imread(str(png_file)), channel_order="bgr").array, rgb)


def test_bad_channel_order_rejected(rgb: np.ndarray) -> None:
    with pytest.raises(InvalidInputError, match="channel_order"):
        prepare_image(rgb, channel_order="gbr")


@pytest.mark.parametrize("shape", [(6, 8), (6, 8, 1)])
def test_grayscale_becomes_rgb(shape) -> None:
    gray = np.arange(48, dtype=np.uint8).reshape(shape)
    out = prepare_image(gray).array
    assert out.shape == (6, 8, 3)
    np.testing.assert_array_equal(out[..., 0], gray.reshape(6, 8))
    np.testing.assert_array_equal(out[..., 2], gray.reshape(6, 8))


def test_rgba_drops_alpha(rgb: np.ndarray) -> None:
    rgba = np.concatenate([rgb, np.full((6, 8, 1), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(prepare_image(rgba).array, rgb)


def test_bgra_drops_alpha_and_swaps(rgb: np.ndarray) -> None:
    bgra = np.concatenate([rgb[:, :, ::-1], np.full((6, 8, 1), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(prepare_image(bgra, channel_order="bgr").array, rgb)


def test_non_contiguous_array_made_contiguous(rgb: np.ndarray) -> None:
    out = prepare_image(rgb[:, ::2]).array
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, rgb[:, ::2])


def test_float_array_rejected() -> None:
    with pytest.raises(InvalidInputError, match="uint8"):
        prepare_image(np.zeros((4, 4, 3), np.float32))


@pytest.mark.parametrize("shape", [(4, 4, 2), (4, 4, 3, 1), (4,), (0, 4, 3)])
def test_bad_shapes_rejected(shape) -> None:
    with pytest.raises(InvalidInputError):
        prepare_image(np.zeros(shape, np.uint8))


def test_unsupported_type_rejected() -> None:
    with pytest.raises(InvalidInputError, match="unsupported image type"):
        prepare_image(12345)


def test_pil_images_become_rgb(rgb: np.ndarray) -> None:
    Image = pytest.importorskip("PIL.Image")
    np.testing.assert_array_equal(prepare_image(Image.fromarray(rgb)).array, rgb)
    rgba = Image.fromarray(np.concatenate([rgb, np.full((6, 8, 1), 9, np.uint8)], axis=2), "RGBA")
    np.testing.assert_array_equal(prepare_image(rgba).array, rgb)
    gray = Image.fromarray(rgb[..., 1])
    assert prepare_image(gray).array.shape == (6, 8, 3)


def test_load_image_returns_rgb(png_file: Path, rgb: np.ndarray) -> None:
    np.testing.assert_array_equal(load_image(png_file), rgb)


def test_load_image_rejects_undecodable(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"definitely not a jpeg")
    with pytest.raises(InvalidInputError, match="decodable"):
        load_image(bad)


def test_to_rgb_array_decodes_bytes(png_file: Path, rgb: np.ndarray) -> None:
    np.testing.assert_array_equal(to_rgb_array(png_file.read_bytes()), rgb)
    with pytest.raises(InvalidInputError):
        to_rgb_array(b"garbage")
