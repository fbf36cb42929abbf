"""Check a TensorRT engine against ONNX Runtime (FP32, CPU) on a fixed probe input before it is served.

The container's entrypoint (``mobilesamv2/runner/entrypoint.py``) runs every engine it builds, or reuses
without a recorded pass, on the probe input of its model and compares the outputs with ONNX Runtime's on the
ONNX file the engine was built from:

- every output: the largest difference scaled by the output's magnitude, ``max|a - b| / max(1, max|b|)`` (the
  export's parity measure), against a tolerance per engine precision (FP32/TF32 or FP16);
- mask logits (outputs named ``*masks``): the fraction of all mask pixels whose ``logits > 0`` differs, and
  the lowest IoU of ``logits > 0`` among the masks that cover at least ``min_mask_area`` of their frame. A
  tiny mask (a few low-res pixels) loses most of its IoU to one flipped pixel on its outline, which a reduced
  precision engine may flip with no visible change: it counts in the first measure only;
- any NaN or infinity in the engine's outputs fails the check.

Probe inputs (deterministic, no files needed), what the pipeline sends each model:

- image encoder (inputs ``image``, ``image_size``): two synthetic canvases in one batch, a landscape and a
  portrait image (gradient, shapes, seeded noise) with noise in the padding the graph must zero;
- prompt decoder (``image_embeddings``, ``point_coords``, ``point_labels``): a fixed embedding (seeded,
  spatially smooth) with box prompts (labels 2/3) of objects' sizes and, in a second call, point prompts as
  long as the engine's profile allows (the contract's largest prompt plus SAM's padding point, label -1) and
  short ones padded with -1;
- interactive decoder (those plus ``mask_input``, ``has_mask_input``): three clicks (one, two and three
  points with integer labels, SAM's padding point) without a previous mask (``has_mask_input`` 0), then the
  same clicks with one more point each and, as ``mask_input``, the low-res mask ONNX Runtime answered to the
  first call (``has_mask_input`` 1): SAM's refinement loop;
- any other model: seeded normal values for its float inputs at the profile's opt shape.

How an engine is run is behind :class:`TensorRunner`: :class:`TrtexecRunner` runs
``trtexec --loadEngine --loadInputs --exportOutput`` (the container has trtexec; no CUDA Python bindings are
needed), :class:`OnnxRuntimeRunner` is the reference, and tests use fakes.

Runs on the container's Python 3.10 with numpy, onnx and onnxruntime (no torch).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

ShapeRange = tuple[Sequence[int], Sequence[int], Sequence[int]]

ENCODER_INPUTS = frozenset({"image", "image_size"})
DECODER_INPUTS = frozenset({"image_embeddings", "point_coords", "point_labels"})
INTERACTIVE_INPUTS = DECODER_INPUTS | {"mask_input", "has_mask_input"}
#: SAM's point labels.
LABEL_PADDING, LABEL_BACKGROUND, LABEL_FOREGROUND, LABEL_TOP_LEFT, LABEL_BOTTOM_RIGHT = -1, 0, 1, 2, 3
ENCODER_FRAME = 1024  # the decoder's prompt frame
SEED = 20241001


# --- tolerances and results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tolerances:
    """What an engine may differ from ONNX Runtime FP32 by on the probe input.

    ``max_scaled_diff_fp32`` applies to FP32 and TF32 engines (TF32 keeps 10 mantissa bits: ~1e-3 relative per
    product, which deep networks accumulate to ~1e-3..1e-2), ``max_scaled_diff_fp16`` to FP16 engines. Mask
    logits (thresholded at 0), every precision: at most ``max_mask_disagreement`` of all their pixels may
    differ, and each mask covering at least ``min_mask_area`` of its frame must keep an IoU of
    ``min_mask_iou``.
    """

    max_scaled_diff_fp32: float = 1e-2
    max_scaled_diff_fp16: float = 5e-2
    min_mask_iou: float = 0.95
    max_mask_disagreement: float = 5e-3
    min_mask_area: float = 1e-2

    def __post_init__(self) -> None:
        for name in ("max_scaled_diff_fp32", "max_scaled_diff_fp16"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number, got {value}")
        for name in ("min_mask_iou", "max_mask_disagreement", "min_mask_area"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {value}")

    def max_scaled_diff(self, precision: str) -> float:
        return self.max_scaled_diff_fp16 if precision.upper() == "FP16" else self.max_scaled_diff_fp32

    def to_json(self) -> dict[str, float]:
        return {
            "max_scaled_diff_fp32": self.max_scaled_diff_fp32,
            "max_scaled_diff_fp16": self.max_scaled_diff_fp16,
            "min_mask_iou": self.min_mask_iou,
            "max_mask_disagreement": self.max_mask_disagreement,
            "min_mask_area": self.min_mask_area,
        }


@dataclass
class OutputCheck:
    """One output of one probe case: the numbers and the verdict."""

    case: str
    output: str
    max_scaled_diff: float | None
    max_scaled_diff_tolerance: float
    mask_iou: float | None = None  # lowest IoU of the masks of at least the minimum area (None: none was)
    min_mask_iou: float | None = None
    mask_disagreement: float | None = None  # fraction of mask pixels that differ
    max_mask_disagreement: float | None = None
    non_finite: int = 0
    size: int = 0
    problem: str = ""  # why it failed ("" when it passed)

    @property
    def ok(self) -> bool:
        return not self.problem

    @property
    def masks_agree(self) -> bool:
        """Within both mask tolerances (true for outputs that are not masks)."""
        too_many = self.mask_disagreement is not None and self.mask_disagreement > (
            self.max_mask_disagreement or 0.0
        )
        too_low = self.mask_iou is not None and self.mask_iou < (self.min_mask_iou or 0.0)
        return not (too_many or too_low)

    def describe(self) -> str:
        parts = [f"{self.case}: {self.output}"]
        if self.max_scaled_diff is not None:
            relation = "<=" if self.max_scaled_diff <= self.max_scaled_diff_tolerance else ">"
            parts.append(
                f"max scaled difference {_fmt(self.max_scaled_diff)} {relation} tolerance "
                f"{_fmt(self.max_scaled_diff_tolerance)}"
            )
        if self.mask_disagreement is not None and self.max_mask_disagreement is not None:
            relation = "<=" if self.mask_disagreement <= self.max_mask_disagreement else ">"
            parts.append(
                f"mask pixels differing (logits > 0) {self.mask_disagreement:.4%} {relation} "
                f"{self.max_mask_disagreement:.4%}"
            )
        if self.mask_iou is not None and self.min_mask_iou is not None:
            relation = ">=" if self.mask_iou >= self.min_mask_iou else "<"
            parts.append(f"mask IoU (logits > 0) {self.mask_iou:.4f} {relation} {self.min_mask_iou:g}")
        if self.non_finite:
            parts.append(f"{self.non_finite} of {self.size} values are NaN or infinite")
        text = ", ".join(parts)
        return f"{text}: {self.problem}" if self.problem else text

    def to_json(self) -> dict[str, Any]:
        return {
            "case": self.case,
            "output": self.output,
            "max_scaled_diff": _json_number(self.max_scaled_diff),
            "max_scaled_diff_tolerance": self.max_scaled_diff_tolerance,
            "mask_iou": _json_number(self.mask_iou),
            "min_mask_iou": self.min_mask_iou,
            "mask_disagreement": _json_number(self.mask_disagreement),
            "max_mask_disagreement": self.max_mask_disagreement,
            "non_finite": self.non_finite,
            "ok": self.ok,
            "problem": self.problem,
        }


@dataclass
class Verification:
    """The result of checking one engine."""

    model: str
    precision: str
    tolerances: Tolerances
    engine_runner: str
    reference_runner: str
    cases: dict[str, dict[str, list[int]]] = field(default_factory=dict)  # case -> input -> shape
    checks: list[OutputCheck] = field(default_factory=list)
    error: str = ""  # the engine could not be run at all
    probe: str = ""  # probe_digest of the first probe cases: a later check on other probes is another check

    @property
    def passed(self) -> bool:
        return not self.error and bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def worst_scaled_diff(self) -> float | None:
        values = [c.max_scaled_diff for c in self.checks if c.max_scaled_diff is not None]
        if not values:
            return None
        return math.nan if any(math.isnan(v) for v in values) else max(values)

    @property
    def worst_mask_iou(self) -> float | None:
        values = [c.mask_iou for c in self.checks if c.mask_iou is not None]
        return min(values) if values else None

    @property
    def worst_mask_disagreement(self) -> float | None:
        values = [c.mask_disagreement for c in self.checks if c.mask_disagreement is not None]
        return max(values) if values else None

    def summary(self) -> str:
        """One line: the worst numbers against their tolerances, and the verdict."""
        parts = []
        if self.error:
            parts.append(f"not run: {self.error.splitlines()[0]}")
        worst = self.worst_scaled_diff
        if worst is not None:
            parts.append(
                f"max scaled difference {_fmt(worst)} (tolerance "
                f"{_fmt(self.tolerances.max_scaled_diff(self.precision))})"
            )
        disagreement = self.worst_mask_disagreement
        if disagreement is not None:
            parts.append(
                f"mask pixels differing {disagreement:.4%} (at most "
                f"{self.tolerances.max_mask_disagreement:.4%})"
            )
        iou = self.worst_mask_iou
        if iou is not None:
            parts.append(
                f"lowest mask IoU {iou:.4f} (minimum {self.tolerances.min_mask_iou:g} for masks of "
                f">= {self.tolerances.min_mask_area:.0%} of the frame)"
            )
        non_finite = sum(c.non_finite for c in self.checks)
        if non_finite:
            parts.append(f"{non_finite} NaN/infinite values")
        verdict = "ok" if self.passed else "FAILED"
        return f"{self.model} ({self.precision}) vs ONNX Runtime FP32: {', '.join(parts)}: {verdict}"

    def failures(self) -> list[str]:
        """What failed, one line per output (the numbers and the tolerance)."""
        if self.error:
            return [self.error]
        if not self.checks:
            return ["no output was compared"]
        return [c.describe() for c in self.checks if not c.ok]

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "precision": self.precision,
            "engine_runner": self.engine_runner,
            "reference": self.reference_runner,
            "tolerances": self.tolerances.to_json(),
            "max_scaled_diff": _json_number(self.worst_scaled_diff),
            "min_mask_iou": _json_number(self.worst_mask_iou),
            "mask_disagreement": _json_number(self.worst_mask_disagreement),
            "cases": self.cases,
            "probe": self.probe,
            "checks": [c.to_json() for c in self.checks],
            "error": self.error,
        }


def _fmt(value: float) -> str:
    return "nan" if value is None or math.isnan(value) else f"{value:.3g}"


def _json_number(value: float | None) -> float | str | None:
    if value is None:
        return None
    return value if math.isfinite(value) else str(value)  # JSON has no NaN


# --- measures -----------------------------------------------------------------------------------------------


def scaled_max_diff(expected: np.ndarray, got: np.ndarray) -> float:
    """``max|a - b| / max(1, max|b|)``: NaN when either side has a NaN, infinite on infinities."""
    if expected.size == 0:
        return 0.0
    expected, got = expected.astype(np.float64), got.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(expected - got)
        if np.isnan(diff).any():
            return math.nan
        return float(diff.max() / max(1.0, float(np.abs(expected).max())))


def _binary_masks(logits: np.ndarray) -> np.ndarray:
    """``(N, C, H, W)`` (or ``(N, H, W)``) logits -> ``(masks, pixels)`` booleans of ``logits > 0``; NaN is
    background."""
    rows = logits.shape[0] * (logits.shape[1] if logits.ndim == 4 else 1)
    return (np.nan_to_num(logits, nan=0.0) > 0).reshape(rows, -1)


def mask_ious(expected_logits: np.ndarray, got_logits: np.ndarray) -> np.ndarray:
    """IoU of ``logits > 0`` per mask of ``(N, C, H, W)`` or ``(N, H, W)`` logits (1.0 where both are
    empty)."""
    a, b = _binary_masks(expected_logits), _binary_masks(got_logits)
    inter, union = (a & b).sum(1), (a | b).sum(1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def lowest_mask_iou(
    expected_logits: np.ndarray, got_logits: np.ndarray, min_area: float = 0.0
) -> float | None:
    """Lowest :func:`mask_ious` over the masks whose expected area is at least ``min_area`` of their frame
    (1.0 without masks; None when every mask is smaller)."""
    if expected_logits.size == 0:
        return 1.0
    area = _binary_masks(expected_logits).mean(1)
    ious = mask_ious(expected_logits, got_logits)[area >= min_area]
    return float(ious.min()) if ious.size else None


def mask_disagreement(expected_logits: np.ndarray, got_logits: np.ndarray) -> float:
    """Fraction of all mask pixels where ``logits > 0`` differs."""
    if expected_logits.size == 0:
        return 0.0
    return float((_binary_masks(expected_logits) != _binary_masks(got_logits)).mean())


def is_mask_output(name: str) -> bool:
    return name.endswith("masks")


def compare_outputs(
    case: str,
    expected: Mapping[str, np.ndarray],
    got: Mapping[str, np.ndarray],
    precision: str,
    tolerances: Tolerances,
) -> list[OutputCheck]:
    """Checks of every output of ``expected`` (the reference) against ``got`` (the engine)."""
    checks = []
    tolerance = tolerances.max_scaled_diff(precision)
    for name, value in expected.items():
        reference = np.asarray(value)
        check = OutputCheck(case, name, None, tolerance, size=int(reference.size))
        checks.append(check)
        if name not in got:
            check.problem = "the engine returned no such output"
            continue
        engine = np.asarray(got[name])
        if engine.shape != reference.shape:
            check.problem = f"shape {list(engine.shape)} differs from ONNX Runtime's {list(reference.shape)}"
            continue
        if not np.isfinite(reference).all():
            check.problem = "ONNX Runtime's own output has NaN or infinite values: the ONNX model is broken"
            continue
        check.non_finite = int((~np.isfinite(engine)).sum())
        check.max_scaled_diff = scaled_max_diff(reference, engine)
        if is_mask_output(name) and reference.ndim >= 3:
            check.mask_disagreement = mask_disagreement(reference, engine)
            check.max_mask_disagreement = tolerances.max_mask_disagreement
            check.mask_iou = lowest_mask_iou(reference, engine, tolerances.min_mask_area)
            check.min_mask_iou = tolerances.min_mask_iou
        if check.non_finite:
            check.problem = "the engine produced NaN or infinite values"
        elif not check.max_scaled_diff <= tolerance:
            check.problem = "the engine disagrees with ONNX Runtime"
        elif not check.masks_agree:
            check.problem = "the engine's masks disagree with ONNX Runtime's"
    return checks


# --- probe inputs -------------------------------------------------------------------------------------------


@dataclass
class ProbeCase:
    """One call of the model: named inputs; ``follow`` makes the next call from ONNX Runtime's outputs of this
    one (the interactive decoder's refinement takes the mask it answered before)."""

    name: str
    inputs: dict[str, np.ndarray]
    follow: Callable[[Mapping[str, np.ndarray]], ProbeCase] | None = None

    def shapes(self) -> dict[str, list[int]]:
        return {name: list(array.shape) for name, array in self.inputs.items()}


def probe_digest(cases: Sequence[ProbeCase]) -> str:
    """SHA-256 of the probe cases' names and input bytes: an earlier check counts only for the same probes."""
    digest = hashlib.sha256()
    for case in cases:
        digest.update(case.name.encode() + b"\0")
        for name, array in case.inputs.items():
            digest.update(f"{name}\0{array.dtype.str}\0{list(array.shape)}\0".encode())
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def probe_canvas(canvas: tuple[int, int], valid: tuple[int, int], seed: int) -> np.ndarray:
    """A deterministic ``canvas`` uint8 RGB image: gradients, a disc, a bar and noise inside ``valid``
    (``[h, w]`` at the top left), noise outside (the encoder graph zeroes it)."""
    rng = np.random.default_rng(seed)
    height, width = canvas
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    image = np.stack([x / width * 255, y / height * 255, (1 - (x + y) / (width + height)) * 255], -1)
    h, w = valid
    disc = (x - 0.35 * w) ** 2 + (y - 0.45 * h) ** 2 < (0.18 * min(h, w)) ** 2
    image[disc] = (230, 40, 40)
    bar = (np.abs(y - 0.75 * h) < 0.06 * h) & (x > 0.5 * w) & (x < 0.9 * w)
    image[bar] = (30, 60, 200)
    image += rng.normal(0, 8, image.shape)
    image[h:, :] = rng.integers(0, 256, (height - h, width, 3))
    image[:, w:] = rng.integers(0, 256, (height, width - w, 3))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def probe_embedding(shape: Sequence[int], seed: int = SEED) -> np.ndarray:
    """A fixed, spatially smooth image embedding (unit variance per channel, like a LayerNorm's output)."""
    rng = np.random.default_rng(seed)
    n, c, h, w = shape
    coarse = rng.standard_normal((n, c, max(h // 4, 1), max(w // 4, 1)))
    smooth = np.repeat(np.repeat(coarse, 4, axis=2), 4, axis=3)[:, :, :h, :w]
    return (0.8 * smooth + 0.6 * rng.standard_normal((n, c, h, w))).astype(np.float32)


def _axis_range(shapes: Mapping[str, ShapeRange], name: str, axis: int, default: int) -> tuple[int, int, int]:
    if name not in shapes:
        return default, default, default
    low, opt, high = shapes[name]
    return int(low[axis]), int(opt[axis]), int(high[axis])


def encoder_probe(shapes: Mapping[str, ShapeRange]) -> list[ProbeCase]:
    """Two canvases in one batch (one if the profile allows no more)."""
    _, _, max_batch = _axis_range(shapes, "image", 0, 2)
    height = _axis_range(shapes, "image", 1, ENCODER_FRAME)[2]
    width = _axis_range(shapes, "image", 2, ENCODER_FRAME)[2]
    # long side = the canvas, as the pipeline's resize makes it
    sizes = [(round(height * 0.75), width), (height, round(width * 2 / 3))][: max(1, min(2, max_batch))]
    images = np.stack([probe_canvas((height, width), s, SEED + i) for i, s in enumerate(sizes)])
    image_size = np.array(sizes, np.int32)
    return [ProbeCase(f"{len(sizes)} synthetic canvases", {"image": images, "image_size": image_size})]


def _boxes() -> np.ndarray:
    return np.array(
        [
            [100, 120, 420, 500],
            [0, 0, 1024, 1024],  # the whole frame
            [610, 40, 1000, 300],
            [300, 600, 420, 760],  # small: 30x40 pixels of the 256x256 low-res mask
            [700, 700, 1023, 1023],  # at the border
        ],
        np.float32,
    )


def decoder_probe(shapes: Mapping[str, ShapeRange], embedding_shape: Sequence[int]) -> list[ProbeCase]:
    """Box prompts, then point prompts as long as the profile allows (with padding points)."""
    embedding = probe_embedding(embedding_shape)
    min_prompts, _, max_prompts = _axis_range(shapes, "point_coords", 0, 8)
    min_points, _, max_points = _axis_range(shapes, "point_coords", 1, 2)
    cases = []
    boxes = _boxes()[: max(min_prompts, min(len(_boxes()), max_prompts))]
    if min_points <= 2 <= max_points:
        coords = boxes.reshape(-1, 2, 2)
        labels = np.tile(np.array([[LABEL_TOP_LEFT, LABEL_BOTTOM_RIGHT]], np.float32), (len(coords), 1))
        cases.append(ProbeCase(f"{len(coords)} box prompts", _decoder_inputs(embedding, coords, labels)))
    if max_points >= 2:
        rng = np.random.default_rng(SEED)
        count = max(min_prompts, min(3, max_prompts))
        coords = np.zeros((count, max_points, 2), np.float32)
        labels = np.full((count, max_points), LABEL_PADDING, np.float32)
        # prompt 0: the longest prompt the profile admits, its last point SAM's padding point;
        # prompt 1: one foreground point + padding; prompt 2: foreground + background + padding
        lengths = [max_points - 1, 1, min(2, max_points - 1)]
        for row in range(count):
            n = lengths[row % len(lengths)]
            coords[row, :n] = rng.uniform(16, ENCODER_FRAME - 16, (n, 2))
            labels[row, :n] = np.where(np.arange(n) % 3 == 2, LABEL_BACKGROUND, LABEL_FOREGROUND)
        cases.append(
            ProbeCase(
                f"{count} point prompts of {max_points} points (with padding)",
                _decoder_inputs(embedding, coords, labels),
            )
        )
    if not cases:
        raise ValueError(f"no decoder probe fits the profile's points per prompt {min_points}..{max_points}")
    return cases


def _decoder_inputs(embedding: np.ndarray, coords: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    return {"image_embeddings": embedding, "point_coords": coords, "point_labels": labels}


#: The interactive probe's clicks: (x, y, label) per point, three prompts of one, two and three points; the
#: refinement adds the last point of each to the same prompt.
CLICKS = (
    ((300.0, 420.0, LABEL_FOREGROUND),),
    ((640.0, 180.0, LABEL_FOREGROUND), (820.0, 260.0, LABEL_BACKGROUND)),
    ((820.0, 840.0, LABEL_FOREGROUND), (900.0, 760.0, LABEL_FOREGROUND), (720.0, 900.0, LABEL_BACKGROUND)),
)
REFINING_CLICKS = (
    (360.0, 470.0, LABEL_FOREGROUND),
    (700.0, 120.0, LABEL_BACKGROUND),
    (760.0, 960.0, LABEL_FOREGROUND),
)
#: The interactive decoder's outputs: tokens 1-3 are SAM's multimask candidates.
MULTIMASK_TOKENS = slice(1, 4)


def _click_prompts(prompts: Sequence[Sequence[tuple[float, float, float]]]) -> tuple[np.ndarray, np.ndarray]:
    """SAM's point prompts: each prompt's points, then padding points (label -1 at the origin) to one more
    than the longest prompt, as ``processing.boxes.points_to_prompts`` pads them."""
    width = max(len(p) for p in prompts) + 1
    coords = np.zeros((len(prompts), width, 2), np.float32)
    labels = np.full((len(prompts), width), LABEL_PADDING, np.float32)
    for row, prompt in enumerate(prompts):
        for column, (x, y, label) in enumerate(prompt):
            coords[row, column] = (x, y)
            labels[row, column] = label
    return coords, labels


def interactive_probe(shapes: Mapping[str, ShapeRange], embedding_shape: Sequence[int]) -> list[ProbeCase]:
    """Clicks without a previous mask, then (``follow``) the refinement of the same prompts with one more
    click each and the best of ONNX Runtime's multimask answers to the first call as ``mask_input``."""
    embedding = probe_embedding(embedding_shape)
    _, _, max_prompts = _axis_range(shapes, "point_coords", 0, len(CLICKS))
    clicks = CLICKS[: max(1, min(len(CLICKS), max_prompts))]
    coords, labels = _click_prompts(clicks)
    n, side = len(clicks), _axis_range(shapes, "mask_input", 2, 256)[2]

    def refine(outputs: Mapping[str, np.ndarray]) -> ProbeCase:
        masks, scores = np.asarray(outputs["masks"]), np.asarray(outputs["iou_predictions"])
        best = np.argmax(scores[:, MULTIMASK_TOKENS], axis=1) + MULTIMASK_TOKENS.start
        previous = masks[np.arange(n), best][:, None].astype(np.float32)
        refined = [(*prompt, REFINING_CLICKS[i]) for i, prompt in enumerate(clicks)]
        more_coords, more_labels = _click_prompts(refined)
        return ProbeCase(
            f"refinement of the {n} prompts with a previous mask",
            {
                **_decoder_inputs(embedding, more_coords, more_labels),
                "mask_input": previous,
                "has_mask_input": np.ones(n, np.float32),
            },
        )

    first = ProbeCase(
        f"{n} click prompts",
        {
            **_decoder_inputs(embedding, coords, labels),
            "mask_input": np.zeros((n, 1, side, side), np.float32),
            "has_mask_input": np.zeros(n, np.float32),
        },
        follow=refine,
    )
    return [first]


@dataclass(frozen=True)
class GraphInput:
    name: str
    dtype: np.dtype
    dims: tuple[int | str | None, ...]  # None / str: dynamic


def generic_probe(inputs: Sequence[GraphInput], shapes: Mapping[str, ShapeRange]) -> list[ProbeCase]:
    """Seeded normal values for float inputs at the profile's opt shape (or the graph's static shape)."""
    rng = np.random.default_rng(SEED)
    arrays = {}
    for spec in inputs:
        if spec.name in shapes:
            shape = tuple(int(d) for d in shapes[spec.name][1])
        elif all(isinstance(d, int) and d > 0 for d in spec.dims):
            shape = tuple(int(d) for d in spec.dims)  # type: ignore[arg-type]
        else:
            raise ValueError(f"no shape for input {spec.name!r}: it is dynamic and not in the engine profile")
        if spec.dtype.kind != "f":
            raise ValueError(f"no probe values for input {spec.name!r} of type {spec.dtype}")
        arrays[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
    return [ProbeCase("seeded normal inputs", arrays)]


def probe_cases(inputs: Sequence[GraphInput], shapes: Mapping[str, ShapeRange]) -> list[ProbeCase]:
    """The probe of a model, chosen by its input names (encoder, decoder, interactive decoder, or generic)."""
    names = frozenset(spec.name for spec in inputs)
    by_name = {spec.name: spec for spec in inputs}
    if names == ENCODER_INPUTS:
        cases = encoder_probe(shapes)
    elif names in (DECODER_INPUTS, INTERACTIVE_INPUTS):
        dims = by_name["image_embeddings"].dims
        if "image_embeddings" in shapes:
            dims = tuple(shapes["image_embeddings"][1])
        if not all(isinstance(d, int) and d > 0 for d in dims) or len(dims) != 4:
            raise ValueError(f"image_embeddings needs a static 4-D shape, got {list(dims)}")
        probe = decoder_probe if names == DECODER_INPUTS else interactive_probe
        cases = probe(shapes, dims)  # type: ignore[arg-type]
    else:
        cases = generic_probe(inputs, shapes)
    for case in cases:
        fit_to_engine(case, inputs, shapes)
    return cases


def fit_to_engine(case: ProbeCase, inputs: Sequence[GraphInput], shapes: Mapping[str, ShapeRange]) -> None:
    """Give the case's inputs the graph's types; ``ValueError`` when one lies outside the engine's profile."""
    by_name = {spec.name: spec for spec in inputs}
    for name, array in case.inputs.items():
        case.inputs[name] = array.astype(by_name[name].dtype, copy=False)
        if name in shapes:
            low, _, high = shapes[name]
            if len(low) != array.ndim or any(
                not (a <= d <= b) for a, d, b in zip(low, array.shape, high, strict=True)
            ):
                raise ValueError(
                    f"probe {case.name!r}: {name} shape {list(array.shape)} is outside the engine "
                    f"profile {list(low)}..{list(high)}"
                )


def graph_inputs(onnx_path: str | os.PathLike[str]) -> tuple[list[GraphInput], list[str]]:
    """Inputs (name, numpy dtype, dims) and output names of an ONNX graph (initializers not counted)."""
    import onnx
    from onnx import helper

    graph = onnx.load(os.fspath(onnx_path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    inputs = []
    for value in graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type))
        dims = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim
        )
        inputs.append(GraphInput(value.name, dtype, dims))
    return inputs, [value.name for value in graph.output]


# --- running models -----------------------------------------------------------------------------------------


class EngineRunError(RuntimeError):
    """The engine could not be run on the probe input (the message says why)."""


class TensorRunner(Protocol):
    """Runs one model file on named inputs and returns the named outputs."""

    name: str

    def run(
        self, model: Path, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]
    ) -> dict[str, np.ndarray]: ...


class OnnxRuntimeRunner:
    """The reference: ONNX Runtime's CPU provider, FP32, with as many threads as this process may use
    (``glue.available_cpus``: the affinity and the cgroup quota; ONNX Runtime's own default counts the host's
    cores, which oversubscribes a pod limited to a few CPUs). The session of the last model is kept for its
    next probe case."""

    name = "onnxruntime CPUExecutionProvider (FP32)"

    def __init__(self, threads: int | None = None) -> None:
        if threads is None:
            from mobilesamv2.inside_triton.glue import available_cpus

            threads = available_cpus()
        self.threads = threads
        self._session: tuple[str, Any] | None = None

    def session_options(self):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        return options

    def run(
        self, model: Path, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]
    ) -> dict[str, np.ndarray]:
        import onnxruntime as ort

        path = os.fspath(model)
        if self._session is None or self._session[0] != path:
            self._session = None  # one model's session at a time: the encoder's holds hundreds of MB
            session = ort.InferenceSession(path, self.session_options(), providers=["CPUExecutionProvider"])
            self._session = (path, session)
        outputs = self._session[1].run(list(output_names), dict(inputs))
        return dict(zip(output_names, outputs, strict=True))


Run = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]

_TRTEXEC_NAME = re.compile(r"^[A-Za-z0-9_.\-/]+$")
_NON_JSON_NUMBER = re.compile(r"(?<=[\[,\s])(-?)(nan|inf(?:inity)?)(?=[\s,\]])", re.IGNORECASE)


def trtexec_inference_command(
    trtexec: str,
    plan: str | os.PathLike[str],
    input_files: Mapping[str, str | os.PathLike[str]],
    shapes: Mapping[str, Sequence[int]],
    output_json: str | os.PathLike[str],
) -> list[str]:
    """One inference of ``plan`` on the raw input files, outputs written as JSON (TensorRT 10 trtexec)."""
    for name, path in input_files.items():
        for text in (name, os.fspath(path)):
            if not _TRTEXEC_NAME.match(text):  # trtexec splits its specs on ',' and ':'
                raise ValueError(f"{text!r} cannot be passed to trtexec --loadInputs")
    return [
        trtexec,
        f"--loadEngine={os.fspath(plan)}",
        "--shapes=" + ",".join(f"{n}:{'x'.join(str(int(d)) for d in s)}" for n, s in shapes.items()),
        "--loadInputs=" + ",".join(f"{n}:{os.fspath(p)}" for n, p in input_files.items()),
        f"--exportOutput={os.fspath(output_json)}",
        # one inference, no timing runs
        "--iterations=1",
        "--warmUp=0",
        "--duration=0",
        "--avgRuns=1",
    ]


def read_trtexec_outputs(text: str) -> dict[str, np.ndarray]:
    """trtexec's ``--exportOutput`` JSON (``[{"name", "dimensions", "values"}, ...]``) -> arrays.

    trtexec prints floats with C++ streams, so NaN and infinities appear as ``nan``/``-nan``/``inf``, which
    JSON does not have; they are read as NaN and infinities. ``dimensions`` is read as the integers it lists.
    """

    def token(match: re.Match) -> str:
        if match.group(2).lower() == "nan":
            return "NaN"
        return "-Infinity" if match.group(1) else "Infinity"

    entries = json.loads(_NON_JSON_NUMBER.sub(token, text))
    outputs = {}
    for entry in entries:
        dims = [int(d) for d in re.findall(r"-?\d+", str(entry["dimensions"]))]
        values = np.asarray(entry["values"], np.float64)
        if values.size != int(np.prod(dims)):
            raise ValueError(f"{entry['name']}: {values.size} values for dimensions {dims}")
        outputs[entry["name"]] = values.reshape(dims)
    return outputs


class TrtexecRunner:
    """Runs an engine with ``trtexec --loadEngine=... --loadInputs=... --exportOutput=...``."""

    name = "trtexec --loadEngine --exportOutput"

    def __init__(self, trtexec: str, run: Run, workdir: str | os.PathLike[str] | None = None) -> None:
        self.trtexec, self._run, self.workdir = trtexec, run, workdir

    def run(
        self, model: Path, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]
    ) -> dict[str, np.ndarray]:
        with tempfile.TemporaryDirectory(prefix="mobilesamv2-verify-", dir=self.workdir) as scratch:
            files = {}
            for i, (name, array) in enumerate(inputs.items()):
                path = Path(scratch) / f"input{i}.bin"
                np.ascontiguousarray(array).tofile(path)
                files[name] = path
            output_json = Path(scratch) / "outputs.json"
            command = trtexec_inference_command(
                self.trtexec, model, files, {n: a.shape for n, a in inputs.items()}, output_json
            )
            result = self._run(command)
            if result.returncode != 0 or not output_json.is_file():
                text = f"{result.stdout or ''}\n{result.stderr or ''}"
                log = [line for line in text.splitlines() if line.strip()][-15:]
                raise EngineRunError(
                    f"trtexec could not run {model} (exit {result.returncode}):\n  "
                    + "\n  ".join(log or ["(no output)"])
                    + f"\n  command: {' '.join(command)}"
                )
            outputs = read_trtexec_outputs(output_json.read_text())
        missing = [n for n in output_names if n not in outputs]
        if missing:
            raise EngineRunError(
                f"trtexec returned no output {', '.join(missing)} (got {', '.join(outputs)})"
            )
        return {n: outputs[n] for n in output_names}


# --- one engine ---------------------------------------------------------------------------------------------


def probe_for(onnx_path: Path, shapes: Mapping[str, ShapeRange]) -> tuple[list[ProbeCase], list[str]]:
    """The model's probe cases (see :func:`probe_cases`) and its output names."""
    inputs, output_names = graph_inputs(onnx_path)
    return probe_cases(inputs, shapes), output_names


def verify_engine(
    model: str,
    onnx_path: Path,
    plan_path: Path,
    precision: str,
    shapes: Mapping[str, ShapeRange],
    engine_runner: TensorRunner,
    reference_runner: TensorRunner,
    tolerances: Tolerances | None = None,
) -> Verification:
    """Run the engine and ONNX Runtime on the model's probe input and compare (see the module docstring)."""
    tolerances = tolerances or Tolerances()
    inputs, output_names = graph_inputs(onnx_path)
    verification = Verification(
        model, precision.upper(), tolerances, engine_runner.name, reference_runner.name
    )
    try:
        cases = probe_cases(inputs, shapes)
    except ValueError as exc:
        verification.error = f"no probe input: {exc}"
        return verification
    verification.probe = probe_digest(cases)
    pending = list(cases)
    while pending:
        case = pending.pop(0)
        verification.cases[case.name] = case.shapes()
        expected = reference_runner.run(onnx_path, case.inputs, output_names)
        try:
            got = engine_runner.run(plan_path, case.inputs, output_names)
        except EngineRunError as exc:
            verification.error = f"{case.name}: {exc}"
            return verification
        verification.checks += compare_outputs(case.name, expected, got, precision, tolerances)
        if case.follow is not None:
            following = case.follow(expected)
            try:
                fit_to_engine(following, inputs, shapes)
            except ValueError as exc:
                verification.error = f"no probe input: {exc}"
                return verification
            pending.append(following)
    return verification
