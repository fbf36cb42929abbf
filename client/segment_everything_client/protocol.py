"""Requests and responses of the ``segment_everything`` model over tritonclient, from the wire contract.

Pure functions of numpy arrays: building a request's ``InferInput`` list and parsing an ``InferResult`` into a
:class:`~segment_everything_client.types.Segmentation`. The sync and async clients add transport, retries and
concurrency; the load tests use these functions directly (any tritonclient caller can). Names, dtypes,
defaults and limits all come from :mod:`segment_everything_contract`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar

import numpy as np

import segment_everything_contract as contract
from segment_everything_contract import ContractError, Prompts, Settings
from segment_everything_contract import rle as _rle

from .errors import InvalidInputError, ServerError
from .images import PreparedImage
from .types import Segmentation

DEFAULT_MODEL_NAME = contract.PIPELINE_MODEL
DEFAULT_GRPC_URL = "127.0.0.1:8001"
DEFAULT_HTTP_URL = "127.0.0.1:8000"
PROTOCOLS = ("grpc", "http")

_INPUT_SPECS = {spec.name: spec for spec in contract.PIPELINE_INPUTS}
T = TypeVar("T")


def checked(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call a contract function; its :class:`ContractError` becomes the client's
    :class:`InvalidInputError`."""
    try:
        return fn(*args, **kwargs)
    except ContractError as exc:
        raise InvalidInputError(str(exc)) from None


def default_url(protocol: str) -> str:
    return DEFAULT_GRPC_URL if protocol == "grpc" else DEFAULT_HTTP_URL


def normalize_url(url: str | None, protocol: str, ssl: bool = False) -> tuple[str, bool]:
    """tritonclient wants ``host:port[/base]`` without a scheme; accept one anyway (``https://``/``grpcs://``
    turn TLS on).

    >>> normalize_url("https://triton.example:8000/", "http")
    ('triton.example:8000', True)
    >>> normalize_url("", "grpc")
    ('127.0.0.1:8001', False)
    """
    if protocol not in PROTOCOLS:
        raise InvalidInputError(f"protocol must be 'grpc' or 'http', got {protocol!r}")
    if not url:
        return default_url(protocol), ssl
    for scheme, tls in (("https://", True), ("grpcs://", True), ("http://", ssl), ("grpc://", ssl)):
        if url.startswith(scheme):
            return url[len(scheme) :].rstrip("/"), tls
    return url.rstrip("/"), ssl


def infer_inputs(mod: ModuleType, arrays: dict[str, np.ndarray]) -> list[Any]:
    """tritonclient ``InferInput`` objects of ``mod`` (``tritonclient.http`` or ``.grpc``) for the contract's
    inputs."""
    inputs = []
    for name, array in arrays.items():
        spec = _INPUT_SPECS[name]
        tensor = mod.InferInput(name, list(array.shape), spec.datatype)
        tensor.set_data_from_numpy(np.ascontiguousarray(array, dtype=spec.numpy_dtype))
        inputs.append(tensor)
    return inputs


def requested_outputs(mod: ModuleType, names: tuple[str, ...]) -> list[Any]:
    if mod.__name__.startswith("tritonclient.http"):
        return [mod.InferRequestedOutput(n, binary_data=True) for n in names]
    return [mod.InferRequestedOutput(n) for n in names]


def prompt_arrays(
    boxes: Any = None, points: Any = None, point_labels: Any = None, mask_input: Any = None
) -> Prompts:
    """SegAny prompts, validated by the contract, from what users hold.

    ``boxes``: ``(N, 4)`` xyxy (a single ``(4,)`` box is accepted). ``points``: ``(N, K, 2)`` = N prompts of
    K points each; ``(N, 2)`` means N single-point prompts. ``point_labels``: ``(N, K)`` (or ``(N,)`` with
    ``(N, 2)`` points), 1 = foreground, 0 = background; all foreground when omitted. Give boxes or points.
    ``mask_input``: ``(N, 256, 256)`` low-res logits of an earlier answer per prompt (refinement).

    >>> {k: v.shape for k, v in prompt_arrays(points=[[10, 20], [30, 40]]).to_inputs().items()}
    {'points': (2, 1, 2), 'point_labels': (2, 1)}
    """
    if point_labels is not None and points is None:
        raise InvalidInputError("point_labels given without points")
    if boxes is None and points is None:
        raise InvalidInputError("give boxes or points to segment")
    if boxes is not None and points is not None:
        raise InvalidInputError("give either boxes or points prompts, not both (send two requests)")
    if boxes is not None:
        array = np.asarray(boxes)
        if array.ndim == 1 and array.shape[0] == 4:
            array = array[None]
        return checked(Prompts, boxes=checked(contract.validate_box_prompts, array), mask_input=mask_input)
    array = np.asarray(points)
    if array.ndim == 2 and array.shape[1] == 2:
        array = array[:, None, :]
    if point_labels is None:
        labels = np.ones(array.shape[:2], np.int32) if array.ndim == 3 else None
    else:
        labels = np.asarray(point_labels)
        if labels.ndim == 1 and array.ndim == 3 and array.shape[1] == 1:
            labels = labels[:, None]
    pts, lab = checked(contract.validate_point_prompts, array, labels)
    return checked(Prompts, points=pts, point_labels=lab, mask_input=mask_input)


def build_request(
    mod: ModuleType, image: PreparedImage, settings: Settings, prompts: Prompts | None = None
) -> tuple[list[Any], list[Any]]:
    """``(inputs, outputs)`` for ``client.infer`` of ``mod`` (``tritonclient.http`` or ``.grpc``)."""
    arrays = {image.input_name: image.array, **settings.to_inputs()}
    if prompts is not None:
        arrays.update(prompts.to_inputs())
    return infer_inputs(mod, arrays), requested_outputs(mod, settings.outputs())


def _required(result: Any, name: str) -> np.ndarray:
    arr = result.as_numpy(name)
    if arr is None:
        raise ServerError(f"the server response has no '{name}' output")
    return arr


def parse_response(result: Any, settings: Settings) -> Segmentation:
    """Turn an ``InferResult`` (http or grpc) into a :class:`Segmentation`."""
    boxes = _required(result, contract.BOXES_OUT.name).astype(np.float32, copy=False).reshape(-1, 4)
    scores = _required(result, contract.SCORES.name).astype(np.float32, copy=False).reshape(-1)
    ious = _required(result, contract.IOU_PREDICTIONS.name).astype(np.float32, copy=False).reshape(-1)
    size = _required(result, contract.IMAGE_SIZE.name).reshape(-1)
    index = result.as_numpy(contract.PROMPT_INDEX.name)
    prompt_index = np.arange(len(boxes), dtype=np.int32) if index is None else index.reshape(-1)
    if size.size != 2:
        raise ServerError(f"image_size must hold (h, w), got {size.tolist()}")
    image_size = (int(size[0]), int(size[1]))

    timings = None
    if settings.timings:
        raw = result.as_numpy(contract.TIMINGS.name)
        if raw is not None and raw.size:
            timings = {str(k): float(v) for k, v in json.loads(_as_bytes(raw.reshape(-1)[0])).items()}

    logits = None
    if settings.output == "logits":
        logits = result.as_numpy(contract.LOW_RES_LOGITS.name)
    stability = _required(result, contract.STABILITY_SCORES.name) if settings.needs_stability else None

    try:
        if settings.output == "dense":
            masks = _required(result, contract.MASKS.name).astype(np.bool_, copy=False)
            if masks.size == 0:
                masks = masks.reshape(0, *image_size)
            return Segmentation.from_dense(
                boxes,
                scores,
                ious,
                masks,
                image_size=image_size,
                timings=timings,
                prompt_index=prompt_index,
                stability_scores=stability,
            )
        rles = [_rle.loads(_as_bytes(x)) for x in _required(result, contract.MASKS_RLE.name).reshape(-1)]
        return Segmentation(
            boxes=boxes,
            scores=scores,
            iou_predictions=ious,
            image_size=image_size,
            rles=rles,
            prompt_index=prompt_index,
            timings=timings,
            low_res_logits=logits,
            stability_scores=stability,
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
