r"""GPU check: how fast the pipeline's networks and its mask postprocess run on a CUDA GPU, and how far
reduced precision and the device postprocess stray from FP32 and from the host path. One command, a Markdown +
JSON report; no TensorRT, no Triton, no network.

On a machine with an NVIDIA GPU and Python 3.10 or newer, in a checkout of this repository (nothing of it to
install: the script puts ``mobilesamv2`` and ``client/`` on its path)::

    pip install torch numpy opencv-python-headless pillow        # torch: a build with CUDA
    python3 scripts/gpu_check.py --device cuda --out gpu_check.md

A required package that is missing stops the check before anything runs: one line naming it and how to
install it, exit status 2. ``pip install ultralytics`` adds rows: the object-aware detector and SAM's prompt
encoder and mask decoder are ultralytics modules, so object discovery and both decoders (plain, the TensorRT
graph; factorized, the ONNX Runtime graph) need it. Without it those rows say "skipped" and why, and the
postprocess runs on logits made from the encoder's embedding instead of the decoder's.

What one run measures (``--device cpu``: the same with small counts, which the test suite runs):

- latency, median after warm-ups: object discovery on the letterboxed image, the image encoder at batch 1,
  both decoders at 1 / 50 / 300 box prompts, the mask postprocess at 50 and 300 masks on the device
  (``TorchPostprocessor``) and on the host (``HostPostprocessor``, numpy/OpenCV);
- FP32 against TF32, FP16 and BF16 (autocast): the embeddings (largest difference scaled by their magnitude,
  NaN/inf), the decoders' masks (IoU of ``logits > 0``) with the FP32 embedding and with their own;
- parity checks, which decide the exit status: the factorized decoder against the plain one, no NaN/inf in
  FP32, the device postprocess against the host one (identical RLE on OpenCV's own resize code, IoU against
  opencv-python as shipped, whose IPP resizes some chunks with other coefficients).

Weights: ``--weights DIR`` with the official files (``ObjectAwareModel.pt``, ``Prompt_guided_Mask_Decoder.pt``
and the encoder's, e.g. ``l2.pt``); without it, seeded random weights in the official formats are built in a
temporary folder (``mobilesamv2.fake_checkpoints``; the EfficientViT encoder alone without ultralytics).
Latency does not depend on the weights' values; agreement numbers of random weights are indicative only.
Image: ``--image``, else ``assets/synthetic_scene.png`` (``mobilesamv2.assets.synthetic_scene``, 810x1080).

The report names the machine (GPU, driver, torch / CUDA / cuDNN versions) and is rewritten to ``--out`` (and
its ``.json`` beside it) after every section, so a run cut short keeps what it measured. Exit status: 0; 1
when a parity check failed; 2 for a missing package, bad arguments or no CUDA device. Reduced-precision rows
are informational ("warn") unless ``--strict-precision``. ``--dry-run`` prints the plan without importing
torch.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
for _folder in (REPO_ROOT, REPO_ROOT / "client"):  # the repository's packages, without an install
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))

from benchmarks.common import machine, median, table  # noqa: E402

SCENE = REPO_ROOT / "assets" / "synthetic_scene.png"
PRECISIONS = ("fp32", "tf32", "fp16", "bf16")
ENCODER_FILES = {"efficientvit_l2": "l2.pt", "tiny_vit": "mobile_sam.pt", "sam_vit_h": "sam_vit_h_4b8939.pth"}
MODEL_FILES = ("ObjectAwareModel.pt", "Prompt_guided_Mask_Decoder.pt")
DEFAULTS = {
    "cuda": {"prompts": "1,50,300", "masks": "50,300", "precision_prompts": 50, "runs": 20, "warmup": 2},
    "cpu": {"prompts": "1,4", "masks": "4,8", "precision_prompts": 4, "runs": 2, "warmup": 0},
}
DEFAULT_PRECISIONS = {"cuda": "fp32,tf32,fp16,bf16", "cpu": "fp32,bf16"}
#: module -> what to install. The check cannot run without these.
REQUIRED = {"numpy": "numpy", "torch": "torch", "cv2": "opencv-python-headless", "PIL": "pillow"}
NEEDS_ULTRALYTICS = "needs ultralytics (pip install ultralytics)"

# Limits of the parity checks (they decide the exit status).
FACTORIZED_MAX_DIFF = 1e-3  # the factorized decoder equals the plain one to float rounding (1e-4 measured)
MIN_PARITY_IOU = 0.999  # masks of two paths that should agree
# Reduced precision: below these a row says "warn" (informational unless --strict-precision).
PRECISION_MIN_IOU = 0.99
PRECISION_MAX_DIFF = 0.05


# ------------------------------------------------------------------------------------ arguments, packages


def parse_counts(text: str, what: str) -> list[int]:
    """``"1,50,300"`` -> ``[1, 50, 300]``; ValueError unless all are positive integers."""
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        counts = []
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


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--out", type=Path, default=None, help="markdown report (JSON beside it, .json)")
    parser.add_argument("--weights", type=Path, default=None, help="official checkpoints (default: seeded)")
    parser.add_argument("--encoder", choices=sorted(ENCODER_FILES), default="efficientvit_l2")
    parser.add_argument("--image", type=Path, default=SCENE, help="test image (default: the synthetic scene)")
    parser.add_argument("--prompts", default=None, help="decoder prompt counts (cuda 1,50,300; cpu 1,4)")
    parser.add_argument("--masks", default=None, help="postprocess mask counts (cuda 50,300; cpu 4,8)")
    parser.add_argument("--precision-prompts", type=int, default=None, help="prompts of the precision rows")
    parser.add_argument("--precisions", default=None, help="subset of fp32,tf32,fp16,bf16 (cpu: no tf32)")
    parser.add_argument("--runs", type=int, default=None, help="timed runs per row (cuda 20, cpu 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs per row (cuda 2, cpu 0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the built weights")
    parser.add_argument("--strict-precision", action="store_true", help="reduced-precision warnings fail too")
    parser.add_argument("--dry-run", action="store_true", help="check the arguments and print the plan only")
    args = parser.parse_args(argv)
    for name, value in DEFAULTS[args.device].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.precisions = args.precisions or DEFAULT_PRECISIONS[args.device]
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
    if args.weights is not None and not (args.weights / ENCODER_FILES[args.encoder]).is_file():
        # the detector's and the decoder's files are read only with ultralytics: load() names them then
        problems.append(f"--weights {args.weights}: missing {ENCODER_FILES[args.encoder]}")
    if not args.image.is_file():
        problems.append(f"--image {args.image}: no such file")
    if args.out is not None and not args.out.parent.is_dir():
        problems.append(f"--out {args.out}: folder {args.out.parent} does not exist")
    return problems


def importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except Exception:  # absent, or broken (built against another numpy, a missing dependency of its own)
        return False
    return True


def missing_packages(args: argparse.Namespace) -> list[str]:
    """What must be installed for this run, as ``pip install`` names (empty: nothing)."""
    missing = [package for module, package in REQUIRED.items() if not importable(module)]
    if missing:
        return missing
    from mobilesamv2.modeling.detector import _ultralytics_offline

    _ultralytics_offline()  # before ultralytics is first imported: no network, no settings in $HOME
    if args.encoder != "efficientvit_l2" and not importable("ultralytics"):
        missing.append("ultralytics")  # TinyViT and ViT-H are ultralytics modules
    return missing


# ------------------------------------------------------------------------------------------- the report


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
    return {"median_ms": median(times), "min_ms": min(times), "runs": runs}


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) >= 1 else f"{value:.6g}"
    return str(value)


LATENCY_COLUMNS = ("stage", "variant", "precision", "n", "median_ms", "min_ms", "per_item_ms", "runs")
AGREEMENT_COLUMNS = ("check", "against", "metric", "value", "limit", "status")


def format_report(report: dict) -> str:
    """The report as markdown: the machine, the settings, the latency and agreement tables, the verdict."""
    env = report["environment"]
    lines = [f"# GPU check: {env.get('gpu') or env.get('cpu', 'CPU')}", ""]
    lines += [table(("", ""), [(k, _cell(v)) for k, v in env.items()]), ""]
    lines += ["Settings: " + ", ".join(f"{k} {_cell(v)}" for k, v in report["settings"].items()), ""]
    lines += [f"**Result: {report.get('verdict', 'incomplete')}**", "", "## Latency", ""]
    for title, columns in (("latency", LATENCY_COLUMNS), ("agreement", AGREEMENT_COLUMNS)):
        if title == "agreement":
            lines += ["", "## Agreement", ""]
        lines.append(table(columns, [[_cell(row.get(c)) for c in columns] for row in report[title]]))
    if report.get("errors"):
        lines += ["", "## Errors", ""] + [f"- {e}" for e in report["errors"]]
    lines += ["", "## JSON", "", "```json", json.dumps(report, indent=1, default=str), "```", ""]
    return "\n".join(lines)


def parity_failures(report: dict) -> list[dict]:
    """Agreement rows that decide the exit status and did not pass."""
    return [r for r in report["agreement"] if r["status"] in ("FAIL", "error")]


def _status(passed: bool, parity: bool, strict: bool = False) -> str:
    if passed:
        return "ok" if parity else "info"
    return "FAIL" if parity or strict else "warn"


class Report:
    """The rows so far; written to ``--out`` after every section."""

    def __init__(self, out: Path | None, env: dict, settings: dict) -> None:
        self.out = out
        self.data: dict[str, Any] = {"environment": env, "settings": settings}
        self.data.update(latency=[], agreement=[], errors=[])

    def latency(self, stage: str, variant: str, precision: str, n: int, timing: dict) -> None:
        row = {"stage": stage, "variant": variant, "precision": precision, "n": n, **timing}
        row["per_item_ms"] = timing["median_ms"] / n
        self.data["latency"].append(row)
        print(
            f"  {stage:<12} {variant:<34} {precision:<5} N={n:<4} {timing['median_ms']:9.2f} ms", flush=True
        )

    def agreement(self, check: str, against: str, metric: str, value: Any, limit: Any, status: str) -> None:
        value = value.item() if hasattr(value, "item") else value
        row = {"check": check, "against": against, "metric": metric, "value": value, "limit": limit}
        self.data["agreement"].append({**row, "status": status})
        print(f"  {check:<42} {metric:<22} {_cell(value):>12}  {status}", flush=True)

    def skipped(self, check: str, reason: str) -> None:
        self.agreement(check, "-", "skipped", reason, None, "skipped")

    def error(self, section: str, exc: BaseException) -> None:
        self.data["errors"].append(f"{section}: {type(exc).__name__}: {exc}")
        self.agreement(section, "-", "error", str(exc)[:200], None, "error")
        traceback.print_exc()

    def save(self, verdict: str | None = None) -> None:
        if verdict is not None:
            self.data["verdict"] = verdict
        if self.out is not None:
            self.out.write_text(format_report(self.data))
            self.out.with_suffix(".json").write_text(json.dumps(self.data, indent=1, default=str))


# --------------------------------------------------------------------------------------------- the check


def environment(device: str) -> dict:
    """The machine (``benchmarks.common.machine``: CPU, memory, package versions, commit) and, on CUDA, the
    GPU, its driver and the CUDA / cuDNN versions of torch."""
    import subprocess

    import cv2
    import torch

    env: dict[str, Any] = {}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        driver = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        env.update(
            gpu=torch.cuda.get_device_name(0),
            driver=driver[0] if driver else "unknown",
            compute_capability=f"{props.major}.{props.minor}",
            memory_gib=round(props.total_memory / 2**30, 1),
            torch_cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    found = machine()
    env.update(cpu=found["cpu"], cpus=found["cpus"], torch_threads=torch.get_num_threads())
    env.update({k: v for k, v in found["versions"].items() if v != "not installed"})
    env["ultralytics"] = version("ultralytics") if importable("ultralytics") else "not installed"
    env.update(opencv_ipp=bool(cv2.ipp.useIPP()), commit=found["commit"])
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


class GpuCheck:
    """The sections of one check, in order; each one's rows go to the report, which is saved after it. A
    section whose networks could not be built says so in a "skipped" row."""

    def __init__(self, args: argparse.Namespace, stack: contextlib.ExitStack) -> None:
        import torch

        self.args, self.stack, self.strict = args, stack, args.strict_precision
        self.device = torch.device(args.device)
        self.sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
        self.ultralytics = importable("ultralytics")
        self.settings: dict[str, Any] = {
            "encoder": args.encoder,
            "runs": args.runs,
            "warmup": args.warmup,
            "prompts": args.prompt_counts,
            "masks": args.mask_counts,
            "precision_prompts": args.precision_prompts,
        }
        self.report = Report(args.out, environment(args.device), self.settings)
        self.report.save()  # from here on a report exists, whatever fails
        print(json.dumps(self.report.data["environment"]), flush=True)
        self.detector = self.encoder = self.boxes = None
        self.decoders: dict[str, Any] = {}
        self.embeddings: dict[str, Any] = {}

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
        for section in (
            self.load,
            self.discovery,
            self.encoder_rows,
            self.decoder_rows,
            self.precision_rows,
            self.postprocess_rows,
        ):
            name = section.__name__.replace("_rows", "")
            print(f"--- {name}", flush=True)
            self.attempt(name, section)
            self.report.save()
        failures = parity_failures(self.report.data)
        verdict = "all parity checks ok" if not failures else f"{len(failures)} parity check(s) failed"
        self.report.save(verdict)
        print(format_report(self.report.data).split("## JSON")[0], flush=True)
        return 0 if not failures else 1

    def attempt(self, label: str, fn: Callable[[], object]) -> None:
        """Run one row group; an exception becomes an "error" row (a failure) and the check goes on."""
        try:
            fn()
        except Exception as exc:
            self.report.error(label, exc)

    # --- sections -----------------------------------------------------------------------------------------

    def load(self) -> None:
        import cv2

        from mobilesamv2 import fake_checkpoints
        from mobilesamv2.modeling.checkpoints import encoder_spec, load_image_encoder
        from mobilesamv2.modeling.image_encoder import ImageEncoderGraph

        args, settings = self.args, self.settings
        self.image = cv2.cvtColor(cv2.imread(str(args.image)), cv2.COLOR_BGR2RGB)
        self.h, self.w = self.image.shape[:2]
        settings["image"] = f"{args.image.name} {self.h}x{self.w}"
        weights = args.weights
        if weights is None:
            weights = Path(self.stack.enter_context(tempfile.TemporaryDirectory(prefix="gpu-check-weights-")))
            start = time.perf_counter()
            if self.ultralytics:
                fake_checkpoints.write_all(weights, seed=args.seed, encoders=(args.encoder,))
            else:
                fake_checkpoints.write_encoder(weights, args.encoder, seed=args.seed)
            seconds = time.perf_counter() - start
            settings["weights"] = f"seeded random (seed {args.seed}), built in {seconds:.1f} s"
        else:
            settings["weights"] = str(weights)
        self.weights = weights
        spec = encoder_spec(args.encoder)
        encoder = load_image_encoder(args.encoder, weights / spec.filename)
        self.encoder = ImageEncoderGraph(encoder, spec.input_pool).to(self.device).eval()
        if self.ultralytics:
            from mobilesamv2.modeling.checkpoints import load_prompt_decoder
            from mobilesamv2.modeling.detector import load_object_aware_model
            from mobilesamv2.modeling.fast_decoder import FactorizedPromptDecoder

            self.detector = load_object_aware_model(weights / MODEL_FILES[0]).to(self.device).eval()
            plain = load_prompt_decoder(weights / MODEL_FILES[1]).to(self.device).eval()
            self.decoders = {"plain": plain, "factorized": FactorizedPromptDecoder(plain).eval()}
        else:
            settings["skipped"] = f"object discovery and the decoders: {NEEDS_ULTRALYTICS}"
        import torch

        self.stack.enter_context(torch.inference_mode())

    def discovery(self) -> None:
        import torch

        from mobilesamv2.processing import boxes as box_ops
        from mobilesamv2.processing.image import DETECTOR_CHANNEL_ORDER, detector_input

        if self.detector is None:
            return self.report.skipped("discovery", NEEDS_ULTRALYTICS)
        boxed, info = detector_input(self.image, DETECTOR_CHANNEL_ORDER)
        x = torch.from_numpy(boxed).to(self.device).permute(2, 0, 1)[None].float() / 255.0
        with self.precision("fp32"):
            prediction = self.detector(x)
            timing = self.time(lambda: self.detector(x))
        self.report.latency("discovery", f"letterbox {boxed.shape[0]}x{boxed.shape[1]}", "fp32", 1, timing)
        candidates = box_ops.select_candidates(prediction[0].float().cpu().numpy())
        self.boxes, _ = box_ops.finalize_detections(*candidates, info)

    def encoder_rows(self) -> None:
        import torch

        from mobilesamv2.export.verify import scaled_max_diff
        from mobilesamv2.processing.image import encoder_canvas

        canvas, size = encoder_canvas(self.image)
        inputs = (
            torch.from_numpy(canvas)[None].to(self.device),
            torch.from_numpy(size)[None].to(self.device),
        )
        for mode in self.args.precision_list:

            def encode(mode=mode) -> None:
                with self.precision(mode):
                    self.embeddings[mode] = self.encoder(*inputs).float()
                    timing = self.time(lambda: self.encoder(*inputs))
                self.report.latency("encoder", self.args.encoder, mode, 1, timing)

            self.attempt(f"encoder {mode}", encode)
        reference = self.embeddings["fp32"].cpu().numpy()
        bad = self._nonfinite(reference)
        self.report.agreement("encoder fp32", "-", "NaN/inf", bad, "0", _status(bad == 0, parity=True))
        for mode, embedding in self.embeddings.items():
            if mode == "fp32":
                continue
            got = embedding.cpu().numpy()
            diff, bad = scaled_max_diff(reference, got), self._nonfinite(got)
            ok = _status(diff <= PRECISION_MAX_DIFF, parity=False, strict=self.strict)
            self.report.agreement(
                f"encoder {mode}", "fp32", "scaled max diff", diff, f"<= {PRECISION_MAX_DIFF}", ok
            )
            ok = _status(bad == 0, parity=False, strict=self.strict)
            self.report.agreement(f"encoder {mode}", "fp32", "NaN/inf", bad, "0", ok)

    @staticmethod
    def _nonfinite(array) -> int:
        import numpy as np

        return int(np.size(array) - np.count_nonzero(np.isfinite(array)))

    def decoder_rows(self) -> None:
        """Both formulations at every prompt count in FP32, and the factorized one against the plain one."""
        if not self.decoders:
            return self.report.skipped("decoders", NEEDS_ULTRALYTICS)
        for n in self.args.prompt_counts:
            self.attempt(f"decoder N={n}", lambda n=n: self._fp32_decoders(n))

    def _fp32_decoders(self, n: int) -> None:
        from mobilesamv2.export.verify import lowest_mask_iou, scaled_max_diff

        embedding, (coords, labels) = self.embeddings["fp32"], self.prompts(n)
        outputs = {}
        for name, decoder in self.decoders.items():

            def call(decoder=decoder):
                return decoder(embedding, coords, labels)

            with self.precision("fp32"):
                outputs[name] = call()[0].float().cpu().numpy()
                self.report.latency("decoder", name, "fp32", n, self.time(call))
        plain, factorized = outputs["plain"], outputs["factorized"]
        diff, iou = scaled_max_diff(plain, factorized), lowest_mask_iou(plain, factorized)
        bad = self._nonfinite(plain) + self._nonfinite(factorized)
        check, agreement = f"decoder factorized N={n}", self.report.agreement
        ok = _status(diff <= FACTORIZED_MAX_DIFF, parity=True)
        agreement(check, "plain fp32", "scaled max diff", diff, f"<= {FACTORIZED_MAX_DIFF}", ok)
        ok = _status(iou >= MIN_PARITY_IOU, parity=True)
        agreement(check, "plain fp32", "min mask IoU", iou, f">= {MIN_PARITY_IOU}", ok)
        agreement(check, "-", "NaN/inf (both)", bad, "0", _status(bad == 0, parity=True))

    def precision_rows(self) -> None:
        """Reduced precision: decoder latency at the largest prompt count; masks against FP32, with the FP32
        embedding (the decoder alone) and with the embedding of the same precision (encoder + decoder)."""
        if not self.decoders:
            return self.report.skipped("decoder precisions", NEEDS_ULTRALYTICS)
        embedding, top, n = self.embeddings["fp32"], max(self.args.prompt_counts), self.args.precision_prompts
        top_prompts = self.prompts(top)
        for mode in self.args.precision_list[1:]:
            for name, decoder in self.decoders.items():

                def latency(mode=mode, name=name, decoder=decoder, prompts=top_prompts):
                    with self.precision(mode):
                        timing = self.time(lambda: decoder(embedding, *prompts), called=False)
                    self.report.latency("decoder", name, mode, top, timing)

                self.attempt(f"decoder {name} {mode} N={top}", latency)
        prompts = self.prompts(n)
        with self.precision("fp32"):
            expected = {k: d(embedding, *prompts)[0].float().cpu().numpy() for k, d in self.decoders.items()}
        for mode in self.args.precision_list[1:]:
            for name, decoder in self.decoders.items():
                self.attempt(
                    f"decoder {name} {mode} N={n}",
                    lambda m=mode, k=name, d=decoder: self._precision_masks(m, k, d, expected[k], prompts),
                )

    def _precision_masks(self, mode: str, name: str, decoder, expected, prompts) -> None:
        from mobilesamv2.export.verify import mask_ious

        with self.precision(mode):
            runs = {f"decoder {name}": decoder(self.embeddings["fp32"], *prompts)[0].float().cpu().numpy()}
            if mode in self.embeddings:
                embedding = self.embeddings[mode]
                runs[f"encoder+decoder {name}"] = decoder(embedding, *prompts)[0].float().cpu().numpy()
        for what, got in runs.items():
            ious, bad = mask_ious(expected, got), self._nonfinite(got)
            check, agreement = f"{what} {mode} N={len(expected)}", self.report.agreement
            ok = _status(ious.min() >= PRECISION_MIN_IOU, parity=False, strict=self.strict)
            agreement(check, "fp32", "min mask IoU", float(ious.min()), f">= {PRECISION_MIN_IOU}", ok)
            agreement(check, "fp32", "mean mask IoU", float(ious.mean()), None, "info")
            agreement(check, "fp32", "NaN/inf", bad, "0", _status(bad == 0, parity=False, strict=self.strict))

    def _logits(self, limit: int):
        """``(limit, 256, 256)`` logits and where they come from: the factorized decoder on the detector's
        boxes (random boxes without any), or without the decoder the embedding's channels upsampled."""
        import torch

        from mobilesamv2.processing import boxes as box_ops

        embedding = self.embeddings["fp32"]
        if not self.decoders:
            channels = embedding[0, : min(limit, embedding.shape[1])]
            logits = torch.nn.functional.interpolate(channels[None], size=(256, 256), mode="bilinear")[0]
            return logits * 8, f"the FP32 embedding's first {len(logits)} channels, x4 ({NEEDS_ULTRALYTICS})"
        if self.boxes is not None and len(self.boxes):
            boxes = self.boxes[:limit]
            frame = box_ops.boxes_to_encoder_frame(boxes, (self.h, self.w))
            coords, labels = (torch.from_numpy(a).to(self.device) for a in box_ops.boxes_to_prompts(frame))
            source = f"factorized decoder fp32 on the detector's first {len(boxes)} boxes"
        else:
            coords, labels = self.prompts(limit)
            source = f"factorized decoder fp32 on {limit} random boxes (no detector boxes)"
        with self.precision("fp32"):
            return self.decoders["factorized"](embedding, coords, labels)[0][:, 0].float(), source

    def postprocess_rows(self) -> None:
        """Latency of both postprocess paths, and their parity on the same logits."""
        import numpy as np
        import torch

        from mobilesamv2.export.verify import mask_ious
        from mobilesamv2.pipeline import HostPostprocessor
        from mobilesamv2.processing.device_masks import TorchPostprocessor
        from mobilesamv2.processing.image import encoder_input_size
        from segment_everything_contract import rle as rle_codec

        size, input_size = (self.h, self.w), encoder_input_size(self.h, self.w)
        logits, self.settings["postprocess_logits"] = self._logits(max(self.args.mask_counts))
        device_post, host_post = TorchPostprocessor(), HostPostprocessor()
        name = f"{self.h}x{self.w}"
        for count in self.args.mask_counts:
            batch = logits[torch.arange(count, device=self.device) % len(logits)]  # (count, 256, 256)
            on_host = batch.cpu().numpy()
            for what in ("rle", "dense"):
                run = getattr(device_post, "rles" if what == "rle" else "dense")
                timing = self.time(lambda b=batch, run=run: run(b, input_size, size), called=False)
                self.report.latency("postprocess", f"TorchPostprocessor {what} {name}", "fp32", count, timing)
            timing = self.time(lambda b=on_host: host_post.rles(b, input_size, size), host=True, called=False)
            self.report.latency("postprocess", f"HostPostprocessor rle {name} (CPU)", "fp32", count, timing)

        got, on_host = device_post.rles(logits, input_size, size), logits.cpu().numpy()
        check, agreement = f"postprocess, {len(got)} masks", self.report.agreement
        with opencv_ipp(False):
            own = host_post.rles(on_host, input_size, size)
        same = sum(a == b for a, b in zip(own, got, strict=True))
        ok = _status(same == len(own), parity=True)
        agreement(check, "host, OpenCV's own path", "identical RLE", f"{same}/{len(own)}", "all", ok)
        with opencv_ipp(True):
            import cv2

            ipp = bool(cv2.ipp.useIPP())
            shipped = host_post.rles(on_host, input_size, size)
        against = "host as shipped" + (" (IPP on)" if ipp else " (no IPP in this OpenCV)")
        expected = np.stack([rle_codec.decode(r) for r in shipped])
        masks = np.stack([rle_codec.decode(r) for r in got])
        ious = mask_ious(expected, masks)
        agreement(check, against, "differing pixels", int((expected != masks).sum()), None, "info")
        ok = _status(ious.min() >= MIN_PARITY_IOU, parity=True)
        agreement(check, against, "min mask IoU", float(ious.min()), f">= {MIN_PARITY_IOU}", ok)
        dense_ok = bool(np.array_equal(device_post.dense(logits, input_size, size), masks))
        agreement(check, "its own RLE", "dense == RLE", dense_ok, "yes", _status(dense_ok, parity=True))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    problems = validate(args)
    if problems:
        for problem in problems:
            print(f"gpu_check: {problem}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(json.dumps(vars(args), indent=2, default=str))
        return 0
    missing = missing_packages(args)
    if missing:
        names = " ".join(missing)
        print(f"gpu_check: missing {', '.join(missing)}: pip install {names}", file=sys.stderr)
        return 2
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
