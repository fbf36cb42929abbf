"""Bad input gets INVALID_ARG with a message naming the problem, and the server keeps serving."""

from __future__ import annotations

import io
import re
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.server

MODEL = "segment_everything"
OUTPUTS = ["boxes", "scores", "masks_rle", "image_size"]


def _image(data: bytes) -> dict:
    return {
        "image": (np.array([data], np.object_), "BYTES"),
        "max_prompts": (np.array([2], np.int32), "INT32"),
    }


def _encoded(image: np.ndarray, ext: str) -> bytes:
    ok, data = cv2.imencode(ext, image)
    assert ok
    return data.tobytes()


def _huge_png_header() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = (30000).to_bytes(4, "big") * 2
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


BAD_REQUESTS = {
    "empty bytes": (lambda b: _image(b""), "empty"),
    "truncated jpeg": (lambda b: _image(b[: len(b) // 2]), "truncated"),
    "corrupt jpeg": (
        lambda b: _image(b[:200] + bytes(range(256)) * 40),
        "truncated|corrupt|not a recognised",
    ),
    "text file": (lambda b: _image(b"id,name\n1,bus\n"), "not a recognised image"),
    "1x1 image": (lambda b: _image(_encoded(np.zeros((1, 1, 3), np.uint8), ".png")), "at least 8"),
    "30000x30000 header": (lambda b: _image(_huge_png_header()), "30000x30000"),
    "raw float32 pixels": (lambda b: {"image_raw": (np.zeros((16, 16, 3), np.float32), "FP32")}, "data-type"),
    "raw 4-channel pixels": (
        lambda b: {"image_raw": (np.zeros((16, 16, 4), np.uint8), "UINT8")},
        "shape|dims",
    ),
    "raw 2-d pixels": (lambda b: {"image_raw": (np.zeros((16, 16), np.uint8), "UINT8")}, "shape|dims"),
    "no image": (lambda b: {"max_prompts": (np.array([2], np.int32), "INT32")}, "exactly one of"),
    "both images": (
        lambda b: {**_image(b), "image_raw": (np.zeros((16, 16, 3), np.uint8), "UINT8")},
        "exactly one of",
    ),
    "conf 1.5": (
        lambda b: {**_image(b), "conf_threshold": (np.array([1.5], np.float32), "FP32")},
        "conf_threshold",
    ),
    "iou 0": (
        lambda b: {**_image(b), "iou_threshold": (np.array([0.0], np.float32), "FP32")},
        "iou_threshold",
    ),
    "max_prompts 0": (
        lambda b: {**_image(b), "max_prompts": (np.array([0], np.int32), "INT32")},
        "max_prompts",
    ),
    "output format": (
        lambda b: {**_image(b), "output_format": (np.array([b"jpeg"], np.object_), "BYTES")},
        "output_format",
    ),
    "boxes wrong shape": (
        lambda b: {**_image(b), "boxes": (np.zeros((2, 3), np.float32), "FP32")},
        "boxes|dims",
    ),
    "boxes inverted": (
        lambda b: {**_image(b), "boxes": (np.array([[50, 50, 10, 10]], np.float32), "FP32")},
        "x1 <= x2",
    ),
    "points without labels": (
        lambda b: {**_image(b), "points": (np.zeros((1, 1, 2), np.float32), "FP32")},
        "point_labels",
    ),
}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_is_invalid_arg_with_a_message(triton_server, raw_infer, bus_bytes, case, protocol):
    make, message = BAD_REQUESTS[case]
    with pytest.raises(InferenceServerException) as info:
        raw_infer(triton_server, MODEL, make(bus_bytes), OUTPUTS, protocol=protocol)
    status = str(info.value.status())
    assert status in ("400", "StatusCode.INVALID_ARGUMENT"), (status, str(info.value))
    assert re.search(message, str(info.value), re.IGNORECASE), str(info.value)


def test_server_keeps_serving_after_bad_input(triton_server, raw_infer, bus_bytes):
    for make, _ in BAD_REQUESTS.values():
        with pytest.raises(InferenceServerException):
            raw_infer(triton_server, MODEL, make(bus_bytes), OUTPUTS)
    result = raw_infer(triton_server, MODEL, _image(bus_bytes), OUTPUTS)
    assert len(result["boxes"]) == 2
    assert list(result["image_size"]) == [1080, 810]


@pytest.mark.parametrize(
    "convert",
    [
        lambda bgr: cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY),
        lambda bgr: cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA),
        lambda bgr: bgr.astype(np.uint16) * 257,
    ],
    ids=["grayscale", "rgba", "16-bit"],
)
def test_png_variants_are_converted_not_refused(triton_server, raw_infer, sample_images, convert):
    bgr = cv2.imread(str(sample_images[1]))
    plain = raw_infer(triton_server, MODEL, _image(_encoded(bgr, ".png")), OUTPUTS)
    variant = raw_infer(triton_server, MODEL, _image(_encoded(convert(bgr), ".png")), OUTPUTS)
    assert list(variant["image_size"]) == list(bgr.shape[:2])
    if convert(bgr).dtype == np.uint16 or (convert(bgr).ndim == 3 and convert(bgr).shape[2] == 4):
        np.testing.assert_array_equal(variant["boxes"], plain["boxes"])


def test_zero_detections_is_an_empty_result(triton_server, raw_infer, bus_bytes):
    inputs = {**_image(bus_bytes), "conf_threshold": (np.array([0.9999], np.float32), "FP32")}
    result = raw_infer(triton_server, MODEL, inputs, OUTPUTS, protocol="grpc")
    assert result["boxes"].shape == (0, 4)
    assert result["scores"].shape == (0,)
    assert len(result["masks_rle"]) == 0
    assert list(result["image_size"]) == [1080, 810]
