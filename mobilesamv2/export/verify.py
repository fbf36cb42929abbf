"""Check a TensorRT engine against ONNX Runtime (FP32, CPU) on a fixed probe input before it is served.

The container's entrypoint (``mobilesamv2/runner/entrypoint.py``) runs every engine it builds or reuses on the
probe input of its model and compares the outputs with ONNX Runtime's on the ONNX file the engine was built
from:

- every output: the largest difference scaled by the output's magnitude, ``max|a - b| / max(1, max|b|)`` (the
  export's parity measure), against a tolerance per engine precision (FP32/TF32 or FP16);
- mask logits (outputs named ``*masks``): the IoU of ``logits > 0`` per prompt and mask, the lowest of them;
- any NaN or infinity in the engine's outputs fails the check.

Probe inputs (deterministic, no files needed):

- image encoder (inputs ``image``, ``image_size``): two synthetic canvases in one batch, a landscape and a
  portrait image (gradient, shapes, seeded noise) with noise in the padding the graph must zero;
- prompt decoder (``image_embeddings``, ``point_coords``, ``point_labels``): a fixed embedding (seeded,
  spatially smooth) with box prompts (labels 2/3) and, in a second call, point prompts as long as the engine's
  profile allows (the contract's largest prompt plus SAM's padding point, label -1) and short ones padded
  with -1;
- any other model: seeded normal values for its float inputs at the profile's opt shape.

How an engine is run is behind :class:`TensorRunner`: :class:`TrtexecRunner` runs
``trtexec --loadEngine --loadInputs --exportOutput`` (the container has trtexec; no CUDA Python bindings are
needed), :class:`OnnxRuntimeRunner` is the reference, and tests use fakes.

Runs on the container's Python 3.10 with numpy, onnx and onnxruntime (no torch).
"""

from __future__ import annotations

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
#: SAM's point labels.
LABEL_PADDING, LABEL_BACKGROUND, LABEL_FOREGROUND, LABEL_TOP_LEFT, LABEL_BOTTOM_RIGHT = -1, 0, 1, 2, 3
ENCODER_FRAME = 1024  # the decoder's prompt frame
SEED = 20241001


# --- tolerances and results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tolerances:
    """What an engine may differ from ONNX Runtime FP32 by on the probe input.

    ``max_scaled_diff_fp32`` applies to FP32 and TF32 engines (TF32 keeps 10 mantissa bits: ~1e-3 relative per
    product, which deep networks accumulate to ~1e-3..1e-2), ``max_scaled_diff_fp16`` to FP16 engines;
    ``min_mask_iou`` to mask logits of every precision (thresholded at 0, per prompt and mask).
    """

    max_scaled_diff_fp32: float = 1e-2
    max_scaled_diff_fp16: float = 5e-2
    min_mask_iou: float = 0.98

    def __post_init__(self) -> None:
        for name in ("max_scaled_diff_fp32", "max_scaled_diff_fp16"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number, got {value}")
        if not 0 <= self.min_mask_iou <= 1:
            raise ValueError(f"min_mask_iou must be in [0, 1], got {self.min_mask_iou}")

    def max_scaled_diff(self, precision: str) -> float:
        return self.max_scaled_diff_fp16 if precision.upper() == "FP16" else self.max_scaled_diff_fp32

    def to_json(self) -> dict[str, float]:
        return {
            "max_scaled_diff_fp32": self.max_scaled_diff_fp32,
            "max_scaled_diff_fp16": self.max_scaled_diff_fp16,
            "min_mask_iou": self.min_mask_iou,
        }


@dataclass
class OutputCheck:
    """One output of one probe case: the numbers and the verdict."""

    case: str
    output: str
    max_scaled_diff: float | None
    max_scaled_diff_tolerance: float
    mask_iou: float | None = None
    min_mask_iou: float | None = None
    non_finite: int = 0
    size: int = 0
    problem: str = ""  # why it failed ("" when it passed)

    @property
    def ok(self) -> bool:
        return not self.problem

    def describe(self) -> str:
        parts = [f"{self.case}: {self.output}"]
        if self.max_scaled_diff is not None:
            relation = "<=" if self.max_scaled_diff <= self.max_scaled_diff_tolerance else ">"
            parts.append(
                f"max scaled difference {_fmt(self.max_scaled_diff)} {relation} tolerance "
                f"{_fmt(self.max_scaled_diff_tolerance)}"
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
        iou = self.worst_mask_iou
        if iou is not None:
            parts.append(f"lowest mask IoU {iou:.4f} (minimum {self.tolerances.min_mask_iou:g})")
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
            "cases": self.cases,
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


def lowest_mask_iou(expected_logits: np.ndarray, got_logits: np.ndarray) -> float:
    """Lowest IoU of ``logits > 0`` over the masks of ``(N, C, H, W)`` logits (1.0 when both are empty)."""
    if expected_logits.size == 0:
        return 1.0
    rows = expected_logits.shape[0] * (expected_logits.shape[1] if expected_logits.ndim == 4 else 1)
    a = (expected_logits > 0).reshape(rows, -1)
    b = (np.nan_to_num(got_logits, nan=0.0) > 0).reshape(rows, -1)
    inter = (a & b).sum(1)
    union = (a | b).sum(1)
    return float(np.min(np.where(union > 0, inter / np.maximum(union, 1), 1.0)))


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
            check.mask_iou = lowest_mask_iou(reference, engine)
            check.min_mask_iou = tolerances.min_mask_iou
        if check.non_finite:
            check.problem = "the engine produced NaN or infinite values"
        elif not check.max_scaled_diff <= tolerance:
            check.problem = "the engine disagrees with ONNX Runtime"
        elif check.mask_iou is not None and check.mask_iou < tolerances.min_mask_iou:
            check.problem = "the engine's masks disagree with ONNX Runtime's"
    return checks


# --- probe inputs -------------------------------------------------------------------------------------------


@dataclass
class ProbeCase:
    name: str
    inputs: dict[str, np.ndarray]

    def shapes(self) -> dict[str, list[int]]:
        return {name: list(array.shape) for name, array in self.inputs.items()}


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
            [300, 600, 340, 650],  # small
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
    """The probe of a model, chosen by its input names (encoder, decoder, or generic)."""
    names = frozenset(spec.name for spec in inputs)
    by_name = {spec.name: spec for spec in inputs}
    if names == ENCODER_INPUTS:
        cases = encoder_probe(shapes)
    elif names == DECODER_INPUTS:
        dims = by_name["image_embeddings"].dims
        if "image_embeddings" in shapes:
            dims = tuple(shapes["image_embeddings"][1])
        if not all(isinstance(d, int) and d > 0 for d in dims) or len(dims) != 4:
            raise ValueError(f"image_embeddings needs a static 4-D shape, got {list(dims)}")
        cases = decoder_probe(shapes, dims)  # type: ignore[arg-type]
    else:
        cases = generic_probe(inputs, shapes)
    for case in cases:  # the engine must accept them: inside the profile, the graph's types
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
    return cases


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
    """The reference: ONNX Runtime's CPU provider, FP32."""

    name = "onnxruntime CPUExecutionProvider (FP32)"

    def __init__(self, threads: int = 0) -> None:
        self.threads = threads

    def run(
        self, model: Path, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]
    ) -> dict[str, np.ndarray]:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        session = ort.InferenceSession(os.fspath(model), options, providers=["CPUExecutionProvider"])
        outputs = session.run(list(output_names), dict(inputs))
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
    for case in cases:
        verification.cases[case.name] = case.shapes()
        expected = reference_runner.run(onnx_path, case.inputs, output_names)
        try:
            got = engine_runner.run(plan_path, case.inputs, output_names)
        except EngineRunError as exc:
            verification.error = f"{case.name}: {exc}"
            return verification
        verification.checks += compare_outputs(case.name, expected, got, precision, tolerances)
    return verification
