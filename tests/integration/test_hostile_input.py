"""Hostile input against the real server: every case gets a clean INVALID_ARG naming the input (or a correct
result where accepting is right), the server stays ready with every model stub alive after each case, its
memory stays bounded, and it answers a good request at the end.

Three groups of cases, sent raw (``raw_infer``: no client-side validation), over HTTP and gRPC where cheap:

* ``file``: decompression bombs (headers announcing huge sizes over a few bytes, a real zero-filled PNG that
  inflates to 400 MB), truncated files of each format, polyglots, extreme aspect ratios, multi-frame, 16-bit,
  CMYK and palette images, empty and text data (``hostile_files.py`` makes them);
* ``tensor``: every input of ``segment_everything`` with a wrong datatype and a wrong shape, NaN/inf, huge
  counts, prompts outside the image, contradicting inputs;
* ``direct``: the internal models called directly (``image_encoder``, ``prompt_decoder``,
  ``interactive_decoder``, ``object_discovery``), whose own guards must hold without the pipeline in front.

The results table (case, input, verdict, message, time) and the peak memory of tritonserver and its stubs
are written to ``$HOSTILE_INPUT_REPORT`` (default ``work/hostile-input/results.md``); docs/hostile-input.md
shows a committed run. A fresh server of its own (its memory is the suite's, whatever ran before), small
images, tiny ``max_prompts``.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import hostile_files as hf
import numpy as np
import psutil
import pytest
from tritonclient.utils import InferenceServerException

import segment_everything_contract as contract

pytestmark = pytest.mark.server

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL = contract.PIPELINE_MODEL
OUTPUTS = ["boxes", "scores", "masks_rle", "image_size"]
PEAK_RSS_LIMIT = 4 * 2**30
BOTH = ("http", "grpc")
HTTP = ("http",)  # payloads of tens of MB or full pipeline runs: one protocol is enough

# --------------------------------------------------------------------------------------------- the cases


def t(array: np.ndarray, datatype: str | None = None) -> tuple[np.ndarray, str] | np.ndarray:
    """An input tensor, optionally sent with a deliberately given Triton datatype."""
    return array if datatype is None else (array, datatype)


def f32(values) -> np.ndarray:
    """FP32 array of at least one axis (a scalar becomes shape [1])."""
    return np.atleast_1d(np.asarray(values, np.float32))


def image_input(data: bytes) -> dict:
    return {"image": (np.array([data], np.object_), "BYTES")}


def segment(data: bytes, **extra) -> dict:
    """A segment_everything request with encoded image bytes and max_prompts 1."""
    return {**image_input(data), "max_prompts": np.array([1], np.int32), **extra}


GOOD_BOX = f32([[4, 4, 40, 30]])


def seg_any(data: bytes | None = None, **extra) -> dict:
    """A SegAny request on the small PNG picture (its embedding is cached by the encoder after the first); an
    input given as None is left out."""
    inputs = {**image_input(data if data is not None else hf.good("PNG")), "boxes": GOOD_BOX, **extra}
    return {k: v for k, v in inputs.items() if v is not None}


@dataclass(frozen=True)
class Case:
    """One hostile request and what must come back.

    ``expect``: a regex the refusal message must match (the problem), ``None`` when the request must succeed
    (then ``check`` validates the result). ``names``: a regex for the input the message must name.
    """

    id: str
    group: str
    model: str
    what: str
    inputs: Callable[[], dict]
    expect: str | None
    names: str | None = None
    protocols: tuple[str, ...] = BOTH
    outputs: tuple[str, ...] | None = tuple(OUTPUTS)
    check: Callable[[dict], None] | None = None


CASES: list[Case] = []


def case(*args, **kwargs) -> None:
    CASES.append(Case(*args, **kwargs))


def image_size_is(h: int, w: int) -> Callable[[dict], None]:
    def check(result: dict) -> None:
        assert list(result["image_size"]) == [h, w]
        assert len(result["masks_rle"]) == 1

    return check


# --- (a) files --------------------------------------------------------------------------------------------

PIXELS = r"pixels, over the limit of 64000000 \(max_image_pixels\)"
ASPECT = r"aspect ratio of \d+:1, over the limit of 100:1 \(max_aspect_ratio\)"
IMAGE = r"(?<![\w-])image(?![\w-])"  # the word, not "end-of-image"

for fmt, make, size in [
    ("PNG", hf.png_header_bomb, "100000x100000"),
    ("JPEG", hf.jpeg_header_bomb, "65000x65000"),
    ("GIF", hf.gif_header_bomb, "65535x65535"),
    ("WebP", hf.webp_header_bomb, "16384x16384"),
    ("TIFF", hf.tiff_header_bomb, "100000x100000"),
    ("BMP", hf.bmp_header_bomb, "50000x50000"),
]:
    case(
        f"bomb-header-{fmt.lower()}",
        "file",
        MODEL,
        f"{fmt} header announcing {size}, {len(make())} bytes",
        lambda make=make: segment(make()),
        rf"image is {size} = \d+ {PIXELS}",
        IMAGE,
    )
case(
    "bomb-png-zeros-20000x20000",
    "file",
    MODEL,
    "real PNG, 20000x20000 zeros (400 MB inflated) in 389 kB",
    lambda: segment(hf.zeros_png(20000, 20000)),
    rf"image is 20000x20000 = 400000000 {PIXELS}",
    IMAGE,
)
case(
    "bomb-png-zeros-at-the-limit",
    "file",
    MODEL,
    "real PNG, 8000x8000 zeros = exactly max_image_pixels, 62 kB: accepted, memory bounded",
    lambda: seg_any(hf.zeros_png(8000, 8000)),
    None,
    check=image_size_is(8000, 8000),
    protocols=HTTP,
)
for fmt in ("JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP"):
    for cut in ("half", "3/4"):

        def truncated(fmt=fmt, cut=cut) -> dict:
            data = hf.good(fmt)
            return segment(data[: len(data) // 2 if cut == "half" else len(data) * 3 // 4])

        message = {
            "JPEG": "not a recognised image" if cut == "half" else "JPEG data is truncated",
            "WEBP": "not a recognised image|WEBP data is corrupt or truncated",
        }.get(fmt, f"{fmt} data is corrupt or truncated")
        case(
            f"truncated-{fmt.lower()}-{cut.replace('/', 'of')}",
            "file",
            MODEL,
            f"{fmt} cut at {cut} of its bytes",
            truncated,
            message,
            IMAGE,
        )
case(
    "polyglot-jpeg-zip",
    "file",
    MODEL,
    "complete JPEG with a ZIP archive appended",
    lambda: seg_any(hf.jpeg_with(hf.zip_archive())),
    None,
    check=image_size_is(*hf.SIDE),
    protocols=HTTP,
)
case(
    "polyglot-jpeg-html",
    "file",
    MODEL,
    "complete JPEG with an HTML page appended",
    lambda: seg_any(hf.jpeg_with(hf.HTML)),
    None,
    check=image_size_is(*hf.SIDE),
    protocols=HTTP,
)
case(
    "polyglot-gif-magic-script",
    "file",
    MODEL,
    "GIF89a magic followed by a script",
    lambda: segment(hf.gif_with_script()),
    "not a recognised image",
    IMAGE,
)
case(
    "png-lying-header",
    "file",
    MODEL,
    "PNG whose IHDR says 4000x3000, data for 16x16",
    lambda: segment(hf.png_lying_header()),
    "PNG data is corrupt or truncated",
    IMAGE,
)
case(
    "png-bad-crc",
    "file",
    MODEL,
    "PNG with a wrong IHDR checksum",
    lambda: segment(hf.png_bad_crc()),
    "not a recognised image",
    IMAGE,
)
case(
    "aspect-png-8x8000000",
    "file",
    MODEL,
    "real PNG 8 x 8,000,000 (70 kB)",
    lambda: segment(hf.zeros_png(8, 8_000_000)),
    rf"image is 8x8000000, an {ASPECT}",
    IMAGE,
)
case(
    "aspect-jpeg-65000x8",
    "file",
    MODEL,
    "real JPEG 65000 x 8",
    lambda: segment(hf.jpeg_wide()),
    rf"image is 65000x8, an {ASPECT}",
    IMAGE,
)
case(
    "aspect-raw-8x8000000",
    "file",
    MODEL,
    "image_raw 8 x 8,000,000 x 3 (192 MB)",
    lambda: {"image_raw": np.zeros((8_000_000, 8, 3), np.uint8)},
    rf"image is 8x8000000, an {ASPECT}",
    IMAGE,
    protocols=HTTP,
)
for fmt in ("GIF", "TIFF", "WEBP"):
    case(
        f"multi-frame-{fmt.lower()}",
        "file",
        MODEL,
        f"3-frame {fmt}: the first frame is segmented",
        lambda fmt=fmt: seg_any(
            hf.multi_frame(fmt), output_format=(np.array([b"logits"], np.object_), "BYTES")
        ),
        None,
        protocols=HTTP,
        outputs=("image_size", "masks_rle", "low_res_logits"),
        check=lambda result, fmt=fmt: FIRST_FRAME_CHECKS[fmt](result),
    )
for name, make, what in [
    ("png-16-bit", hf.png16, "16-bit RGB PNG"),
    ("tiff-16-bit", hf.tiff16, "16-bit RGB TIFF"),
    ("jpeg-cmyk", hf.cmyk_jpeg, "CMYK JPEG"),
    ("png-palette", hf.palette_png, "palette PNG"),
]:
    case(
        name,
        "file",
        MODEL,
        what,
        lambda make=make: seg_any(make()),
        None,
        protocols=HTTP,
        check=image_size_is(*hf.SIDE),
    )
case("empty", "file", MODEL, "0 bytes", lambda: segment(b""), r"image is empty \(0 bytes\)", IMAGE)
case(
    "text",
    "file",
    MODEL,
    "a CSV text file",
    lambda: segment(b"id,name\n1,bus\n"),
    "not a recognised image",
    IMAGE,
)
case(
    "unsupported-ppm",
    "file",
    MODEL,
    "a valid PPM image",
    lambda: segment(hf.unsupported_format()),
    "unsupported image format PPM",
    IMAGE,
)
case(
    "tiny-1x1",
    "file",
    MODEL,
    "1x1 PNG",
    lambda: segment(hf.cv2_bytes(np.zeros((1, 1, 3), np.uint8), ".png")),
    "both sides must be at least 8",
    IMAGE,
)
case(
    "two-images-in-image",
    "file",
    MODEL,
    "'image' holding two files",
    lambda: {"image": (np.array([hf.good("PNG")] * 2, np.object_), "BYTES")},
    r"unexpected shape|image",
    r"'image'",
)


# --- (b) tensors of segment_everything ---------------------------------------------------------------------

#: a wrong datatype per Triton datatype (same shape)
WRONG_TYPE = {"BYTES": "UINT8", "UINT8": "FP32", "INT32": "FP32", "FP32": "INT32", "BOOL": "INT32"}


def valid_value(spec: contract.TensorSpec) -> np.ndarray:
    """A small valid-looking array for any contract input (variable dims -> 1 or 16)."""
    shape = [16 if d == -1 else d for d in spec.dims]
    if spec.datatype == "BYTES":
        return np.array([hf.good("PNG")] * int(np.prod(shape)), np.object_).reshape(shape)
    return np.zeros(shape, spec.numpy_dtype)


def as_type(array: np.ndarray, datatype: str) -> tuple[np.ndarray, str]:
    dtype = contract.TRITON_TO_NUMPY[datatype]
    if datatype == "BYTES":
        return np.array([b"x"] * array.size, np.object_).reshape(array.shape), datatype
    if array.dtype == np.object_:
        return np.zeros(array.shape, dtype), datatype
    return array.astype(dtype), datatype


def wrong_type_and_shape_cases(
    model: str, specs: tuple[contract.TensorSpec, ...], base: Callable[[], dict], batch: bool = False
) -> None:
    for spec in specs:
        bad_type = WRONG_TYPE[spec.datatype]

        def typed(spec=spec, bad_type=bad_type) -> dict:
            value = valid_value(spec)[None] if batch else valid_value(spec)
            return {**base(), spec.name: as_type(value, bad_type)}

        def shaped(spec=spec) -> dict:
            value = valid_value(spec)[None] if batch else valid_value(spec)
            return {**base(), spec.name: (value[None], spec.datatype)}

        group = "tensor" if model == MODEL else "direct"
        case(
            f"{model}-{spec.name}-dtype",
            group,
            model,
            f"'{spec.name}' as {bad_type}",
            typed,
            r"data-?type",
            rf"'{spec.name}'",
            outputs=None,
        )
        case(
            f"{model}-{spec.name}-shape",
            group,
            model,
            f"'{spec.name}' with one more axis",
            shaped,
            r"shape",
            rf"'{spec.name}'",
            outputs=None,
        )


def pipeline_base() -> dict:
    return segment(hf.good("PNG"))


wrong_type_and_shape_cases(MODEL, contract.PIPELINE_INPUTS, pipeline_base)

NAN_BOX = f32([[4, 4, np.nan, 30]])
INF_POINT = np.array([[[np.inf, 5.0]]], np.float32)
ONE_POINT = np.array([[[10.0, 10.0]]], np.float32)
ONE_LABEL = np.array([[1]], np.int32)
TENSOR_CASES = [
    ("nan-box", "boxes with NaN", lambda: seg_any(boxes=NAN_BOX), r"boxes must be finite", "boxes"),
    (
        "inf-box",
        "boxes with inf",
        lambda: seg_any(boxes=f32([[4, 4, np.inf, 30]])),
        r"boxes must be finite",
        "boxes",
    ),
    (
        "nan-point",
        "points with NaN",
        lambda: (
            seg_any(boxes=None)
            | {"points": np.array([[[np.nan, 5.0]]], np.float32), "point_labels": ONE_LABEL}
        ),
        r"points must be finite",
        "points",
    ),
    (
        "inf-point",
        "points with inf",
        lambda: seg_any(boxes=None) | {"points": INF_POINT, "point_labels": ONE_LABEL},
        r"points must be finite",
        "points",
    ),
    (
        "nan-mask-input",
        "mask_input with NaN",
        lambda: seg_any(mask_input=np.full((1, 256, 256), np.nan, np.float32)),
        r"mask_input must be finite",
        "mask_input",
    ),
    (
        "inf-mask-input",
        "mask_input with -inf",
        lambda: seg_any(mask_input=np.full((1, 256, 256), -np.inf, np.float32)),
        r"mask_input must be finite",
        "mask_input",
    ),
    (
        "nan-conf",
        "conf_threshold NaN",
        lambda: pipeline_base() | {"conf_threshold": f32(np.nan)},
        r"conf_threshold must be finite",
        "conf_threshold",
    ),
    (
        "boxes-1001",
        "1001 boxes",
        lambda: seg_any(boxes=np.tile(GOOD_BOX, (1001, 1))),
        r"at most 1000 boxes per request \(max_prompts\), got 1001",
        "boxes",
    ),
    (
        "point-prompts-1001",
        "1001 point prompts",
        lambda: (
            seg_any(boxes=None)
            | {"points": np.full((1001, 1, 2), 5.0, np.float32), "point_labels": np.ones((1001, 1), np.int32)}
        ),
        r"at most 1000 point prompts per request \(max_prompts\), got 1001",
        "point prompts|points",
    ),
    (
        "points-per-prompt-33",
        "one prompt of 33 points",
        lambda: (
            seg_any(boxes=None)
            | {"points": np.full((1, 33, 2), 5.0, np.float32), "point_labels": np.ones((1, 33), np.int32)}
        ),
        r"at most 32 points per prompt \(max_points_per_prompt\), got 33",
        "points",
    ),
    (
        "points-20000",
        "points [1, 20000, 2]",
        lambda: (
            seg_any(boxes=None)
            | {
                "points": np.full((1, 20000, 2), 5.0, np.float32),
                "point_labels": np.ones((1, 20000), np.int32),
            }
        ),
        r"at most 32 points per prompt \(max_points_per_prompt\), got 20000",
        "points",
    ),
    (
        "max-prompts-1001",
        "max_prompts 1001",
        lambda: pipeline_base() | {"max_prompts": np.array([1001], np.int32)},
        r"max_prompts must be in \[1, 1000\], got 1001",
        "max_prompts",
    ),
    (
        "point-outside",
        "a point at (5000, 10) on a 64x48 image",
        lambda: seg_any(boxes=None) | {"points": f32([[[5000.0, 10.0]]]), "point_labels": ONE_LABEL},
        r"point \[0, 0\] = \(5000, 10\) lies outside the 64x48 image",
        "point",
    ),
    (
        "point-negative",
        "a point at (-1, 10)",
        lambda: seg_any(boxes=None) | {"points": f32([[[-1.0, 10.0]]]), "point_labels": ONE_LABEL},
        r"lies outside the 64x48 image",
        "point",
    ),
    (
        "both-images",
        "image and image_raw",
        lambda: seg_any() | {"image_raw": np.zeros((16, 16, 3), np.uint8)},
        r"give exactly one of 'image' .* or 'image_raw'",
        "image_raw",
    ),
    (
        "no-image",
        "settings only",
        lambda: {"max_prompts": np.array([1], np.int32)},
        r"give exactly one of 'image'",
        "image",
    ),
    (
        "mask-input-count",
        "mask_input [2, 256, 256] for one box",
        lambda: seg_any(mask_input=np.zeros((2, 256, 256), np.float32)),
        r"mask_input must have shape \[1, 256, 256\] \(one per prompt\), got \[2, 256, 256\]",
        "mask_input",
    ),
    (
        "mask-input-128",
        "mask_input [1, 128, 128]",
        lambda: seg_any(mask_input=np.zeros((1, 128, 128), np.float32)),
        r"unexpected shape",
        "mask_input",
    ),
    (
        "mask-input-alone",
        "mask_input without prompts",
        lambda: pipeline_base() | {"mask_input": np.zeros((1, 256, 256), np.float32)},
        r"mask_input refines SegAny prompts",
        "mask_input",
    ),
    (
        "boxes-and-points",
        "boxes and points",
        lambda: seg_any() | {"points": ONE_POINT, "point_labels": ONE_LABEL},
        r"not both",
        "boxes.*points",
    ),
    (
        "labels-without-points",
        "point_labels alone",
        lambda: pipeline_base() | {"point_labels": ONE_LABEL},
        r"point_labels given without points",
        "point_labels",
    ),
    (
        "label-5",
        "a point labelled 5",
        lambda: seg_any(boxes=None) | {"points": ONE_POINT, "point_labels": np.array([[5]], np.int32)},
        r"point_labels must be 1 \(foreground\) or 0 \(background\)",
        "point_labels",
    ),
    (
        "labels-shape",
        "point_labels [1, 2] for [1, 1] points",
        lambda: seg_any(boxes=None) | {"points": ONE_POINT, "point_labels": np.ones((1, 2), np.int32)},
        r"point_labels must have shape \[1, 1\], got \[1, 2\]",
        "point_labels",
    ),
    (
        "boxes-inverted",
        "box with x1 > x2",
        lambda: seg_any(boxes=f32([[50, 5, 10, 30]])),
        r"x1 <= x2",
        "boxes",
    ),
    (
        "multimask-segevery",
        "multimask without prompts",
        lambda: pipeline_base() | {"multimask": np.array([True])},
        r"multimask applies to SegAny prompts",
        "multimask",
    ),
    (
        "output-format",
        "output_format 'jpeg'",
        lambda: pipeline_base() | {"output_format": (np.array([b"jpeg"], np.object_), "BYTES")},
        r"output_format must be one of rle, dense, logits, got 'jpeg'",
        "output_format",
    ),
]
RAW = "image_raw"
TENSOR_CASES += [  # the refusals of the former test_bad_input.py
    ("raw-4-channels", "image_raw 16x16x4", lambda: {RAW: np.zeros((16, 16, 4), np.uint8)}, "shape", RAW),
    ("raw-2d", "image_raw 16x16", lambda: {RAW: np.zeros((16, 16), np.uint8)}, "shape", RAW),
    ("raw-4x4", "image_raw 4x4x3", lambda: {RAW: np.zeros((4, 4, 3), np.uint8)}, "at least 8", "image"),
    (
        "conf-1.5",
        "conf_threshold 1.5",
        lambda: pipeline_base() | {"conf_threshold": f32(1.5)},
        r"conf_threshold must be in \[0, 1\), got 1.5",
        "conf_threshold",
    ),
    (
        "iou-0",
        "iou_threshold 0",
        lambda: pipeline_base() | {"iou_threshold": f32(0)},
        r"iou_threshold must be in \(0, 1\], got 0",
        "iou_threshold",
    ),
    (
        "max-prompts-0",
        "max_prompts 0",
        lambda: pipeline_base() | {"max_prompts": np.array([0], np.int32)},
        r"max_prompts must be in \[1, 1000\], got 0",
        "max_prompts",
    ),
    (
        "boxes-3-columns",
        "boxes [2, 3]",
        lambda: seg_any(boxes=np.zeros((2, 3), np.float32)),
        "shape",
        "boxes",
    ),
    (
        "points-without-labels",
        "points, no point_labels",
        lambda: seg_any(boxes=None, points=ONE_POINT),
        r"points need point_labels",
        "point_labels",
    ),
    (
        "corrupt-jpeg",
        "a JPEG header followed by garbage",
        lambda: segment(hf.good("JPEG")[:200] + bytes(range(256)) * 40),
        "truncated|corrupt|not a recognised image",
        IMAGE,
    ),
]
for name, what, make, expect, names in TENSOR_CASES:
    case(name, "tensor", MODEL, what, make, expect, names)
case(
    "box-partly-outside",
    "tensor",
    MODEL,
    "box [-50, -50, 30, 30]: clipped to the image, accepted",
    lambda: seg_any(boxes=f32([[-50, -50, 30, 30]])),
    None,
    protocols=HTTP,
    check=lambda result: np.testing.assert_array_equal(result["boxes"], [[0, 0, 30, 30]]),
)


# --- (c) direct calls to the internal models ------------------------------------------------------------

EMB = np.zeros((1, 256, 64, 64), np.float32)


def decoder_inputs(n: int = 1, p: int = 2, **over) -> dict:
    coords = np.tile(f32([[100, 100], [300, 200]]), (n, (p + 1) // 2, 1))[:, :p]
    labels = np.tile(f32([2, 3]), (n, (p + 1) // 2))[:, :p]
    return {"image_embeddings": EMB, "point_coords": coords, "point_labels": labels, **over}


def interactive_inputs(n: int = 1, p: int = 2, **over) -> dict:
    base = decoder_inputs(n, p)
    base.update(mask_input=np.zeros((n, 1, 256, 256), np.float32), has_mask_input=np.zeros(n, np.float32))
    return {**base, **over}


def encoder_inputs(**over) -> dict:
    return {
        "image": np.zeros((1, 1024, 1024, 3), np.uint8),
        "image_size": np.array([[1024, 768]], np.int32),
        **over,
    }


def coords_with(value: float, n: int = 1) -> np.ndarray:
    coords = decoder_inputs(n)["point_coords"].copy()
    coords[0, 1, 0] = value
    return coords


DEC, INTER = contract.DECODER_MODEL, contract.INTERACTIVE_DECODER_MODEL
ENC, DISC = contract.ENCODER_MODEL, contract.DISCOVERY_MODEL
DEC_OUT, INTER_OUT = ("low_res_masks", "iou_predictions"), ("masks", "iou_predictions")
CAP = 320  # segment_everything's decoder_max_prompts_per_call (tests/test_input_guards.py ties the two)
ICAP = contract.INTERACTIVE_DECODER_MAX_PROMPTS
NAN_EMB = EMB.copy()
NAN_EMB[0, 7, 3, 5] = np.nan
DIRECT_CASES = [
    # image_encoder
    (
        ENC,
        "encoder-size-5000",
        "image_size [0, 5000]",
        lambda: encoder_inputs(image_size=np.array([[0, 5000]], np.int32)),
        r"input 'image_size' must be in \[0, 1024\], got 5000 at \[0, 1\] \(value_ranges\)",
        "image_size",
        HTTP,  # once: Triton's response cache replays a repeated refusal (see below)
    ),
    (
        ENC,
        "encoder-size-negative",
        "image_size [-1024, 1024]",
        lambda: encoder_inputs(image_size=np.array([[-1024, 1024]], np.int32)),
        r"must be in \[0, 1024\], got -1024",
        "image_size",
        ("grpc",),
    ),
    (
        ENC,
        "encoder-batch-5",
        "a batch of 5 canvases (max_batch_size 4)",
        lambda: encoder_inputs(
            image=np.zeros((5, 1024, 1024, 3), np.uint8), image_size=np.full((5, 2), 1024, np.int32)
        ),
        r"batch.size must be <= 4",
        None,
        HTTP,
    ),
    (
        ENC,
        "encoder-canvas-512",
        "image [1, 512, 512, 3]",
        lambda: encoder_inputs(image=np.zeros((1, 512, 512, 3), np.uint8)),
        r"unexpected shape",
        "image",
        BOTH,
    ),
    # prompt_decoder
    (
        DEC,
        "decoder-3000-prompts",
        "3000 box prompts (8.9 GB and an OOM kill before the guards)",
        lambda: decoder_inputs(3000),
        r"input 'point_coords' has shape \[3000, 2, 2\]: axis 0 is 3000, over the limit of 320 \(max_dims",
        "point_coords",
        BOTH,
    ),
    (
        DEC,
        "decoder-321-prompts",
        "one prompt over the per-call cap",
        lambda: decoder_inputs(CAP + 1),
        r"axis 0 is 321, over the limit of 320",
        "point_coords",
        BOTH,
    ),
    (
        DEC,
        "decoder-20000-points",
        "point_coords [1, 20000, 2]",
        lambda: decoder_inputs(1, 20000),
        r"axis 1 is 20000, over the limit of 33",
        "point_coords",
        BOTH,
    ),
    (
        DEC,
        "decoder-34-points",
        "one point over DECODER_MAX_POINTS",
        lambda: decoder_inputs(1, 34),
        r"axis 1 is 34, over the limit of 33",
        "point_coords",
        BOTH,
    ),
    (
        DEC,
        "decoder-3e38",
        "a coordinate of 3e38",
        lambda: decoder_inputs(point_coords=coords_with(3e38)),
        r"input 'point_coords' must be in \[-1024, 2048\], got 3e\+38 at \[0, 1, 0\]",
        "point_coords",
        BOTH,
    ),
    (
        DEC,
        "decoder-coordinate-nan",
        "a NaN coordinate",
        lambda: decoder_inputs(point_coords=coords_with(np.nan)),
        r"input 'point_coords' must be finite .*got nan at \[0, 1, 0\]",
        "point_coords",
        BOTH,
    ),
    (
        DEC,
        "decoder-coordinate-5000",
        "a coordinate of 5000 (outside the frame)",
        lambda: decoder_inputs(point_coords=coords_with(5000)),
        r"got 5000 at \[0, 1, 0\]",
        "point_coords",
        BOTH,
    ),
    (
        DEC,
        "decoder-nan-embedding",
        "a NaN in image_embeddings",
        lambda: decoder_inputs(image_embeddings=NAN_EMB),
        r"input 'image_embeddings' must be finite .*got nan at \[0, 7, 3, 5\]",
        "image_embeddings",
        BOTH,
    ),
    (
        DEC,
        "decoder-label-7",
        "a label of 7",
        lambda: decoder_inputs(point_labels=f32([[2, 7]])),
        r"input 'point_labels' must be in \[-1, 3\], got 7",
        "point_labels",
        BOTH,
    ),
    (
        DEC,
        "decoder-labels-mismatch",
        "point_labels [1, 3] for point_coords [1, 2, 2]",
        lambda: decoder_inputs(point_labels=f32([[2, 3, 1]])),
        r"same length: 'point_coords' axis 1 is 2, 'point_labels' axis 1 is 3",
        "point_coords",
        BOTH,
    ),
    (
        DEC,
        "decoder-rows-mismatch",
        "point_labels [2, 2] for point_coords [1, 2, 2]",
        lambda: decoder_inputs(point_labels=f32([[2, 3], [2, 3]])),
        r"'point_coords' axis 0 is 1, 'point_labels' axis 0 is 2",
        "point_labels",
        BOTH,
    ),
    (
        DEC,
        "decoder-embedding-32",
        "image_embeddings [1, 256, 32, 32]",
        lambda: decoder_inputs(image_embeddings=np.zeros((1, 256, 32, 32), np.float32)),
        r"unexpected shape",
        "image_embeddings",
        BOTH,
    ),
    # interactive_decoder
    (
        INTER,
        "interactive-3000-prompts",
        "3000 prompts",
        lambda: (
            interactive_inputs(1)
            | {
                "point_coords": decoder_inputs(3000)["point_coords"],
                "point_labels": decoder_inputs(3000)["point_labels"],
            }
        ),
        rf"input 'point_coords' has shape \[3000, 2, 2\]: axis 0 is 3000, over the limit of {ICAP}",
        "point_coords",
        BOTH,
    ),
    (
        INTER,
        "interactive-cap-plus-1",
        f"{ICAP + 1} prompts, one over its per-call cap",
        lambda: interactive_inputs(ICAP + 1),
        rf"axis 0 is {ICAP + 1}, over the limit of {ICAP}",
        "point_coords",
        HTTP,
    ),
    (
        INTER,
        "interactive-20000-points",
        "point_coords [1, 20000, 2]",
        lambda: interactive_inputs(1, 20000),
        r"axis 1 is 20000, over the limit of 33",
        "point_coords",
        BOTH,
    ),
    (
        INTER,
        "interactive-3e38",
        "a coordinate of 3e38",
        lambda: interactive_inputs(point_coords=coords_with(3e38)),
        r"'point_coords' must be in \[-1024, 2048\], got 3e\+38",
        "point_coords",
        BOTH,
    ),
    (
        INTER,
        "interactive-nan-embedding",
        "a NaN in image_embeddings",
        lambda: interactive_inputs(image_embeddings=NAN_EMB),
        r"'image_embeddings' must be finite",
        "image_embeddings",
        BOTH,
    ),
    (
        INTER,
        "interactive-nan-mask",
        "a NaN in mask_input",
        lambda: interactive_inputs(mask_input=np.full((1, 1, 256, 256), np.nan, np.float32)),
        r"'mask_input' must be finite .*got nan at \[0, 0, 0, 0\]",
        "mask_input",
        BOTH,
    ),
    (
        INTER,
        "interactive-inf-mask",
        "+inf in mask_input",
        lambda: interactive_inputs(mask_input=np.full((1, 1, 256, 256), np.inf, np.float32)),
        r"'mask_input' must be finite",
        "mask_input",
        BOTH,
    ),
    (
        INTER,
        "interactive-has-mask-2",
        "has_mask_input 2",
        lambda: interactive_inputs(has_mask_input=f32(2)),
        r"'has_mask_input' must be in \[0, 1\], got 2",
        "has_mask_input",
        BOTH,
    ),
    (
        INTER,
        "interactive-mask-128",
        "mask_input [1, 1, 128, 128]",
        lambda: interactive_inputs(mask_input=np.zeros((1, 1, 128, 128), np.float32)),
        r"unexpected shape",
        "mask_input",
        BOTH,
    ),
    (
        INTER,
        "interactive-mask-rows",
        "mask_input for 2 prompts, point_coords for 1",
        lambda: interactive_inputs(mask_input=np.zeros((2, 1, 256, 256), np.float32)),
        r"same length: .*'mask_input' axis 0 is 2",
        "mask_input",
        BOTH,
    ),
    # object_discovery (a Python model with its own checks)
    (
        DISC,
        "discovery-4096",
        "a 4096x4096 letterbox (48 MB)",
        lambda: {"images": np.zeros((4096, 4096, 3), np.uint8)},
        r"'images' must be a letterbox with sides multiples of 32 in \[32, 1024\], got 4096x4096",
        "images",
        HTTP,
    ),
    (
        DISC,
        "discovery-100",
        "a 100x100 image (not a multiple of 32)",
        lambda: {"images": np.zeros((100, 100, 3), np.uint8)},
        r"multiples of 32 .*got 100x100",
        "images",
        BOTH,
    ),
    (
        DISC,
        "discovery-float",
        "images as FP32",
        lambda: {"images": np.zeros((64, 64, 3), np.float32)},
        r"data-?type",
        "images",
        BOTH,
    ),
    (
        DISC,
        "discovery-conf-nan",
        "conf_threshold NaN",
        lambda: {"images": np.zeros((64, 64, 3), np.uint8), "conf_threshold": f32(np.nan)},
        r"conf_threshold must be finite",
        "conf_threshold",
        BOTH,
    ),
]
for model, name, what, make, expect, names, protocols in DIRECT_CASES:
    outputs = {DEC: DEC_OUT, INTER: INTER_OUT, ENC: ("image_embeddings",), DISC: ("boxes",)}[model]
    case(name, "direct", model, what, make, expect, names, protocols=protocols, outputs=outputs)


def _decoder_ok(result: dict) -> None:
    assert result["low_res_masks"].shape == (1, 1, 256, 256)
    assert np.isfinite(result["low_res_masks"]).all()


def _interactive_ok(result: dict) -> None:
    assert result["masks"].shape == (1, 4, 256, 256)
    assert np.isfinite(result["masks"]).all()


case(
    "decoder-ok",
    "direct",
    DEC,
    "one box prompt",
    lambda: decoder_inputs(1),
    None,
    outputs=DEC_OUT,
    check=_decoder_ok,
)
case(
    "decoder-ok-33-points",
    "direct",
    DEC,
    "one prompt of 33 points (the limit), edges of the frame",
    lambda: decoder_inputs(1, 33, point_coords=np.tile(f32([[-1024, 2048]]), (1, 33, 1))),
    None,
    outputs=DEC_OUT,
    check=_decoder_ok,
    protocols=HTTP,
)
case(
    "encoder-size-0",
    "direct",
    ENC,
    "image_size [0, 0]: an empty valid region (what the config's zero-filled warm-up sends), accepted",
    lambda: encoder_inputs(image_size=np.array([[0, 0]], np.int32)),
    None,
    outputs=("image_embeddings",),
    protocols=HTTP,
    check=lambda result: np.isfinite(result["image_embeddings"]).all(),
)
case(
    "interactive-ok",
    "direct",
    INTER,
    "one box prompt with a previous mask",
    lambda: interactive_inputs(
        1, mask_input=np.full((1, 1, 256, 256), -3.0, np.float32), has_mask_input=f32(1)
    ),
    None,
    outputs=INTER_OUT,
    check=_interactive_ok,
)

wrong_type_and_shape_cases(ENC, contract.ENCODER_INPUTS, encoder_inputs, batch=True)
wrong_type_and_shape_cases(DEC, contract.DECODER_INPUTS, decoder_inputs)
wrong_type_and_shape_cases(INTER, contract.INTERACTIVE_DECODER_INPUTS, interactive_inputs)
wrong_type_and_shape_cases(
    DISC, contract.DISCOVERY_INPUTS, lambda: {"images": np.zeros((64, 64, 3), np.uint8)}
)

assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"


# ---------------------------------------------------------------------------------------------- first frames


def _first_frame_check(fmt: str) -> Callable[[dict], None]:
    """The served logits of a multi-frame file equal those of its first frame sent as raw pixels (the
    encoder's cache makes the second request cheap)."""

    def check(result: dict) -> None:
        assert list(result["image_size"]) == list(hf.SIDE)
        first = hf.first_frame(fmt)
        if fmt != "WEBP":  # (lossless frames: the first frame's pixels are known exactly)
            from mobilesamv2.processing.image import decode_image

            np.testing.assert_array_equal(decode_image(hf.multi_frame(fmt)), first)
        raw = {
            "image_raw": first,
            "boxes": GOOD_BOX,
            "output_format": (np.array([b"logits"], np.object_), "BYTES"),
        }
        expected = RUNNER.call(MODEL, raw, ["low_res_logits"])["low_res_logits"]
        np.testing.assert_allclose(result["low_res_logits"], expected, atol=1e-4)

    return check


FIRST_FRAME_CHECKS = {fmt: _first_frame_check(fmt) for fmt in ("GIF", "TIFF", "WEBP")}


# ---------------------------------------------------------------------------------------------- the watcher


def _code(exc: InferenceServerException) -> str:
    status = str(exc.status())
    return {
        "400": "INVALID_ARG",
        "StatusCode.INVALID_ARGUMENT": "INVALID_ARG",
        "500": "INTERNAL",
        "StatusCode.INTERNAL": "INTERNAL",
        "503": "UNAVAILABLE",
        "StatusCode.UNAVAILABLE": "UNAVAILABLE",
    }.get(status, status)


@dataclass
class Row:
    case: Case
    protocol: str
    verdict: str
    message: str
    seconds: float
    healthy: bool
    rss_after: int = 0
    outcome: str = "?"
    peak_during: int = 0  # the process tree's largest summed RSS sampled while this case ran
    peak_by_process: dict[str, int] = field(default_factory=dict)


@dataclass
class Runner:
    """Sends the cases, samples the server's memory in the background, records every verdict."""

    server: object
    raw_infer: object
    rows: list[Row] = field(default_factory=list)
    peak_rss: int = 0
    start_rss: int = 0
    stubs: dict[int, str] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _case_peak: int = 0
    _case_peak_by: dict[str, int] = field(default_factory=dict)

    def processes(self) -> list[psutil.Process]:
        root = psutil.Process(self.server.pid)
        return [root, *root.children(recursive=True)]

    def rss_by_process(self) -> dict[str, int]:
        out = {}
        for process in self.processes():
            with contextlib.suppress(psutil.Error):  # a process may end between listing and reading
                out[self.stubs.get(process.pid, "tritonserver")] = process.memory_info().rss
        return out

    def rss(self) -> int:
        return sum(self.rss_by_process().values())

    def _sample(self) -> None:
        by_process = self.rss_by_process()
        total = sum(by_process.values())
        self.peak_rss = max(self.peak_rss, total)
        if total > self._case_peak:
            self._case_peak, self._case_peak_by = total, by_process

    def start(self) -> None:
        self.stubs = {p.pid: " ".join(p.cmdline()[-3:]) for p in self.processes()[1:]}
        self.start_rss = self.peak_rss = self.rss()

        def sample() -> None:
            while not self._stop.wait(0.05):
                self._sample()

        threading.Thread(target=sample, daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self.peak_rss = max(self.peak_rss, self.rss())

    def call(self, model: str, inputs: dict, outputs: list[str] | None, protocol: str = "http") -> dict:
        return self.raw_infer(self.server, model, inputs, outputs, protocol=protocol, timeout=300)

    def healthy(self) -> bool:
        """Ready, and every model stub of the start still alive (Triton 24.10 does not restart a dead stub and
        its readiness does not notice)."""
        try:
            url = f"http://{self.server.http_url}/v2/health/ready"
            with urllib.request.urlopen(url, timeout=10) as response:
                ready = response.status == 200
        except OSError:
            ready = False
        alive = all(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in self.stubs)
        return ready and alive

    def run(self, case: Case, protocol: str) -> tuple[Row, dict | None]:
        inputs = case.inputs()
        self._case_peak, self._case_peak_by = 0, {}
        started = time.perf_counter()
        result, verdict, message = None, "ok", ""
        try:
            result = self.call(case.model, inputs, list(case.outputs) if case.outputs else None, protocol)
        except InferenceServerException as exc:
            verdict, message = _code(exc), str(exc.message())
        seconds = time.perf_counter() - started
        self._sample()
        row = Row(case, protocol, verdict, message, seconds, self.healthy(), self.rss())
        row.peak_during, row.peak_by_process = self._case_peak, self._case_peak_by
        self.rows.append(row)
        return row, result


RUNNER: Runner  # set by the module fixture (the first-frame checks call the server too)


@pytest.fixture(scope="module")
def runner(built_repository, triton_server_factory, raw_infer):
    """A server of its own, fresh: its memory during the suite is the suite's, whatever ran before."""
    global RUNNER
    server = triton_server_factory(built_repository, startup_timeout=300)
    RUNNER = Runner(server, raw_infer)
    RUNNER.start()
    yield RUNNER
    RUNNER.stop()
    write_report(RUNNER)
    server.stop()


# -------------------------------------------------------------------------------------------------- the tests


def _params():
    for c in CASES:
        for protocol in c.protocols:
            yield pytest.param(c, protocol, id=f"{c.group}-{c.id}-{protocol}")


@pytest.mark.parametrize("case, protocol", list(_params()))
def test_hostile_case(runner, case: Case, protocol: str):
    row, result = runner.run(case, protocol)
    try:
        assert row.healthy, f"server not ready or a model stub died after {case.id}: {row.message}"
        if case.expect is None:
            assert row.verdict == "ok", f"{case.id}: expected a result, got {row.verdict}: {row.message}"
            if case.check:
                case.check(result)
        else:
            assert row.verdict == "INVALID_ARG", f"{case.id}: {row.verdict}: {row.message}"
            assert re.search(case.expect, row.message, re.IGNORECASE), row.message
            assert "internal error" not in row.message
            if case.names:
                assert re.search(case.names, row.message), (
                    f"the message does not name {case.names}: {row.message}"
                )
        row.outcome = "pass"
    except Exception:
        row.outcome = "FAIL"
        raise


def test_server_healthy_after_every_case_and_answers_a_good_request(runner, bus_bytes):
    assert runner.rows, "run the whole module: the cases come first"
    assert all(row.healthy for row in runner.rows), [r.case.id for r in runner.rows if not r.healthy]
    result = runner.call(MODEL, {**image_input(bus_bytes), "max_prompts": np.array([2], np.int32)}, OUTPUTS)
    assert len(result["boxes"]) == 2
    assert list(result["image_size"]) == [1080, 810]
    assert runner.healthy()


def test_peak_memory_stays_bounded(runner):
    runner.stop()
    print(
        f"\ntritonserver + {len(runner.stubs)} stubs: {runner.start_rss / 2**30:.2f} GiB at the start, "
        f"peak {runner.peak_rss / 2**30:.2f} GiB during {len(runner.rows)} hostile requests"
    )
    spike = max(runner.rows, key=lambda r: r.peak_during)
    by_process = {k: round(v / 2**30, 2) for k, v in spike.peak_by_process.items()}
    assert runner.peak_rss < PEAK_RSS_LIMIT, (
        f"peak {runner.peak_rss / 2**30:.2f} GiB; the largest while a case ran: "
        f"{spike.peak_during / 2**30:.2f} GiB during {spike.case.id} ({spike.protocol}): {by_process}"
    )


def test_there_are_at_least_40_distinct_cases():
    assert len(CASES) >= 40
    assert {c.group for c in CASES} == {"file", "tensor", "direct"}


def test_a_repeated_refusal_is_refused_again(runner):
    """Triton 2.51's response cache would replay a refused response as a success without outputs, so the
    encoder has none; the pipeline's own embedding cache stores successes only."""
    canvas = np.zeros((1, 1024, 1024, 3), np.uint8)
    canvas[0, 0, 0] = 7  # a cache key of its own
    inputs = {"image": canvas, "image_size": np.array([[4000, 0]], np.int32)}
    verdicts = []
    for _ in range(2):
        try:
            result = runner.call(ENC, inputs, ["image_embeddings"])
            verdicts.append(f"ok, outputs {sorted(k for k, v in result.items() if v is not None)}")
        except InferenceServerException as exc:
            verdicts.append(_code(exc))
    assert verdicts == ["INVALID_ARG", "INVALID_ARG"], verdicts


# --------------------------------------------------------------------------------- kept from test_bad_input


def _encoded(image: np.ndarray, ext: str) -> bytes:
    ok, data = cv2.imencode(ext, image)
    assert ok
    return data.tobytes()


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
    plain = raw_infer(triton_server, MODEL, segment(_encoded(bgr, ".png")), OUTPUTS)
    variant = raw_infer(triton_server, MODEL, segment(_encoded(convert(bgr), ".png")), OUTPUTS)
    assert list(variant["image_size"]) == list(bgr.shape[:2])
    if convert(bgr).dtype == np.uint16 or (convert(bgr).ndim == 3 and convert(bgr).shape[2] == 4):
        np.testing.assert_array_equal(variant["boxes"], plain["boxes"])


def test_zero_detections_is_an_empty_result(triton_server, raw_infer, bus_bytes):
    inputs = {**segment(bus_bytes), "conf_threshold": f32(0.9999)}
    result = raw_infer(triton_server, MODEL, inputs, OUTPUTS, protocol="grpc")
    assert result["boxes"].shape == (0, 4)
    assert result["scores"].shape == (0,)
    assert len(result["masks_rle"]) == 0
    assert list(result["image_size"]) == [1080, 810]


def test_orientation_6_jpeg_gives_the_turned_image_size(triton_server, raw_infer):
    """EXIF orientation as cv2.imread applies it: a 64x48 JPEG tagged 6 (quarter turn) is 48 wide, 64 high."""
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6
    data = hf.pil_bytes(Image.fromarray(hf.picture()), "JPEG", exif=exif.tobytes(), quality=90)
    result = raw_infer(triton_server, MODEL, seg_any(data, boxes=f32([[2, 2, 40, 60]])), OUTPUTS)
    assert list(result["image_size"]) == [hf.SIDE[1], hf.SIDE[0]]
    np.testing.assert_array_equal(result["boxes"], [[2, 2, 40, 60]])  # inside 48x64, not clipped to 64x48


# --------------------------------------------------------------------------------------------------- report


def _cell(text: str, width: int = 110) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= width else text[: width - 3] + "..."


def write_report(runner: Runner) -> None:
    path = Path(os.environ.get("HOSTILE_INPUT_REPORT") or REPO_ROOT / "work" / "hostile-input" / "results.md")
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = runner.rows
    if not rows:
        return
    biggest = max(rows, key=lambda r: r.rss_after)
    spike = max(rows, key=lambda r: r.peak_during)
    spike_by = ", ".join(
        f"{name.split()[1] if len(name.split()) > 1 else name} {rss / 2**30:.2f}"
        for name, rss in sorted(spike.peak_by_process.items(), key=lambda kv: -kv[1])
    )
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.outcome] = counts.get(row.outcome, 0) + 1
    lines = [
        "# Hostile-input suite: results",
        "",
        f"Generated by `tests/integration/test_hostile_input.py` on {time.strftime('%Y-%m-%d %H:%M %Z')}: "
        f"{len({r.case.id for r in rows})} cases, {len(rows)} requests "
        f"({', '.join(f'{n} {k}' for k, n in sorted(counts.items()))}). Server: the pip-installed "
        "tritonserver 2.51 on CPU serving the test repository (random weights).",
        "",
        f"Peak RSS of tritonserver and its {len(runner.stubs)} model stubs during the suite: "
        f"**{runner.peak_rss / 2**30:.2f} GiB** "
        f"(at the start {runner.start_rss / 2**30:.2f} GiB; "
        f"limit asserted {PEAK_RSS_LIMIT / 2**30:.0f} GiB). "
        f"The largest RSS right after a case: {biggest.rss_after / 2**30:.2f} GiB, after "
        f"`{biggest.case.id}` ({biggest.protocol}). The largest peak while a case ran: "
        f"{spike.peak_during / 2**30:.2f} GiB, during `{spike.case.id}` ({spike.protocol}; GiB per process: "
        f"{spike_by}). "
        "Every case was followed by a readiness check and a "
        f"check that every stub process is alive: {sum(r.healthy for r in rows)}/{len(rows)} healthy.",
        "",
        "| # | group | case | proto | model | input | verdict | message (excerpt) | ms | outcome |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, row in enumerate(rows, 1):
        c = row.case
        lines.append(
            f"| {i} | {c.group} | {c.id} | {row.protocol} | {c.model} | {_cell(c.what, 70)} | "
            f"{row.verdict} | "
            f"{_cell(row.message, 170)} | {row.seconds * 1e3:.0f} | {row.outcome} |"
        )
    path.write_text("\n".join(lines) + "\n")
