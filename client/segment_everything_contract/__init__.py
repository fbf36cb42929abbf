"""The wire contract of the MobileSAMv2 service on Triton: every tensor name, dtype, default, range and limit.

One file, imported by the client, the Triton models, the load tests and the benchmarks, so that a limit
changes in one place and client and server cannot disagree (``tests/test_contract.py`` sends the same settings
through both and compares the verdicts). numpy only: the client distribution ships it, the server depends on
it.

Three kinds of things live here:

* **Tensors** (:class:`TensorSpec`): the inputs and outputs of the public ``segment_everything`` model and of
  the internal models it calls. The ``config.pbtxt`` files must declare exactly these (tested).
* **Settings** (:class:`Settings`): the optional per-request knobs, their defaults (MobileSAMv2's reference)
  and valid ranges; :meth:`Settings.from_inputs` is the server's parser, :meth:`Settings.to_inputs` the
  client's writer.
* **Limits** (:class:`Limits`): what one request may ask for (image size, prompts, points, response bytes).
  The server may be configured stricter (``config.pbtxt`` parameters), never looser than the hard caps here,
  which are what the exported graphs were traced and profiled for.

Every refusal is a :class:`ContractError` whose message names the input, the value and the limit; the server
answers it with Triton's ``INVALID_ARG`` (HTTP 400, gRPC ``INVALID_ARGUMENT``), the client raises it as
``InvalidInputError`` before sending.

>>> Settings(conf=0.25).conf
0.25
>>> Settings(iou=0.0)
Traceback (most recent call last):
...
segment_everything_contract.ContractError: iou_threshold must be in (0, 1], got 0
>>> sorted(Settings(max_prompts=10).to_inputs())
['conf_threshold', 'iou_threshold', 'max_prompts', 'multimask', 'output_format', 'return_timings']
>>> sorted(Settings(pred_iou_thresh=0.88).to_inputs())[-2:]  # SAM's filters travel only when set
['pred_iou_thresh', 'return_timings']
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

__all__ = [
    "DECODER_INPUTS",
    "DECODER_MODEL",
    "DECODER_OUTPUTS",
    "DISCOVERY_INPUTS",
    "DISCOVERY_MODEL",
    "DISCOVERY_OUTPUTS",
    "ENCODER_INPUTS",
    "ENCODER_MODEL",
    "ENCODER_OUTPUTS",
    "HARD_LIMITS",
    "INTERACTIVE_DECODER_INPUTS",
    "INTERACTIVE_DECODER_MODEL",
    "INTERACTIVE_DECODER_OUTPUTS",
    "OUTPUT_FORMATS",
    "PIPELINE_INPUTS",
    "PIPELINE_MODEL",
    "PIPELINE_OUTPUTS",
    "STABILITY_SCORE_OFFSET",
    "ContractError",
    "Limits",
    "Settings",
    "TensorSpec",
    "check_image_bytes",
    "check_image_shape",
    "outputs_for",
    "validate_box_prompts",
    "validate_point_prompts",
]

CONTRACT_VERSION = 1
"""Bumped on any incompatible change of the tensors below (the server reports it in its model metadata)."""


class ContractError(ValueError):
    """A request breaks the contract; the message names the input, the value and the limit."""


# --------------------------------------------------------------------------------------------------- tensors

TRITON_TO_NUMPY: dict[str, type] = {
    "BYTES": np.object_,
    "UINT8": np.uint8,
    "INT32": np.int32,
    "FP32": np.float32,
    "BOOL": np.bool_,
}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a Triton model: its name, Triton datatype and dims (``-1`` = variable).

    ``dims`` are the full shape of the tensor as sent (the public and internal models have no implicit batch
    axis, except ``image_encoder``, whose config adds one: see :data:`ENCODER_INPUTS`).
    """

    name: str
    datatype: str
    dims: tuple[int, ...]
    optional: bool = False
    doc: str = ""

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(TRITON_TO_NUMPY[self.datatype])


# The public model. Give exactly one of `image` / `image_raw`; `boxes` or `points` switch to SegAny.
PIPELINE_MODEL = "segment_everything"
IMAGE = TensorSpec("image", "BYTES", (1,), True, "encoded JPEG/PNG/WebP/BMP/TIFF/GIF file bytes")
IMAGE_RAW = TensorSpec("image_raw", "UINT8", (-1, -1, 3), True, "decoded RGB pixels HxWx3")
CONF_THRESHOLD = TensorSpec("conf_threshold", "FP32", (1,), True, "detector confidence threshold")
IOU_THRESHOLD = TensorSpec("iou_threshold", "FP32", (1,), True, "NMS IoU threshold between boxes")
MAX_PROMPTS = TensorSpec("max_prompts", "INT32", (1,), True, "at most this many boxes become masks")
OUTPUT_FORMAT = TensorSpec("output_format", "BYTES", (1,), True, "rle | dense | logits")
RETURN_TIMINGS = TensorSpec("return_timings", "BOOL", (1,), True, "add per-stage milliseconds")
MULTIMASK = TensorSpec("multimask", "BOOL", (1,), True, "SegAny: SAM's 3 candidate masks per prompt")
BOXES_IN = TensorSpec("boxes", "FP32", (-1, 4), True, "SegAny: xyxy boxes in image pixels")
POINTS = TensorSpec("points", "FP32", (-1, -1, 2), True, "SegAny: K prompts of P xy points, image pixels")
POINT_LABELS = TensorSpec("point_labels", "INT32", (-1, -1), True, "1 foreground, 0 background")
MASK_INPUT = TensorSpec(
    "mask_input", "FP32", (-1, 256, 256), True, "SegAny refinement: each prompt's previous low_res_logits"
)
# SAM's automatic mask generator's quality filters (see Settings); absent = off, MobileSAMv2's reference.
PRED_IOU_THRESH = TensorSpec("pred_iou_thresh", "FP32", (1,), True, "keep masks with predicted IoU > it")
STABILITY_SCORE_THRESH = TensorSpec(
    "stability_score_thresh", "FP32", (1,), True, "keep masks with stability score >= it"
)
MIN_MASK_REGION_AREA = TensorSpec(
    "min_mask_region_area", "INT32", (1,), True, "fill holes, drop islands smaller than this (pixels)"
)
MASK_NMS_THRESH = TensorSpec("mask_nms_thresh", "FP32", (1,), True, "NMS IoU threshold between mask boxes")
NON_OVERLAPPING = TensorSpec("non_overlapping", "BOOL", (1,), True, "each pixel goes to its best mask only")
RETURN_STABILITY_SCORES = TensorSpec(
    "return_stability_scores", "BOOL", (1,), True, "add each mask's stability score"
)
PIPELINE_INPUTS: tuple[TensorSpec, ...] = (
    IMAGE,
    IMAGE_RAW,
    CONF_THRESHOLD,
    IOU_THRESHOLD,
    MAX_PROMPTS,
    OUTPUT_FORMAT,
    RETURN_TIMINGS,
    MULTIMASK,
    BOXES_IN,
    POINTS,
    POINT_LABELS,
    MASK_INPUT,
    PRED_IOU_THRESH,
    STABILITY_SCORE_THRESH,
    MIN_MASK_REGION_AREA,
    MASK_NMS_THRESH,
    NON_OVERLAPPING,
    RETURN_STABILITY_SCORES,
)

BOXES_OUT = TensorSpec(
    "boxes", "FP32", (-1, 4), doc="xyxy in original pixels (point prompts: the mask's box)"
)
SCORES = TensorSpec("scores", "FP32", (-1,), doc="detector confidence; 1 for given prompts")
IOU_PREDICTIONS = TensorSpec("iou_predictions", "FP32", (-1,), doc="the decoder's own mask quality estimate")
PROMPT_INDEX = TensorSpec("prompt_index", "INT32", (-1,), doc="the prompt each mask belongs to")
MASKS_RLE = TensorSpec("masks_rle", "BYTES", (-1,), doc='JSON {"size": [h, w], "counts": "..."} (COCO RLE)')
MASKS = TensorSpec("masks", "BOOL", (-1, -1, -1), doc="output_format dense: N x h x w")
LOW_RES_LOGITS = TensorSpec("low_res_logits", "FP32", (-1, 256, 256), doc="output_format logits")
IMAGE_SIZE = TensorSpec("image_size", "INT32", (2,), doc="[h, w] of the decoded image")
TIMINGS = TensorSpec("timings", "BYTES", (1,), doc="JSON stage -> milliseconds, with return_timings")
STABILITY_SCORES = TensorSpec(
    "stability_scores", "FP32", (-1,), doc="SAM's stability score per mask (offset 1.0)"
)
PIPELINE_OUTPUTS: tuple[TensorSpec, ...] = (
    BOXES_OUT,
    SCORES,
    IOU_PREDICTIONS,
    PROMPT_INDEX,
    MASKS_RLE,
    MASKS,
    LOW_RES_LOGITS,
    IMAGE_SIZE,
    TIMINGS,
    STABILITY_SCORES,
)

OUTPUT_FORMATS = ("rle", "dense", "logits")
_COMMON_OUTPUTS = (BOXES_OUT.name, SCORES.name, IOU_PREDICTIONS.name, PROMPT_INDEX.name, IMAGE_SIZE.name)
_OUTPUTS_BY_FORMAT = {
    "rle": (*_COMMON_OUTPUTS, MASKS_RLE.name),
    "dense": (*_COMMON_OUTPUTS, MASKS.name),
    "logits": (*_COMMON_OUTPUTS, MASKS_RLE.name, LOW_RES_LOGITS.name),
}


def outputs_for(output_format: str, timings: bool = False, stability: bool = False) -> tuple[str, ...]:
    """The outputs a request with this format fills (request only these: the server skips the rest)."""
    if output_format not in _OUTPUTS_BY_FORMAT:
        raise ContractError(
            f"output_format must be one of {', '.join(OUTPUT_FORMATS)}, got {output_format!r}"
        )
    extra = ((TIMINGS.name,) if timings else ()) + ((STABILITY_SCORES.name,) if stability else ())
    return _OUTPUTS_BY_FORMAT[output_format] + extra


# Internal models, called by the pipeline (and directly by anyone who can reach the port: each guards its own
# inputs against the limits below).
ENCODER_MODEL = "image_encoder"
ENCODER_CANVAS = 1024
ENCODER_INPUTS: tuple[TensorSpec, ...] = (
    # dims without the batch axis (max_batch_size > 0 in its config)
    TensorSpec("image", "UINT8", (ENCODER_CANVAS, ENCODER_CANVAS, 3), doc="RGB, long side 1024, top-left"),
    TensorSpec("image_size", "INT32", (2,), doc="valid [newh, neww] of the canvas"),
)
ENCODER_OUTPUTS: tuple[TensorSpec, ...] = (TensorSpec("image_embeddings", "FP32", (256, 64, 64)),)

DECODER_MODEL = "prompt_decoder"
DECODER_INPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("image_embeddings", "FP32", (1, 256, 64, 64)),
    TensorSpec("point_coords", "FP32", (-1, -1, 2), doc="N prompts x P points, 1024 encoder frame"),
    TensorSpec("point_labels", "FP32", (-1, -1), doc="1 fg, 0 bg, -1 padding, 2/3 box corners"),
)
DECODER_OUTPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("low_res_masks", "FP32", (-1, 1, 256, 256), doc="mask token 0 (MobileSAMv2's single mask)"),
    TensorSpec("iou_predictions", "FP32", (-1, 1)),
)

# SegAny with multimask output or a previous mask: SAM's full decoder (few prompts; see modeling/sam.py).
INTERACTIVE_DECODER_MODEL = "interactive_decoder"
INTERACTIVE_DECODER_INPUTS: tuple[TensorSpec, ...] = (
    *DECODER_INPUTS,
    TensorSpec("mask_input", "FP32", (-1, 1, 256, 256), doc="previous low-res logits (zeros when none)"),
    TensorSpec("has_mask_input", "FP32", (-1,), doc="1 where mask_input holds a mask, else 0"),
)
INTERACTIVE_DECODER_OUTPUTS: tuple[TensorSpec, ...] = (
    TensorSpec(
        "masks", "FP32", (-1, 4, 256, 256), doc="token 0 single mask; tokens 1-3 SAM's multimask output"
    ),
    TensorSpec("iou_predictions", "FP32", (-1, 4)),
)
MULTIMASK_TOKENS = slice(1, 4)
"""SAM's predictor returns mask tokens 1-3 for ``multimask_output=True``, token 0 otherwise."""
INTERACTIVE_DECODER_MAX_PROMPTS = 64
"""Prompts per ``interactive_decoder`` call: the model refuses more (its ``max_dims``), the pipeline splits a
larger SegAny request into calls of at most this many (SAM's full decoder costs ~40 MB and tens of ms per
prompt on CPU; interactive sessions send a few clicks)."""

DISCOVERY_MODEL = "object_discovery"
DISCOVERY_INPUTS: tuple[TensorSpec, ...] = (
    TensorSpec(
        "images", "UINT8", (-1, -1, 3), doc="letterboxed, sides multiples of 32, detector channel order"
    ),
    TensorSpec("conf_threshold", "FP32", (1,), optional=True),
)
DISCOVERY_OUTPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("boxes", "FP32", (-1, 4), doc="xyxy in letterbox pixels, before NMS"),
    TensorSpec("scores", "FP32", (-1,)),
    TensorSpec("classes", "INT32", (-1,)),
)
DETECTOR_STRIDE = 32
DETECTOR_MAX_SIDE = 1024
"""The pipeline letterboxes to a long side of 1024; object_discovery refuses anything larger."""


# ---------------------------------------------------------------------------------------------------- limits


@dataclass(frozen=True)
class Limits:
    """What one request may ask for. :data:`HARD_LIMITS` are the caps of the exported graphs and the wire
    format; a deployment may lower them (``config.pbtxt`` parameters of ``segment_everything``), never raise
    them."""

    max_image_pixels: int = 64_000_000
    """Refused from the header, before decoding (decompression bombs)."""
    min_image_side: int = 8
    max_aspect_ratio: float = 100.0
    """Long side / short side; beyond this the 1024 resize would leave a side of a few pixels."""
    max_image_bytes: int = 64 * 2**20
    """Size of the encoded file (the ``image`` input)."""
    max_prompts: int = 1000
    """Boxes or point prompts per request (SegEvery's ``max_prompts`` setting is capped by it too)."""
    max_points_per_prompt: int = 32
    """Points of one SegAny point prompt; the decoder gets one more (SAM's padding point)."""
    max_response_bytes: int = 512 * 2**20
    """Every output of one response together (dense masks, logits, RLE strings)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not value > 0:
                raise ValueError(f"limit {f.name} must be > 0, got {value}")

    def within(self, hard: Limits) -> Limits:
        """This, checked to be no looser than ``hard`` (a deployment may only tighten the contract)."""

        def looser(name: str) -> bool:
            mine, theirs = getattr(self, name), getattr(hard, name)
            return mine < theirs if name == "min_image_side" else mine > theirs

        bad = [f.name for f in fields(self) if looser(f.name)]
        if bad:
            raise ValueError(f"limits {', '.join(bad)} are looser than the contract's hard limits")
        return self

    @classmethod
    def from_parameters(cls, params: Mapping[str, str], hard: Limits | None = None) -> Limits:
        """Limits from string parameters named like the fields (absent or empty = the hard limit)."""
        hard = hard or HARD_LIMITS
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = (params.get(f.name) or "").strip()
            if raw:
                kind = type(getattr(hard, f.name))
                values[f.name] = kind(float(raw)) if kind is int else kind(raw)
        return replace(hard, **values).within(hard)


HARD_LIMITS = Limits()

DECODER_MAX_POINTS = HARD_LIMITS.max_points_per_prompt + 1
"""Points per decoder prompt including SAM's padding point: the TensorRT profile's maximum (the ONNX export is
traced for more)."""


def check_image_shape(height: int, width: int, limits: Limits = HARD_LIMITS) -> None:
    """Refuse images too small, too large or too elongated (called on the header, before decoding)."""
    if min(height, width) < limits.min_image_side:
        raise ContractError(
            f"image is {width}x{height} pixels; both sides must be at least {limits.min_image_side}"
        )
    if height * width > limits.max_image_pixels:
        raise ContractError(
            f"image is {width}x{height} = {height * width} pixels, over the limit of "
            f"{limits.max_image_pixels} (max_image_pixels)"
        )
    ratio = max(height, width) / min(height, width)
    if ratio > limits.max_aspect_ratio:
        raise ContractError(
            f"image is {width}x{height}, an aspect ratio of {ratio:.0f}:1, over the limit of "
            f"{limits.max_aspect_ratio:g}:1 (max_aspect_ratio)"
        )


def check_image_bytes(size: int, limits: Limits = HARD_LIMITS) -> None:
    if size == 0:
        raise ContractError("image is empty (0 bytes)")
    if size > limits.max_image_bytes:
        raise ContractError(
            f"image file is {size} bytes, over the limit of {limits.max_image_bytes} (max_image_bytes)"
        )


# -------------------------------------------------------------------------------------------------- settings

STABILITY_SCORE_OFFSET = 1.0
"""SAM's ``stability_score_offset``: a mask's stability score is the IoU of its masks thresholded at
``+1.0`` and ``-1.0`` (the logits upsampled to the image, as the mask itself)."""


def _number(name: str, value: Any) -> tuple[float, float]:
    """A float setting and the float32 value the server will see (the wire carries FP32): ranges are checked
    on the latter, so a value that rounds onto a bound gets the same verdict on both sides."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ContractError(f"{name} must be a number, got {value!r}")
    wire = float(np.float32(value))
    if not math.isfinite(wire):
        raise ContractError(f"{name} must be finite, got {value}")
    return float(value), wire


@dataclass(frozen=True)
class Settings:
    """The per-request settings of ``segment_everything``; the defaults are MobileSAMv2's reference.

    Attributes:
        conf: detector confidence threshold, in [0, 1): boxes scoring above it are candidates.
        iou: NMS IoU threshold between candidate boxes, in (0, 1]; 1 keeps every box.
        max_prompts: at most this many boxes (the most confident) become masks, 1..``Limits.max_prompts``.
        output: ``"rle"`` (COCO RLE strings, small), ``"dense"`` (``N x h x w`` booleans) or ``"logits"``
            (RLE plus the decoder's 256x256 logits).
        timings: also return the server's per-stage milliseconds.
        multimask: SegAny prompts return SAM's three candidate masks each (a click is ambiguous: part, object,
            group), with their predicted IoUs; SegEvery always returns one mask per box.

    SAM's automatic mask generator's quality filters, computed on the server where the logits are, in SAM's
    order; each is off by default (MobileSAMv2's reference filters nothing, and then costs nothing):

    Attributes:
        pred_iou_thresh: keep masks whose predicted IoU is ``>`` it, in [0, 1]; 0 = off (SAM: 0.88).
        stability_score_thresh: keep masks whose stability score (:data:`STABILITY_SCORE_OFFSET`) is ``>=``
            it, in [0, 1]; 0 = off (SAM: 0.95).
        min_mask_region_area: fill holes and remove islands smaller than this many pixels, then NMS again
            preferring the masks left unchanged (SAM's ``postprocess_small_regions``); 0 = off.
        mask_nms_thresh: NMS between the masks' tight boxes, scored by predicted IoU, in (0, 1]; 1 = off
            (SAM's ``box_nms_thresh``: 0.7).
        non_overlapping: each pixel goes to the mask with the highest predicted IoU among those covering it;
            masks left empty are dropped (applied last).
        stability_scores: return every mask's stability score (always returned when that filter is on).

    With any of the first four on, masks come out in SAM's order: by predicted IoU, descending (after the
    small-region step, the masks it left unchanged first); with all off, in the detector's order.
    """

    conf: float = 0.4
    iou: float = 0.9
    max_prompts: int = 300
    output: str = "rle"
    timings: bool = False
    multimask: bool = False
    pred_iou_thresh: float = 0.0
    stability_score_thresh: float = 0.0
    min_mask_region_area: int = 0
    mask_nms_thresh: float = 1.0
    non_overlapping: bool = False
    stability_scores: bool = False

    def __post_init__(self) -> None:
        (conf, conf32), (iou, iou32) = (
            _number(CONF_THRESHOLD.name, self.conf),
            _number(IOU_THRESHOLD.name, self.iou),
        )
        if not 0.0 <= conf32 < 1.0:
            raise ContractError(f"{CONF_THRESHOLD.name} must be in [0, 1), got {conf32:.6g}")
        if not 0.0 < iou32 <= 1.0:
            raise ContractError(f"{IOU_THRESHOLD.name} must be in (0, 1], got {iou32:.6g}")
        mp = self.max_prompts
        if isinstance(mp, (bool, np.bool_)) or not isinstance(mp, (int, np.integer)):
            raise ContractError(f"{MAX_PROMPTS.name} must be an integer, got {mp!r}")
        if not 1 <= mp <= HARD_LIMITS.max_prompts:
            raise ContractError(f"{MAX_PROMPTS.name} must be in [1, {HARD_LIMITS.max_prompts}], got {mp}")
        output = self.output.strip().lower() if isinstance(self.output, str) else self.output
        if output not in OUTPUT_FORMATS:
            raise ContractError(
                f"{OUTPUT_FORMAT.name} must be one of {', '.join(OUTPUT_FORMATS)}, got {output!r}"
            )
        for name in ("timings", "multimask", "non_overlapping", "stability_scores"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ContractError(f"{name} must be True or False, got {getattr(self, name)!r}")
        filters = {}
        for spec, low, high, open_low in (
            (PRED_IOU_THRESH, 0.0, 1.0, False),
            (STABILITY_SCORE_THRESH, 0.0, 1.0, False),
            (MASK_NMS_THRESH, 0.0, 1.0, True),
        ):
            value, wire = _number(spec.name, getattr(self, spec.name))
            if not (low < wire if open_low else low <= wire) or not wire <= high:
                bounds = f"({low:g}, {high:g}]" if open_low else f"[{low:g}, {high:g}]"
                raise ContractError(f"{spec.name} must be in {bounds}, got {wire:.6g}")
            filters[spec.name] = value
        area = self.min_mask_region_area
        if isinstance(area, (bool, np.bool_)) or not isinstance(area, (int, np.integer)):
            raise ContractError(f"{MIN_MASK_REGION_AREA.name} must be an integer, got {area!r}")
        if not 0 <= area <= HARD_LIMITS.max_image_pixels:
            raise ContractError(
                f"{MIN_MASK_REGION_AREA.name} must be in [0, {HARD_LIMITS.max_image_pixels}], got {area}"
            )
        for name, value in filters.items():
            object.__setattr__(self, name, value)
        object.__setattr__(self, "min_mask_region_area", int(area))
        object.__setattr__(self, "non_overlapping", bool(self.non_overlapping))
        object.__setattr__(self, "stability_scores", bool(self.stability_scores))
        object.__setattr__(self, "conf", conf)
        object.__setattr__(self, "iou", iou)
        object.__setattr__(self, "max_prompts", int(mp))
        object.__setattr__(self, "output", output)
        object.__setattr__(self, "timings", bool(self.timings))
        object.__setattr__(self, "multimask", bool(self.multimask))

    @property
    def sam_filters(self) -> bool:
        """Any of SAM's four filters on (then masks come out in SAM's order)."""
        return (
            self.pred_iou_thresh > 0
            or self.stability_score_thresh > 0
            or self.min_mask_region_area > 0
            or self.mask_nms_thresh < 1
        )

    @property
    def needs_stability(self) -> bool:
        """Stability scores are computed (and returned) for this request."""
        return self.stability_scores or self.stability_score_thresh > 0

    def outputs(self) -> tuple[str, ...]:
        return outputs_for(self.output, self.timings, self.needs_stability)

    def to_inputs(self) -> dict[str, np.ndarray]:
        """The settings as the model's optional input tensors: the detector's and the output's always
        (explicit beats implicit), SAM's quality filters only when set (a default request stays what it was
        before they existed, so a server without them still takes it)."""
        inputs = {
            CONF_THRESHOLD.name: np.array([self.conf], np.float32),
            IOU_THRESHOLD.name: np.array([self.iou], np.float32),
            MAX_PROMPTS.name: np.array([self.max_prompts], np.int32),
            OUTPUT_FORMAT.name: np.array([self.output.encode()], np.object_),
            RETURN_TIMINGS.name: np.array([self.timings], np.bool_),
            MULTIMASK.name: np.array([self.multimask], np.bool_),
        }
        defaults = Settings()
        for spec, attr, dtype in _FILTER_INPUTS:
            value = getattr(self, attr)
            if value != getattr(defaults, attr):
                inputs[spec.name] = np.array([value], dtype)
        return inputs

    @classmethod
    def from_inputs(cls, inputs: Mapping[str, np.ndarray | None]) -> Settings:
        """Parse the optional setting tensors of a request (absent = default)."""
        values: dict[str, Any] = {}
        for spec, attr in (
            (CONF_THRESHOLD, "conf"),
            (IOU_THRESHOLD, "iou"),
            (MAX_PROMPTS, "max_prompts"),
            (OUTPUT_FORMAT, "output"),
            (RETURN_TIMINGS, "timings"),
            (MULTIMASK, "multimask"),
            *((spec, attr) for spec, attr, _ in _FILTER_INPUTS),
        ):
            array = inputs.get(spec.name)
            if array is None:
                continue
            array = np.asarray(array)
            if array.size != 1:
                raise ContractError(f"{spec.name} must hold exactly one value, got {array.size}")
            if array.dtype != spec.numpy_dtype:
                raise ContractError(f"{spec.name} must be {spec.datatype}, got {array.dtype}")
            value = array.reshape(-1)[0]
            if spec.datatype == "BYTES":
                value = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
            values[attr] = value.item() if isinstance(value, np.generic) else value
        return cls(**values)


_FILTER_INPUTS = (
    (PRED_IOU_THRESH, "pred_iou_thresh", np.float32),
    (STABILITY_SCORE_THRESH, "stability_score_thresh", np.float32),
    (MIN_MASK_REGION_AREA, "min_mask_region_area", np.int32),
    (MASK_NMS_THRESH, "mask_nms_thresh", np.float32),
    (NON_OVERLAPPING, "non_overlapping", np.bool_),
    (RETURN_STABILITY_SCORES, "stability_scores", np.bool_),
)
"""SAM's quality filters: input tensor, Settings attribute, wire dtype."""
FILTER_SETTINGS = tuple(attr for _, attr, _ in _FILTER_INPUTS)
"""The Settings attributes of SAM's quality filters (and of returning stability scores)."""


# --------------------------------------------------------------------------------------------------- prompts


def validate_box_prompts(boxes: Any, limits: Limits = HARD_LIMITS) -> np.ndarray:
    """SegAny boxes ``(K, 4)`` xyxy in image pixels: float32, finite, ordered corners, 1..max_prompts."""
    array = np.asarray(boxes)
    if array.dtype.kind not in "fiu":
        raise ContractError(f"boxes must be numbers, got {array.dtype}")
    if array.ndim != 2 or array.shape[1] != 4 or array.shape[0] == 0:
        raise ContractError(f"boxes must have shape [K, 4] with K >= 1, got {list(array.shape)}")
    if array.shape[0] > limits.max_prompts:
        raise ContractError(
            f"at most {limits.max_prompts} boxes per request (max_prompts), got {array.shape[0]}"
        )
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise ContractError("boxes must be finite (no NaN or infinity)")
    if (array[:, 2] < array[:, 0]).any() or (array[:, 3] < array[:, 1]).any():
        raise ContractError("boxes must be xyxy with x1 <= x2 and y1 <= y2")
    return np.ascontiguousarray(array)


def validate_point_prompts(
    points: Any, labels: Any, limits: Limits = HARD_LIMITS
) -> tuple[np.ndarray, np.ndarray]:
    """SegAny points ``(K, P, 2)`` xy in image pixels and labels ``(K, P)`` (1 foreground, 0 background)."""
    array = np.asarray(points)
    if array.dtype.kind not in "fiu":
        raise ContractError(f"points must be numbers, got {array.dtype}")
    if array.ndim != 3 or array.shape[2] != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ContractError(f"points must have shape [K, P, 2] with K, P >= 1, got {list(array.shape)}")
    if array.shape[0] > limits.max_prompts:
        raise ContractError(
            f"at most {limits.max_prompts} point prompts per request (max_prompts), got {array.shape[0]}"
        )
    if array.shape[1] > limits.max_points_per_prompt:
        raise ContractError(
            f"at most {limits.max_points_per_prompt} points per prompt (max_points_per_prompt), "
            f"got {array.shape[1]}"
        )
    if labels is None:
        raise ContractError("points need point_labels [K, P] (1 foreground, 0 background)")
    label_array = np.asarray(labels)
    if label_array.shape != array.shape[:2]:
        raise ContractError(
            f"point_labels must have shape {list(array.shape[:2])}, got {list(label_array.shape)}"
        )
    if label_array.dtype.kind not in "iub" or not np.isin(label_array, (0, 1)).all():
        raise ContractError("point_labels must be 1 (foreground) or 0 (background)")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise ContractError("points must be finite (no NaN or infinity)")
    return np.ascontiguousarray(array), np.ascontiguousarray(label_array.astype(np.int32))


def check_prompts_inside(
    boxes: np.ndarray | None, points: np.ndarray | None, image_shape: tuple[int, int]
) -> np.ndarray | None:
    """Prompts against the image: boxes are clipped to it (returned), points outside it are refused (a click
    outside the picture is a caller's bug, and SAM's positional encoding is meaningless far outside)."""
    h, w = image_shape
    if points is not None:
        outside = (points[..., 0] < 0) | (points[..., 0] > w) | (points[..., 1] < 0) | (points[..., 1] > h)
        if outside.any():
            k, p = (int(i) for i in np.argwhere(outside)[0])
            x, y = points[k, p]
            raise ContractError(
                f"point [{k}, {p}] = ({x:g}, {y:g}) lies outside the {w}x{h} image "
                f"(x in [0, {w}], y in [0, {h}])"
            )
    if boxes is None:
        return None
    clipped = boxes.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, w)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, h)
    return clipped


def validate_mask_input(mask_input: Any, prompts: int) -> np.ndarray:
    """A previous prediction's low-res logits per prompt, ``(K, 256, 256)`` float32 and finite."""
    array = np.asarray(mask_input)
    if array.ndim == 2:
        array = array[None]
    if array.dtype.kind not in "fiu":
        raise ContractError(f"mask_input must be numbers, got {array.dtype}")
    if array.shape != (prompts, 256, 256):
        raise ContractError(
            f"mask_input must have shape [{prompts}, 256, 256] (one per prompt), got {list(array.shape)}"
        )
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise ContractError("mask_input must be finite (no NaN or infinity)")
    return np.ascontiguousarray(array)


@dataclass(frozen=True)
class Prompts:
    """Validated SegAny prompts (boxes or points), with an optional previous mask per prompt."""

    boxes: np.ndarray | None = None
    points: np.ndarray | None = None
    point_labels: np.ndarray | None = None
    mask_input: np.ndarray | None = None
    count: int = field(init=False)

    def __post_init__(self) -> None:
        if (self.boxes is None) == (self.points is None):
            raise ContractError("give either boxes or points prompts, not both")
        n = len(self.boxes) if self.boxes is not None else len(self.points)
        object.__setattr__(self, "count", n)
        if self.mask_input is not None:
            object.__setattr__(self, "mask_input", validate_mask_input(self.mask_input, n))

    def to_inputs(self) -> dict[str, np.ndarray]:
        out = {BOXES_IN.name: self.boxes} if self.boxes is not None else {}
        if self.points is not None:
            out.update({POINTS.name: self.points, POINT_LABELS.name: self.point_labels})
        if self.mask_input is not None:
            out[MASK_INPUT.name] = self.mask_input
        return out

    @classmethod
    def from_inputs(
        cls, inputs: Mapping[str, np.ndarray | None], limits: Limits = HARD_LIMITS
    ) -> Prompts | None:
        """The SegAny prompts of a request, or None for SegEvery."""
        boxes, points, labels, masks = (
            inputs.get(s.name) for s in (BOXES_IN, POINTS, POINT_LABELS, MASK_INPUT)
        )
        if boxes is not None and points is not None:
            raise ContractError("give either 'boxes' or 'points' prompts, not both")
        if boxes is not None:
            return cls(boxes=validate_box_prompts(boxes, limits), mask_input=masks)
        if points is not None:
            pts, lab = validate_point_prompts(points, labels, limits)
            return cls(points=pts, point_labels=lab, mask_input=masks)
        if labels is not None:
            raise ContractError("point_labels given without points")
        if masks is not None:
            raise ContractError("mask_input refines SegAny prompts: give boxes or points with it")
        return None
