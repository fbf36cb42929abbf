"""Request validation of the ``segment_everything`` pipeline, free of Triton so it is unit-testable.

Everything a caller can get wrong is checked here and raised as :class:`BadRequest` (answered with Triton's
INVALID_ARG and this message); the server keeps serving.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..processing import boxes as box_ops
from ..processing.image import (
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_MIN_IMAGE_SIDE,
    InvalidImageError,
    decode_image,
    validate_rgb_array,
)

OUTPUT_FORMATS = ("rle", "dense", "logits")
MAX_PROMPTS_LIMIT = 1000


class BadRequest(ValueError):
    """The caller's input is invalid; the message names the input and the problem."""


@dataclass(frozen=True)
class Limits:
    """Server-side limits, from the model config's parameters."""

    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    min_image_side: int = DEFAULT_MIN_IMAGE_SIDE
    max_dense_bytes: int = 1 << 30


@dataclass(frozen=True)
class Settings:
    """Per-request settings; the defaults are the reference's."""

    conf_threshold: float = box_ops.CONF_THRESHOLD
    iou_threshold: float = box_ops.IOU_THRESHOLD
    max_prompts: int = box_ops.MAX_DETECTIONS
    output_format: str = "rle"
    return_timings: bool = False


def _scalar(value: np.ndarray | None, name: str):
    if value is None:
        return None
    flat = np.asarray(value).reshape(-1)
    if flat.size != 1:
        raise BadRequest(f"{name} must hold exactly one value, got {flat.size}")
    return flat[0]


def parse_settings(inputs: dict[str, np.ndarray | None]) -> Settings:
    """Settings from the optional inputs ``conf_threshold``, ``iou_threshold``, ``max_prompts``,
    ``output_format`` and ``return_timings`` (absent = default)."""
    defaults = Settings()
    conf = _scalar(inputs.get("conf_threshold"), "conf_threshold")
    iou = _scalar(inputs.get("iou_threshold"), "iou_threshold")
    max_prompts = _scalar(inputs.get("max_prompts"), "max_prompts")
    output = _scalar(inputs.get("output_format"), "output_format")
    timings = _scalar(inputs.get("return_timings"), "return_timings")
    conf = defaults.conf_threshold if conf is None else float(conf)
    iou = defaults.iou_threshold if iou is None else float(iou)
    if not (0.0 <= conf < 1.0) or not np.isfinite(conf):
        raise BadRequest(f"conf_threshold must be in [0, 1), got {conf}")
    if not (0.0 < iou <= 1.0) or not np.isfinite(iou):
        raise BadRequest(f"iou_threshold must be in (0, 1], got {iou}")
    max_prompts = defaults.max_prompts if max_prompts is None else int(max_prompts)
    if not 1 <= max_prompts <= MAX_PROMPTS_LIMIT:
        raise BadRequest(f"max_prompts must be in [1, {MAX_PROMPTS_LIMIT}], got {max_prompts}")
    if output is None:
        output = defaults.output_format
    else:
        output = output.decode("utf-8", "replace") if isinstance(output, bytes) else str(output)
        output = output.strip().lower()
    if output not in OUTPUT_FORMATS:
        raise BadRequest(f"output_format must be one of {', '.join(OUTPUT_FORMATS)}, got {output!r}")
    return Settings(conf, iou, max_prompts, output, bool(timings) if timings is not None else False)


def read_image(image: np.ndarray | None, image_raw: np.ndarray | None, limits: Limits) -> np.ndarray:
    """The RGB uint8 image of a request: exactly one of ``image`` (encoded bytes) or ``image_raw`` (HxWx3)."""
    if (image is None) == (image_raw is None):
        raise BadRequest("give exactly one of 'image' (encoded bytes) or 'image_raw' (uint8 HxWx3 RGB)")
    try:
        if image_raw is not None:
            return validate_rgb_array(
                image_raw, max_pixels=limits.max_image_pixels, min_side=limits.min_image_side
            )
        if image.size != 1:
            raise BadRequest(f"'image' must hold one encoded image, got {image.size} elements")
        data = image.reshape(-1)[0]
        if not isinstance(data, bytes):
            raise BadRequest(f"'image' must be BYTES, got {type(data).__name__}")
        return decode_image(data, max_pixels=limits.max_image_pixels, min_side=limits.min_image_side)
    except InvalidImageError as exc:
        raise BadRequest(str(exc)) from None


def read_box_prompts(boxes: np.ndarray, image_shape: tuple[int, int]) -> np.ndarray:
    """SegAny box prompts ``(K, 4)`` xyxy in image pixels, checked and clipped to the image."""
    boxes = np.asarray(boxes, np.float32)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or len(boxes) == 0:
        raise BadRequest(f"boxes must have shape [K, 4] with K >= 1, got {list(boxes.shape)}")
    if not np.isfinite(boxes).all():
        raise BadRequest("boxes must be finite")
    if (boxes[:, 2] < boxes[:, 0]).any() or (boxes[:, 3] < boxes[:, 1]).any():
        raise BadRequest("boxes must be x1 <= x2 and y1 <= y2 (xyxy)")
    if len(boxes) > MAX_PROMPTS_LIMIT:
        raise BadRequest(f"at most {MAX_PROMPTS_LIMIT} boxes per request, got {len(boxes)}")
    h, w = image_shape
    boxes = boxes.copy()
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
    return boxes


def read_point_prompts(points: np.ndarray, labels: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """SegAny point prompts ``(K, P, 2)`` in image pixels with labels ``(K, P)`` (1 fg, 0 bg)."""
    points = np.asarray(points, np.float32)
    if points.ndim != 3 or points.shape[2] != 2 or points.shape[0] == 0 or points.shape[1] == 0:
        raise BadRequest(f"points must have shape [K, P, 2] with K, P >= 1, got {list(points.shape)}")
    if labels is None:
        raise BadRequest("points need point_labels [K, P] (1 foreground, 0 background)")
    labels = np.asarray(labels)
    if labels.shape != points.shape[:2]:
        raise BadRequest(f"point_labels must have shape {list(points.shape[:2])}, got {list(labels.shape)}")
    if not np.isin(labels, (0, 1)).all():
        raise BadRequest("point_labels must be 1 (foreground) or 0 (background)")
    if not np.isfinite(points).all():
        raise BadRequest("points must be finite")
    if len(points) > MAX_PROMPTS_LIMIT:
        raise BadRequest(f"at most {MAX_PROMPTS_LIMIT} point prompts per request, got {len(points)}")
    return points, labels.astype(np.float32)


def check_dense_size(count: int, image_shape: tuple[int, int], limits: Limits) -> None:
    size = count * image_shape[0] * image_shape[1]
    if size > limits.max_dense_bytes:
        raise BadRequest(
            f"dense output of {count} masks at {image_shape[1]}x{image_shape[0]} would be {size / 2**20:.0f} "
            f"MiB, over the server's limit of {limits.max_dense_bytes / 2**20:.0f} MiB; use output_format "
            "'rle'"
        )
