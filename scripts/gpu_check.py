r"""One-call GPU check of the pipeline's networks and the device mask postprocess, as a markdown + JSON table.

    python3 scripts/gpu_check.py --device cuda --out OUT/gpu_check.md [--weights DIR]

What one run measures, on CUDA (``--device cpu``: the same with small counts, about a minute on 2 cores):

- latency (median after warm-ups) of each network in PyTorch: the object-aware detector on the letterboxed
  image (bus.jpg), the image encoder (EfficientViT-L2) at batch 1, the prompt decoder at 1 / 50 / 300 box
  prompts in SAM's plain formulation (``modeling.sam.PromptDecoder``, the TensorRT graph) and the factorized
  one (``modeling.fast_decoder.FactorizedPromptDecoder``, the ONNX Runtime graph); the mask postprocess at 50
  and 300 masks on the 1080x810 image: ``TorchPostprocessor`` on the device and ``HostPostprocessor`` (numpy/
  OpenCV on the CPU) for comparison;
- FP32 against reduced precision (TF32, FP16 autocast, BF16 autocast): encoder embeddings (largest difference
  scaled by the embedding's magnitude, NaN/inf count), decoder masks (IoU of ``logits > 0`` against FP32, per
  mask: min and mean) for both decoders on the FP32 embedding, and encoder + decoder together;
- parity checks, which decide the exit status: the factorized decoder against the plain one (FP32); no NaN/inf
  in FP32; the device postprocess against the host one on the decoder's real logits (the detector's boxes on
  the image): RLE strings identical to the host's on OpenCV's own resize code (``cv2.ipp`` off), and mask IoU
  against opencv-python as shipped (IPP resizes some of the host's chunks with slightly different
  coefficients, see ``mobilesamv2.processing.device_masks``); the factorized decoder exported to ONNX and run
  with ONNX Runtime (CUDA provider when installed, else CPU) against PyTorch (rows skipped without
  onnxruntime, onnx and onnxscript, or with ``--onnx off``).

It names the machine (GPU, driver, torch / CUDA / cuDNN versions), writes the tables (markdown, with the JSON
appended) to ``--out`` and the JSON beside it (``.json``), rewriting both after every section so that a run
cut short still reports what it measured, and exits 1 when a parity check fails (2: bad arguments or no
CUDA). Reduced-precision rows are informational ("warn" on NaN/inf or low agreement) unless
``--strict-precision``.

Weights: ``--weights DIR`` with the official files (``ObjectAwareModel.pt``, ``Prompt_guided_Mask_Decoder.pt``
and the encoder's, e.g. ``l2.pt``); without it, seeded random weights in the official formats are built in a
temporary folder (``mobilesamv2.fake_checkpoints.write_all``, the chosen encoder only: ~35-80 s on 2 CPU
cores). Latencies do not depend on the weights' values; agreement numbers of random weights are indicative
only.

The GPU machine (kind nvidia-h200: python3.12, torch 2.11 + CUDA, numpy 2, onnxruntime CPU, opencv-python-
headless, no ultralytics, no network). Once, here, in the repository root (ultralytics needs none of its own
dependencies that the machine lacks for this script: polars, ultralytics-thop and ultralytics-platform stay
away)::

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl ultralytics==8.4.190

Then ONE ``run`` of the device tool with ``carry: [".whl"]`` and ``timeout_s: 420`` (the check should take 2-4
minutes; 7 at most leaves time for a second try within a session's 15 device minutes). Its command,
:data:`DEVICE_COMMAND` (``--dry-run`` prints it on one line); the report comes back as ``gpu_check.md`` and
``gpu_check.json``, and its tables end the output::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl && export PYTHONPATH=/tmp/site || exit; \
        PYTHONUNBUFFERED=1 python3 scripts/gpu_check.py --device cuda --out $OUT/gpu_check.md

The script finds the repository's packages by itself (``mobilesamv2`` and ``client/``) and needs no install;
it uses no torch feature newer than 2.4 (run here with torch 2.14, numpy 1.26 and 2.4, with and without
onnxruntime). ``--dry-run`` checks the arguments and prints the plan without importing torch.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
DEVICE_COMMAND = (
    "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "
    ".whl/*.whl && export PYTHONPATH=/tmp/site || exit; "
    "PYTHONUNBUFFERED=1 python3 scripts/gpu_check.py --device cuda --out $OUT/gpu_check.md"
)
"""The device tool's ``run`` command (carry ``.whl``): the wheels, then the check (module docstring)."""
PRECISIONS = ("fp32", "tf32", "fp16", "bf16")
ENCODER_FILES = {"efficientvit_l2": "l2.pt", "tiny_vit": "mobile_sam.pt", "sam_vit_h": "sam_vit_h_4b8939.pth"}
MODEL_FILES = ("ObjectAwareModel.pt", "Prompt_guided_Mask_Decoder.pt")
DEFAULTS = {
    "cuda": {"prompts": "1,50,300", "masks": "50,300", "precision_prompts": 50, "runs": 20, "warmup": 2},
    "cpu": {"prompts": "1,4", "masks": "4,8", "precision_prompts": 4, "runs": 2, "warmup": 0},
}
DEFAULT_PRECISIONS = {"cuda": "fp32,tf32,fp16,bf16", "cpu": "fp32,bf16"}

# Limits of the parity checks (they decide the exit status).
FACTORIZED_MAX_DIFF = 1e-3  # the factorized decoder equals the plain one to float rounding (1e-4 measured)
MIN_PARITY_IOU = 0.999  # masks of two paths that should agree
ONNX_MAX_DIFF = 5e-3  # the export's own parity tolerance
# Reduced precision: below these a row says "warn" (informational unless --strict-precision).
PRECISION_MIN_IOU = 0.99
PRECISION_MAX_DIFF = 0.05


# ------------------------------------------------------------------------------------------- pure helpers


def scaled_max_diff(expected: np.ndarray, got: np.ndarray) -> float:
    """``max|a - b| / max(1, max|a|)``: the export's parity measure (inf on a shape mismatch or NaN)."""
    expected, got = np.asarray(expected, np.float64), np.asarray(got, np.float64)
    if expected.shape != got.shape:
        return float("inf")
    if expected.size == 0:
        return 0.0
    diff = np.abs(expected - got)
    if not np.isfinite(diff).all():
        return float("inf")
    return float(diff.max() / max(1.0, float(np.abs(expected).max())))


def mask_ious(expected_logits: np.ndarray, got_logits: np.ndarray) -> np.ndarray:
    """Per-mask IoU of ``logits > 0`` (or of boolean masks) of two runs, first axis = masks; 1 when both are
    empty."""
    a = np.asarray(expected_logits)
    b = np.asarray(got_logits)
    a, b = (a if a.dtype == np.bool_ else a > 0), (b if b.dtype == np.bool_ else b > 0)
    inter = (a & b).reshape(len(a), -1).sum(1)
    union = (a | b).reshape(len(a), -1).sum(1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def mask_agreement(expected_logits: np.ndarray, got_logits: np.ndarray) -> float:
    """Lowest IoU over masks between ``logits > 0`` of both runs (1.0 = identical masks)."""
    ious = mask_ious(expected_logits, got_logits)
    return float(ious.min()) if len(ious) else 1.0


def nonfinite(array: np.ndarray) -> int:
    """How many values are NaN or infinite."""
    return int(np.size(array) - np.count_nonzero(np.isfinite(array)))


def parse_counts(text: str, what: str) -> list[int]:
    """``"1,50,300"`` -> ``[1, 50, 300]``; ValueError unless all are positive integers."""
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{what}: expected comma-separated positive integers, got {text!r}") from None
    if not counts or min(counts) < 1:
        raise ValueError(f"{what}: expected comma-separated positive integers, got {text!r}")
    return counts


def parse_precisions(text: str, device: str) -> list[str]:
    chosen = [p.strip() for p in text.split(",") if p.strip()]
    unknown = sorted(set(chosen) - set(PRECISIONS))
    if unknown:
        raise ValueError(f"--precisions: unknown {', '.join(unknown)} (choose from {', '.join(PRECISIONS)})")
    if "fp32" not in chosen:
        raise ValueError("--precisions must include fp32 (the reference of every comparison)")
    if device == "cpu" and "tf32" in chosen:
        raise ValueError("--precisions: tf32 exists on CUDA only")
    return [p for p in PRECISIONS if p in chosen]


def timed(fn: Callable[[], object], runs: int, sync: Callable[[], None], warmup: int = 1) -> dict:
    """Median and min wall time (ms) of ``runs`` calls after ``warmup`` calls, each followed by ``sync``."""
    for _ in range(warmup):
        fn()
        sync()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "runs": runs}


def median_ms(fn: Callable[[], object], runs: int, sync: Callable[[], None]) -> float:
    return timed(fn, runs, sync)["median_ms"]


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not np.isfinite(value):
            return str(value)
        if value == 0 or 1e-3 <= abs(value) < 1e5:
            return f"{value:.6g}" if abs(value) < 1 else f"{value:.2f}"
        return f"{value:.2e}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


LATENCY_COLUMNS = ("stage", "variant", "precision", "n", "median_ms", "min_ms", "per_item_ms", "runs")
AGREEMENT_COLUMNS = ("check", "against", "metric", "value", "limit", "status")


def format_report(report: dict) -> str:
    """The report as markdown: the machine, the settings, the latency and agreement tables, the verdict."""
    env, settings = report["environment"], report["settings"]
    verdict = report.get("verdict", "incomplete")
    lines = [f"# GPU check: {env.get('gpu') or env.get('cpu', 'CPU')}", ""]
    lines.append(markdown_table(("", ""), [(k, v) for k, v in env.items()]))
    lines += ["", "Settings: " + ", ".join(f"{k} {_fmt(v)}" for k, v in settings.items()), ""]
    lines.append(f"**Result: {verdict}**")
    lines += ["", "## Latency", ""]
    lines.append(
        markdown_table(LATENCY_COLUMNS, [[r.get(c) for c in LATENCY_COLUMNS] for r in report["latency"]])
    )
    lines += ["", "## Agreement", ""]
    lines.append(
        markdown_table(
            AGREEMENT_COLUMNS, [[r.get(c) for c in AGREEMENT_COLUMNS] for r in report["agreement"]]
        )
    )
    if report.get("errors"):
        lines += ["", "## Errors", ""] + [f"- {e}" for e in report["errors"]]
    lines += ["", "## JSON", "", "```json", json.dumps(report, indent=1, default=str), "```", ""]
    return "\n".join(lines)


def parity_failures(report: dict) -> list[dict]:
    """Agreement rows that decide the exit status and did not pass."""
    return [r for r in report["agreement"] if r["status"] in ("FAIL", "error")]


# ------------------------------------------------------------------------------------------------ arguments


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--out", type=Path, default=None, help="markdown report (JSON beside it, .json)")
    parser.add_argument(
        "--weights", type=Path, default=None, help="official checkpoint files (default: seeded)"
    )
    parser.add_argument("--encoder", choices=sorted(ENCODER_FILES), default="efficientvit_l2")
    parser.add_argument("--image", type=Path, default=None, help="test image (default: ultralytics' bus.jpg)")
    parser.add_argument("--prompts", default=None, help="decoder prompt counts (cuda 1,50,300; cpu 1,4)")
    parser.add_argument("--masks", default=None, help="postprocess mask counts (cuda 50,300; cpu 4,8)")
    parser.add_argument("--precision-prompts", type=int, default=None, help="prompts of the precision rows")
    parser.add_argument("--precisions", default=None, help="subset of fp32,tf32,fp16,bf16 (cpu: no tf32)")
    parser.add_argument("--runs", type=int, default=None, help="timed runs per row (cuda 20, cpu 2)")
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed runs after each row's first call (cuda 2, cpu 0)"
    )
    parser.add_argument("--onnx", choices=("auto", "off"), default="auto", help="ONNX Runtime rows")
    parser.add_argument("--seed", type=int, default=0, help="seed of the built weights")
    parser.add_argument("--strict-precision", action="store_true", help="reduced-precision warnings fail too")
    parser.add_argument("--dry-run", action="store_true", help="check the arguments and print the plan only")
    args = parser.parse_args(argv)
    defaults = DEFAULTS[args.device]
    for name in ("prompts", "masks", "precision_prompts", "runs", "warmup"):
        if getattr(args, name) is None:
            setattr(args, name, defaults[name])
    if args.precisions is None:
        args.precisions = DEFAULT_PRECISIONS[args.device]
    return args


def validate(args: argparse.Namespace) -> list[str]:
    """Problems with the arguments and inputs (empty: fine); fills the parsed lists into ``args``."""
    problems = []
    try:
        args.prompt_counts = parse_counts(args.prompts, "--prompts")
        args.mask_counts = parse_counts(args.masks, "--masks")
        args.precision_list = parse_precisions(args.precisions, args.device)
    except ValueError as exc:
        problems.append(str(exc))
    if args.precision_prompts < 1:
        problems.append("--precision-prompts must be >= 1")
    if args.runs < 1 or args.warmup < 0:
        problems.append("--runs must be >= 1 and --warmup >= 0")
    if args.weights is not None:
        needed = [*MODEL_FILES, ENCODER_FILES[args.encoder]]
        missing = [name for name in needed if not (args.weights / name).is_file()]
        if missing:
            problems.append(f"--weights {args.weights}: missing {', '.join(missing)}")
    if args.image is not None and not args.image.is_file():
        problems.append(f"--image {args.image}: no such file")
    if args.out is not None and not args.out.parent.is_dir():
        problems.append(f"--out {args.out}: folder {args.out.parent} does not exist")
    return problems


def plan(args: argparse.Namespace) -> dict:
    return {
        "device": args.device,
        "weights": str(args.weights) if args.weights else f"seeded random weights (seed {args.seed}), built",
        "encoder": args.encoder,
        "image": str(args.image) if args.image else "bus.jpg (ultralytics assets)",
        "out": [str(args.out), str(args.out.with_suffix(".json"))] if args.out else None,
        "latency": {
            "discovery": "letterboxed image, fp32",
            "encoder": f"batch 1, {', '.join(args.precision_list)}",
            "decoder": {
                "formulations": ["plain (PromptDecoder)", "factorized (FactorizedPromptDecoder)"],
                "prompts": args.prompt_counts,
                "reduced precision at": max(args.prompt_counts),
            },
            "postprocess": {"masks": args.mask_counts, "paths": ["TorchPostprocessor", "HostPostprocessor"]},
        },
        "agreement": {
            "precisions": args.precision_list,
            "decoder prompts": args.precision_prompts,
            "parity": [
                "factorized vs plain decoder (fp32)",
                "no NaN/inf in fp32",
                "TorchPostprocessor vs HostPostprocessor (OpenCV's own path: identical; IPP: IoU)",
                "ONNX Runtime decoder vs PyTorch" if args.onnx == "auto" else "ONNX rows off",
            ],
        },
        "prompts": args.prompt_counts,
        "masks": args.mask_counts,
        "runs": args.runs,
        "warmup": args.warmup,
        "strict_precision": args.strict_precision,
        "device_command": DEVICE_COMMAND,
    }


# ----------------------------------------------------------------------------------------------- the check


def _import_paths() -> None:
    """The repository's packages without an install (the GPU machine has a bare checkout)."""
    for module, folder in (("mobilesamv2", REPO_ROOT), ("segment_everything_contract", REPO_ROOT / "client")):
        if importlib.util.find_spec(module) is None:
            sys.path.insert(0, str(folder))


def _ultralytics_offline() -> None:
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "False")
    os.environ.setdefault("YOLO_CONFIG_DIR", os.path.join(tempfile.gettempdir(), "mobilesamv2-ultralytics"))


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return None


def _driver_version() -> str:
    try:
        import pynvml

        pynvml.nvmlInit()
        driver = pynvml.nvmlSystemGetDriverVersion()
        return driver.decode() if isinstance(driver, bytes) else str(driver)
    except Exception:
        pass
    try:
        import subprocess

        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "unknown"
    except Exception:
        return "unknown"


def environment(device: str) -> dict:
    import cv2
    import torch

    env: dict[str, Any] = {}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update(
            gpu=torch.cuda.get_device_name(0),
            driver=_driver_version(),
            compute_capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
            memory_gib=round(props.total_memory / 2**30, 1),
        )
    else:
        env.update(cpu=platform.processor() or platform.machine(), torch_threads=torch.get_num_threads())
    env.update(
        torch=torch.__version__,
        torch_cuda=torch.version.cuda,
        cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        python=platform.python_version(),
        numpy=np.__version__,
        opencv=cv2.__version__,
        opencv_ipp=bool(cv2.ipp.useIPP()),
        onnxruntime=_version("onnxruntime"),
        ultralytics=_version("ultralytics"),
    )
    return env


@contextlib.contextmanager
def precision(mode: str, device_type: str) -> Iterator[None]:
    """FP32 (TF32 off), TF32 (matmul and cuDNN), or FP16 / BF16 autocast (TF32 off)."""
    import torch

    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = mode == "tf32"
    try:
        if mode in ("fp16", "bf16"):
            with torch.autocast(device_type, dtype=torch.float16 if mode == "fp16" else torch.bfloat16):
                yield
        else:
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@contextlib.contextmanager
def opencv_ipp(enabled: bool) -> Iterator[None]:
    import cv2

    saved = cv2.ipp.useIPP()
    cv2.ipp.setUseIPP(enabled)
    try:
        yield
    finally:
        cv2.ipp.setUseIPP(saved)


class Report:
    """The rows so far; written to ``--out`` after every section."""

    def __init__(self, out: Path | None, env: dict, settings: dict) -> None:
        self.out = out
        self.data: dict[str, Any] = {
            "environment": env,
            "settings": settings,
            "latency": [],
            "agreement": [],
            "errors": [],
        }

    def latency(self, stage: str, variant: str, precision_: str, n: int, timing: dict) -> None:
        row = {"stage": stage, "variant": variant, "precision": precision_, "n": n, **timing}
        row["per_item_ms"] = timing["median_ms"] / n
        self.data["latency"].append(row)
        print(
            f"  {stage:<12} {variant:<34} {precision_:<5} N={n:<4} {timing['median_ms']:9.2f} ms", flush=True
        )

    def agreement(
        self, check: str, against: str, metric: str, value: Any, limit: str | None, status: str
    ) -> None:
        value = value.item() if isinstance(value, np.generic) else value
        row = {"check": check, "against": against, "metric": metric, "value": value, "limit": limit}
        row["status"] = status
        self.data["agreement"].append(row)
        print(f"  {check:<42} {metric:<22} {_fmt(value):>12}  {status}", flush=True)

    def error(self, section: str, exc: BaseException) -> None:
        message = f"{section}: {type(exc).__name__}: {exc}"
        self.data["errors"].append(message)
        self.agreement(section, "-", "error", str(exc)[:200], None, "error")
        traceback.print_exc()

    def save(self, verdict: str | None = None) -> None:
        if verdict is not None:
            self.data["verdict"] = verdict
        if self.out is None:
            return
        self.out.write_text(format_report(self.data))
        self.out.with_suffix(".json").write_text(json.dumps(self.data, indent=1, default=str))


def _status(passed: bool, parity: bool, strict: bool = False) -> str:
    if passed:
        return "ok" if parity else "info"
    return "FAIL" if parity or strict else "warn"


class GpuCheck:
    """The sections of one check, in order; each one's rows go to the report, which is saved after it."""

    def __init__(self, args: argparse.Namespace, stack: contextlib.ExitStack) -> None:
        import cv2
        import torch

        from mobilesamv2.assets import bus_jpg

        self.args, self.stack = args, stack
        self.device = torch.device(args.device)
        self.sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
        self.strict = args.strict_precision
        self.image_path = Path(args.image or bus_jpg())
        self.image = cv2.cvtColor(cv2.imread(str(self.image_path)), cv2.COLOR_BGR2RGB)
        self.h, self.w = self.image.shape[:2]
        settings = {
            "image": f"{self.image_path.name} {self.h}x{self.w}",
            "encoder": args.encoder,
            "runs": args.runs,
            "warmup": args.warmup,
            "prompts": args.prompt_counts,
            "masks": args.mask_counts,
            "precision_prompts": args.precision_prompts,
        }
        self.report = Report(args.out, environment(args.device), settings)
        self.settings = settings
        print(json.dumps(self.report.data["environment"]), flush=True)

    # --- helpers ------------------------------------------------------------------------------------------

    def time(self, fn: Callable[[], object], host: bool = False, called: bool = True) -> dict:
        """Median of ``--runs`` calls after ``--warmup`` untimed ones; ``called``: the row's first call
        (kernel selection, allocations) was made already for its output, else one more is made first."""
        sync = (lambda: None) if host else self.sync
        if not called:
            fn()
            sync()
        if host:  # CPU work beside the device's: at most 3 runs
            return timed(fn, min(self.args.runs, 3), sync, 0)
        return timed(fn, self.args.runs, sync, self.args.warmup)

    def prompts(self, n: int):
        from mobilesamv2.export.onnx_export import box_prompts

        coords, labels = box_prompts(n, seed=n)
        return coords.to(self.device), labels.to(self.device)

    def precision(self, mode: str):
        return precision(mode, self.device.type)

    def run(self) -> int:
        self.load()
        for section in (self.discovery, self.encoder_rows, self.decoder_rows, self.precision_rows):
            self.section(section)
        self.section(self.postprocess_rows)
        self.section(self.onnx_rows)
        failures = parity_failures(self.report.data)
        verdict = "all parity checks ok" if not failures else f"{len(failures)} parity check(s) failed"
        self.report.save(verdict)
        print(format_report({**self.report.data, "verdict": verdict}).split("## JSON")[0], flush=True)
        return 0 if not failures else 1

    def attempt(self, label: str, fn: Callable[[], object]) -> None:
        """Run one row group; an exception becomes an "error" row (a failure) and the section goes on."""
        try:
            fn()
        except Exception as exc:
            self.report.error(label, exc)

    def section(self, fn: Callable[[], None]) -> None:
        name = fn.__name__.replace("_rows", "")
        print(f"--- {name}", flush=True)
        try:
            fn()
        except Exception as exc:  # one broken section must not lose the others' rows
            self.report.error(name, exc)
        self.report.save()

    # --- sections -----------------------------------------------------------------------------------------

    def load(self) -> None:
        import torch

        from mobilesamv2.modeling.fast_decoder import FactorizedPromptDecoder
        from mobilesamv2.modeling.image_encoder import ImageEncoderGraph
        from mobilesamv2.modeling.sam import PromptDecoder
        from mobilesamv2.reference import ReferencePipeline

        args = self.args
        self.weights = args.weights
        if self.weights is None:
            from mobilesamv2.fake_checkpoints import write_all

            folder = self.stack.enter_context(tempfile.TemporaryDirectory(prefix="gpu-check-weights-"))
            self.weights = Path(folder)
            start = time.perf_counter()
            write_all(self.weights, seed=args.seed, encoders=(args.encoder,))
            seconds = time.perf_counter() - start
            self.settings["weights"] = f"seeded random (seed {args.seed}), built in {seconds:.1f} s"
        else:
            self.settings["weights"] = str(args.weights)
        print(f"weights: {self.settings['weights']}", flush=True)
        self.report.save()
        pipe = ReferencePipeline.from_checkpoints(self.weights, encoder=args.encoder)
        self.channel_order = pipe.channel_order
        self.detector = pipe.detector.to(self.device).eval()
        self.encoder = ImageEncoderGraph(pipe.image_encoder, pipe.input_pool).to(self.device).eval()
        plain = PromptDecoder(pipe.prompt_encoder, pipe.mask_decoder).to(self.device).eval()
        self.decoders = {"plain": plain, "factorized": FactorizedPromptDecoder(plain).eval()}
        self.stack.enter_context(torch.inference_mode())

    def discovery(self) -> None:
        import torch

        from mobilesamv2.processing import boxes as box_ops
        from mobilesamv2.processing.image import detector_input

        boxed, info = detector_input(self.image, self.channel_order)
        x = torch.from_numpy(boxed).to(self.device).permute(2, 0, 1)[None].float() / 255.0
        with self.precision("fp32"):
            prediction = self.detector(x)
            timing = self.time(lambda: self.detector(x))
        self.report.latency("discovery", f"letterbox {boxed.shape[0]}x{boxed.shape[1]}", "fp32", 1, timing)
        candidates = box_ops.select_candidates(prediction[0].float().cpu().numpy())
        self.boxes, _ = box_ops.finalize_detections(*candidates, info)

    def encoder_rows(self) -> None:
        import torch

        from mobilesamv2.processing.image import encoder_canvas

        canvas, size = encoder_canvas(self.image)
        self.canvas = (
            torch.from_numpy(canvas)[None].to(self.device),
            torch.from_numpy(size)[None].to(self.device),
        )
        self.embeddings = {}
        for mode in self.args.precision_list:
            try:
                with self.precision(mode):
                    self.embeddings[mode] = self.encoder(*self.canvas).float()
                    timing = self.time(lambda: self.encoder(*self.canvas))
                self.report.latency("encoder", self.args.encoder, mode, 1, timing)
            except Exception as exc:
                self.report.error(f"encoder {mode}", exc)
        reference = self.embeddings["fp32"].cpu().numpy()
        bad = nonfinite(reference)
        self.report.agreement("encoder fp32", "-", "NaN/inf", bad, "0", _status(bad == 0, parity=True))
        for mode, embedding in self.embeddings.items():
            if mode == "fp32":
                continue
            got = embedding.cpu().numpy()
            diff, bad = scaled_max_diff(reference, got), nonfinite(got)
            ok = _status(diff <= PRECISION_MAX_DIFF, parity=False, strict=self.strict)
            self.report.agreement(
                f"encoder {mode}", "fp32", "scaled max diff", diff, f"<= {PRECISION_MAX_DIFF}", ok
            )
            ok = _status(bad == 0, parity=False, strict=self.strict)
            self.report.agreement(f"encoder {mode}", "fp32", "NaN/inf", bad, "0", ok)

    def decoder_rows(self) -> None:
        """Both formulations at every prompt count in FP32, and the factorized one against the plain one."""
        for n in self.args.prompt_counts:
            self.attempt(f"decoder N={n}", lambda n=n: self._fp32_decoders(n))

    def _fp32_decoders(self, n: int) -> None:
        embedding = self.embeddings["fp32"]
        coords, labels = self.prompts(n)
        outputs = {}
        for name, decoder in self.decoders.items():

            def call(decoder=decoder):
                return decoder(embedding, coords, labels)

            with self.precision("fp32"):
                outputs[name] = call()[0].float().cpu().numpy()
                self.report.latency("decoder", name, "fp32", n, self.time(call))
        diff = scaled_max_diff(outputs["plain"], outputs["factorized"])
        iou = mask_agreement(outputs["plain"][:, 0], outputs["factorized"][:, 0])
        bad = nonfinite(outputs["plain"]) + nonfinite(outputs["factorized"])
        check, limit = f"decoder factorized N={n}", f"<= {FACTORIZED_MAX_DIFF}"
        ok = _status(diff <= FACTORIZED_MAX_DIFF, parity=True)
        self.report.agreement(check, "plain fp32", "scaled max diff", diff, limit, ok)
        ok = _status(iou >= MIN_PARITY_IOU, parity=True)
        self.report.agreement(check, "plain fp32", "min mask IoU", iou, f">= {MIN_PARITY_IOU}", ok)
        self.report.agreement(check, "-", "NaN/inf (both)", bad, "0", _status(bad == 0, parity=True))

    def precision_rows(self) -> None:
        """Reduced precision: decoder latency at the largest prompt count; masks against FP32, with the FP32
        embedding (the decoder alone) and with the embedding of the same precision (encoder + decoder). Each
        (precision, decoder) pair fails alone: an exception is an "error" row, the others still run."""
        embedding, top, n = self.embeddings["fp32"], max(self.args.prompt_counts), self.args.precision_prompts
        coords, labels = self.prompts(top)
        for mode in self.args.precision_list[1:]:
            for name, decoder in self.decoders.items():

                def latency(mode=mode, name=name, decoder=decoder):
                    with self.precision(mode):
                        timing = self.time(lambda: decoder(embedding, coords, labels), called=False)
                    self.report.latency("decoder", name, mode, top, timing)

                self.attempt(f"decoder {name} {mode} N={top}", latency)
        coords, labels = self.prompts(n)
        with self.precision("fp32"):
            expected = {
                k: d(embedding, coords, labels)[0].float().cpu().numpy() for k, d in self.decoders.items()
            }
        for mode in self.args.precision_list[1:]:
            for name, decoder in self.decoders.items():
                self.attempt(
                    f"decoder {name} {mode} N={n}",
                    lambda m=mode, k=name, d=decoder: self._precision_masks(
                        m, k, d, expected[k], coords, labels
                    ),
                )

    def _precision_masks(self, mode: str, name: str, decoder, expected: np.ndarray, coords, labels) -> None:
        n = len(coords)
        with self.precision(mode):
            alone = decoder(self.embeddings["fp32"], coords, labels)[0].float().cpu().numpy()
            whole = None
            if mode in self.embeddings:
                whole = decoder(self.embeddings[mode], coords, labels)[0].float().cpu().numpy()
        for what, got in ((f"decoder {name}", alone), (f"encoder+decoder {name}", whole)):
            if got is None:
                continue
            ious = mask_ious(expected[:, 0], got[:, 0])
            check, bad = f"{what} {mode} N={n}", nonfinite(got)
            ok = _status(ious.min() >= PRECISION_MIN_IOU, parity=False, strict=self.strict)
            self.report.agreement(
                check, "fp32", "min mask IoU", float(ious.min()), f">= {PRECISION_MIN_IOU}", ok
            )
            self.report.agreement(check, "fp32", "mean mask IoU", float(ious.mean()), None, "info")
            ok = _status(bad == 0, parity=False, strict=self.strict)
            self.report.agreement(check, "fp32", "NaN/inf", bad, "0", ok)

    def postprocess_rows(self) -> None:
        """Latency of both postprocess paths, and their parity on the decoder's real logits."""
        import torch

        from mobilesamv2.pipeline import HostPostprocessor
        from mobilesamv2.processing import boxes as box_ops
        from mobilesamv2.processing.device_masks import TorchPostprocessor
        from mobilesamv2.processing.image import encoder_input_size
        from segment_everything_contract import rle as rle_codec

        h, w, limit = self.h, self.w, max(self.args.mask_counts)
        input_size = encoder_input_size(h, w)
        if len(getattr(self, "boxes", ())):
            boxes = self.boxes[:limit]
            source = f"the detector's first {len(boxes)} boxes"
            coords, labels = box_ops.boxes_to_prompts(box_ops.boxes_to_encoder_frame(boxes, (h, w)))
            coords, labels = (
                torch.from_numpy(coords).to(self.device),
                torch.from_numpy(labels).to(self.device),
            )
        else:
            source = f"{limit} random boxes (no detector boxes)"
            coords, labels = self.prompts(limit)
        with self.precision("fp32"):
            logits = self.decoders["factorized"](self.embeddings["fp32"], coords, labels)[0][:, 0].float()
        self.settings["postprocess_logits"] = f"factorized decoder fp32 on {source}"
        device_post, host_post = TorchPostprocessor(), HostPostprocessor()
        size = f"{h}x{w}"
        for count in self.args.mask_counts:
            batch = logits[torch.arange(count, device=self.device) % len(logits)]  # (count, 256, 256)
            on_host = batch.cpu().numpy()
            timing = self.time(lambda b=batch: device_post.rles(b, input_size, (h, w)), called=False)
            self.report.latency("postprocess", f"TorchPostprocessor rle {size}", "fp32", count, timing)
            timing = self.time(lambda b=batch: device_post.dense(b, input_size, (h, w)), called=False)
            self.report.latency("postprocess", f"TorchPostprocessor dense {size}", "fp32", count, timing)
            timing = self.time(
                lambda b=on_host: host_post.rles(b, input_size, (h, w)), host=True, called=False
            )
            self.report.latency("postprocess", f"HostPostprocessor rle {size} (CPU)", "fp32", count, timing)

        got = device_post.rles(logits, input_size, (h, w))
        on_host = logits.cpu().numpy()
        check = f"postprocess, {len(got)} real masks"
        with opencv_ipp(False):
            own = host_post.rles(on_host, input_size, (h, w))
        same = sum(a == b for a, b in zip(own, got, strict=True))
        ok = _status(same == len(own), parity=True)
        agreement = self.report.agreement
        agreement(check, "host, OpenCV's own path", "identical RLE", f"{same}/{len(own)}", "all", ok)
        with opencv_ipp(True):
            import cv2

            ipp = bool(cv2.ipp.useIPP())
            shipped = host_post.rles(on_host, input_size, (h, w))
        against = "host as shipped" + (" (IPP on)" if ipp else " (no IPP in this OpenCV)")
        expected = np.stack([rle_codec.decode(r) for r in shipped])
        masks = np.stack([rle_codec.decode(r) for r in got])
        ious = mask_ious(expected, masks)
        agreement(check, against, "differing pixels", int((expected != masks).sum()), None, "info")
        ok = _status(ious.min() >= MIN_PARITY_IOU, parity=True)
        agreement(check, against, "min mask IoU", float(ious.min()), f">= {MIN_PARITY_IOU}", ok)
        dense_ok = bool(np.array_equal(device_post.dense(logits, input_size, (h, w)), masks))
        agreement(check, "its own RLE", "dense == RLE", dense_ok, "yes", _status(dense_ok, parity=True))

    def onnx_rows(self) -> None:
        """The factorized decoder exported to ONNX (the ONNX Runtime graph), run by ONNX Runtime, against
        PyTorch."""
        check = "decoder factorized (ONNX Runtime)"
        missing = [m for m in ("onnxruntime", "onnx", "onnxscript") if importlib.util.find_spec(m) is None]
        if self.args.onnx == "off" or missing:
            reason = "--onnx off" if self.args.onnx == "off" else f"{', '.join(missing)} not installed"
            self.report.agreement(check, "PyTorch fp32", "skipped", reason, None, "skipped")
            return
        import onnxruntime as ort
        import torch

        from mobilesamv2.export.onnx_export import DECODER_INPUTS, export_prompt_decoder
        from mobilesamv2.modeling.checkpoints import load_prompt_decoder

        folder = Path(self.stack.enter_context(tempfile.TemporaryDirectory(prefix="gpu-check-onnx-")))
        path = folder / "prompt_decoder.onnx"
        embedding = self.embeddings["fp32"]
        embedding_np = embedding.cpu().numpy()
        start = time.perf_counter()
        with torch.inference_mode(False):  # the exporter traces: no inference tensors, parameters included
            decoder = load_prompt_decoder(self.weights / "Prompt_guided_Mask_Decoder.pt")
            export_prompt_decoder(decoder, path, torch.from_numpy(embedding_np.copy()), prompt_counts=(1,))
        self.settings["onnx_export_s"] = round(time.perf_counter() - start, 1)
        providers = ["CPUExecutionProvider"]
        if self.args.device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        session = ort.InferenceSession(str(path), providers=providers)
        provider = session.get_providers()[0]
        n = self.args.precision_prompts
        coords, labels = self.prompts(n)
        inputs = (embedding_np, coords.cpu().numpy(), labels.cpu().numpy())
        feeds = dict(zip(DECODER_INPUTS, inputs, strict=True))
        got = session.run(None, feeds)[0]
        with self.precision("fp32"):
            expected = self.decoders["factorized"](embedding, coords, labels)[0].float().cpu().numpy()
        check = f"decoder factorized N={n} (ONNX Runtime {provider})"
        diff, iou = scaled_max_diff(expected, got), mask_agreement(expected[:, 0], got[:, 0])
        ok = _status(diff <= ONNX_MAX_DIFF, parity=True)
        self.report.agreement(check, "PyTorch fp32", "scaled max diff", diff, f"<= {ONNX_MAX_DIFF}", ok)
        ok = _status(iou >= MIN_PARITY_IOU, parity=True)
        self.report.agreement(check, "PyTorch fp32", "min mask IoU", iou, f">= {MIN_PARITY_IOU}", ok)
        timing = self.time(lambda: session.run(None, feeds), host=True)
        self.report.latency("decoder", f"factorized, ONNX Runtime {provider}", "fp32", n, timing)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    problems = validate(args)
    if problems:
        for problem in problems:
            print(f"gpu_check: {problem}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(json.dumps(plan(args), indent=2))
        return 0
    _import_paths()
    _ultralytics_offline()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device visible to PyTorch (--device cpu checks on the CPU)", file=sys.stderr
        )
        return 2
    with contextlib.ExitStack() as stack:
        return GpuCheck(args, stack).run()


if __name__ == "__main__":
    sys.exit(main())
