"""The wire contract of the ``segment_everything`` model, shared by the sync and async clients.

Building requests and parsing responses are pure functions of numpy arrays, so they are
tested without a server; the clients only add transport, retries and concurrency.
"""

from __future__ import annotations

import json
from types import ModuleType
from typing import Any

import numpy as np

from . import rle as _rle
from .errors import InvalidInputError, ServerError
from .images import PreparedImage
from .types import Segmentation, SegmentSettings

DEFAULT_MODEL_NAME = "segment_everything"
DEFAULT_GRPC_URL = "127.0.0.1:8001"
DEFAULT_HTTP_URL = "127.0.0.1:8000"
PROTOCOLS = ("grpc", "http")

_COMMON_OUTPUTS = ("boxes", "scores", "iou_predictions", "image_size")
# Only what each format needs is requested, so the server can skip the rest.
OUTPUTS_BY_FORMAT: dict[str, tuple[str, ...]] = {
    "rle": (*_COMMON_OUTPUTS, "masks_rle"),
    "dense": (*_COMMON_OUTPUTS, "masks"),
    "logits": (*_COMMON_OUTPUTS, "masks_rle", "low_res_logits"),
}


def default_url(protocol: str) -> str:
    return DEFAULT_GRPC_URL if protocol == "grpc" else DEFAULT_HTTP_URL


def normalize_url(url: str | None, protocol: str, ssl: bool) -> tuple[str, bool]:
    """tritonclient wants ``host:port[/base]`` without a scheme; accept one anyway."""
    if protocol not in PROTOCOLS:
        raise InvalidInputError(f"protocol must be 'grpc' or 'http', got {protocol!r}")
    if not url:
        return default_url(protocol), ssl
    for scheme in ("https://", "grpcs://"):
        if url.startswith(scheme):
            return url[len(scheme) :], True
    for scheme in ("http://", "grpc://"):
        if url.startswith(scheme):
            return url[len(scheme) :], ssl
    return url, ssl


def _input(mod: ModuleType, name: str, array: np.ndarray, datatype: str) -> Any:
    tensor = mod.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def _outputs(mod: ModuleType, names: tuple[str, ...]) -> list[Any]:
    if mod.__name__.startswith("tritonclient.http"):
        return [mod.InferRequestedOutput(n, binary_data=True) for n in names]
    return [mod.InferRequestedOutput(n) for n in names]


def settings_inputs(mod: ModuleType, settings: SegmentSettings, *, discovery: bool = True) -> list[Any]:
    inputs = []
    if discovery:
        if settings.conf is not None:
            inputs.append(_input(mod, "conf_threshold", np.array([settings.conf], np.float32), "FP32"))
        if settings.iou is not None:
            inputs.append(_input(mod, "iou_threshold", np.array([settings.iou], np.float32), "FP32"))
        if settings.max_prompts is not None:
            inputs.append(_input(mod, "max_prompts", np.array([settings.max_prompts], np.int32), "INT32"))
    if settings.output != "rle":
        inputs.append(_input(mod, "output_format", np.array([settings.output.encode()], np.object_), "BYTES"))
    if settings.timings:
        inputs.append(_input(mod, "return_timings", np.array([True], np.bool_), "BOOL"))
    return inputs


def image_input(mod: ModuleType, image: PreparedImage) -> Any:
    datatype = "BYTES" if image.input_name == "image" else "UINT8"
    return _input(mod, image.input_name, image.array, datatype)


def prompt_arrays(boxes: Any = None, points: Any = None, point_labels: Any = None) -> dict[str, np.ndarray]:
    """Validate box/point prompts and shape them as the model expects.

    ``boxes``: ``(N, 4)`` xyxy (a single ``(4,)`` box is accepted). ``points``: ``(N, K, 2)``
    = N prompts of K points each; ``(N, 2)`` means N single-point prompts. ``point_labels``:
    ``(N, K)`` (or ``(N,)`` with ``(N, 2)`` points), 1 = foreground, 0 = background;
    all foreground when omitted.

    >>> {k: v.shape for k, v in prompt_arrays(points=[[10, 20], [30, 40]]).items()}
    {'points': (2, 1, 2), 'point_labels': (2, 1)}
    """
    out: dict[str, np.ndarray] = {}
    if point_labels is not None and points is None:
        raise InvalidInputError("point_labels given without points")
    if boxes is None and points is None:
        raise InvalidInputError("give boxes and/or points to segment")
    if boxes is not None:
        b = np.asarray(boxes, dtype=np.float32)
        if b.ndim == 1 and b.shape[0] == 4:
            b = b[None]
        if b.ndim != 2 or b.shape[1] != 4:
            raise InvalidInputError(f"boxes must have shape (N, 4) (xyxy), got {b.shape}")
        if not np.isfinite(b).all():
            raise InvalidInputError("boxes contain NaN or infinite values")
        out["boxes"] = np.ascontiguousarray(b)
    if points is not None:
        p = np.asarray(points, dtype=np.float32)
        if p.ndim == 2 and p.shape[1] == 2:
            p = p[:, None, :]
        if p.ndim != 3 or p.shape[2] != 2:
            raise InvalidInputError(f"points must have shape (N, K, 2) or (N, 2), got {p.shape}")
        if not np.isfinite(p).all():
            raise InvalidInputError("points contain NaN or infinite values")
        if point_labels is None:
            lab = np.ones(p.shape[:2], dtype=np.int32)
        else:
            lab = np.asarray(point_labels)
            if lab.ndim == 1 and p.shape[1] == 1:
                lab = lab[:, None]
            if lab.shape != p.shape[:2]:
                raise InvalidInputError(f"point_labels must have shape {p.shape[:2]}, got {lab.shape}")
            if not np.isin(lab, (0, 1)).all():
                raise InvalidInputError("point_labels must be 1 (foreground) or 0 (background)")
            lab = lab.astype(np.int32)
        out["points"] = np.ascontiguousarray(p)
        out["point_labels"] = np.ascontiguousarray(lab)
    return out


def build_request(
    mod: ModuleType,
    image: PreparedImage,
    settings: SegmentSettings,
    prompts: dict[str, np.ndarray] | None = None,
) -> tuple[list[Any], list[Any]]:
    """``(inputs, outputs)`` for ``client.infer`` of ``mod`` (``tritonclient.http`` or ``.grpc``)."""
    inputs = [image_input(mod, image)]
    inputs += settings_inputs(mod, settings, discovery=prompts is None)
    if prompts:
        for name, arr in prompts.items():
            inputs.append(_input(mod, name, arr, "INT32" if name == "point_labels" else "FP32"))
    names = OUTPUTS_BY_FORMAT[settings.output] + (("timings",) if settings.timings else ())
    return inputs, _outputs(mod, names)


def _required(result: Any, name: str) -> np.ndarray:
    arr = result.as_numpy(name)
    if arr is None:
        raise ServerError(f"the server response has no '{name}' output")
    return arr


def parse_response(result: Any, settings: SegmentSettings) -> Segmentation:
    """Turn an ``InferResult`` (http or grpc) into a :class:`Segmentation`."""
    boxes = _required(result, "boxes").astype(np.float32, copy=False).reshape(-1, 4)
    scores = _required(result, "scores").astype(np.float32, copy=False).reshape(-1)
    ious = _required(result, "iou_predictions").astype(np.float32, copy=False).reshape(-1)
    size = _required(result, "image_size").reshape(-1)
    if size.size != 2:
        raise ServerError(f"image_size must hold (h, w), got {size.tolist()}")
    image_size = (int(size[0]), int(size[1]))

    timings = None
    if settings.timings:
        raw = result.as_numpy("timings")
        if raw is not None and raw.size:
            timings = {str(k): float(v) for k, v in json.loads(_as_bytes(raw.reshape(-1)[0])).items()}

    logits = None
    if settings.output == "logits":
        logits = result.as_numpy("low_res_logits")

    try:
        if settings.output == "dense":
            masks = _required(result, "masks").astype(np.bool_, copy=False)
            if masks.size == 0:
                masks = masks.reshape(0, *image_size)
            return Segmentation.from_dense(boxes, scores, ious, masks, image_size=image_size, timings=timings)
        rles = [_rle.loads(_as_bytes(x)) for x in _required(result, "masks_rle").reshape(-1)]
        return Segmentation(
            boxes=boxes,
            scores=scores,
            iou_predictions=ious,
            image_size=image_size,
            rles=rles,
            timings=timings,
            low_res_logits=logits,
        )
    except ValueError as exc:  # inconsistent lengths, malformed RLE JSON
        raise ServerError(f"malformed response from the server: {exc}") from exc


def _as_bytes(x: Any) -> bytes:
    if isinstance(x, bytes):
        return x
    if isinstance(x, str):
        return x.encode()
    if isinstance(x, np.ndarray):
        return x.tobytes()
    return bytes(x)
