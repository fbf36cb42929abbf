"""Check the exported ONNX models against PyTorch on a GPU and print a per-stage latency table.

    python scripts/gpu_check.py --weights weights/official --repo model_repository [--encoder efficientvit_l2]

Needs a machine with an NVIDIA GPU, PyTorch with CUDA and onnxruntime-gpu. Each stage runs the same inputs
through the PyTorch modules of ``ReferencePipeline`` (on CUDA, TF32 off) and through the exported ONNX graph
(ONNX Runtime's CUDA provider): the object-aware detector on a letterboxed image, the image encoder on its
uint8 canvas, and the prompt decoder with N = 1 / 32 / 300 box prompts. It prints the largest difference
(scaled by the output's magnitude, as the export's parity check does), the agreement of the thresholded masks
and the median latencies, and exits 1 when a stage is out of tolerance.

``--device cpu`` runs the same check on CPU (small N recommended); ``--dry-run`` only checks that the inputs
exist and prints the plan.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

ONNX_FILES = {
    "discovery": "object_discovery/1/detector.onnx",
    "encoder": "image_encoder/1/model.onnx",
    "decoder": "prompt_decoder/1/model.onnx",
}


def scaled_max_diff(expected: np.ndarray, got: np.ndarray) -> float:
    """``max|a - b| / max(1, max|b|)``: the export's parity measure."""
    if expected.shape != got.shape:
        return float("inf")
    if expected.size == 0:
        return 0.0
    return float(np.abs(expected - got).max() / max(1.0, float(np.abs(expected).max())))


def mask_agreement(expected_logits: np.ndarray, got_logits: np.ndarray) -> float:
    """Lowest IoU over prompts between the masks ``logits > 0`` of both runs (1.0 = identical masks)."""
    a, b = expected_logits > 0, got_logits > 0
    inter = (a & b).reshape(len(a), -1).sum(1)
    union = (a | b).reshape(len(a), -1).sum(1)
    return float(np.min(np.where(union > 0, inter / np.maximum(union, 1), 1.0))) if len(a) else 1.0


def median_ms(fn: Callable[[], object], runs: int, sync: Callable[[], None]) -> float:
    fn()  # warm-up (kernel selection, allocations)
    sync()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def format_table(rows: Sequence[dict]) -> str:
    header = f"{'stage':<22}{'max diff':>10}{'mask IoU':>10}{'torch ms':>10}{'onnx ms':>10}  ok"
    lines = [header, "-" * len(header)]
    for r in rows:
        iou = f"{r['mask_iou']:.4f}" if r.get("mask_iou") is not None else "-"
        lines.append(
            f"{r['stage']:<22}{r['max_diff']:>10.2e}{iou:>10}{r['torch_ms']:>10.2f}{r['onnx_ms']:>10.2f}"
            f"  {'yes' if r['ok'] else 'NO'}"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--weights", type=Path, required=True, help="folder with the official checkpoint files"
    )
    parser.add_argument("--repo", type=Path, default=Path("model_repository"), help="built model repository")
    parser.add_argument("--encoder", default="efficientvit_l2")
    parser.add_argument("--image", type=Path, default=None, help="test image (default: ultralytics' bus.jpg)")
    parser.add_argument("--prompts", default="1,32,300", help="decoder prompt counts")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per stage (median reported)")
    parser.add_argument("--tolerance", type=float, default=5e-3, help="largest scaled difference allowed")
    parser.add_argument("--min-mask-iou", type=float, default=0.99)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--dry-run", action="store_true", help="check the inputs and print the plan only")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    prompt_counts = [int(n) for n in args.prompts.split(",") if n.strip()]
    onnx_paths = {stage: args.repo / rel for stage, rel in ONNX_FILES.items()}
    missing = [str(p) for p in [*onnx_paths.values(), args.weights] if not p.exists()]
    if args.image is not None and not args.image.is_file():
        missing.append(str(args.image))
    if missing:
        print(
            f"gpu_check: missing {', '.join(missing)} (build with mobilesamv2-build first)", file=sys.stderr
        )
        return 2
    if args.dry_run:
        print(
            json.dumps(
                {
                    "device": args.device,
                    "encoder": args.encoder,
                    "weights": str(args.weights),
                    "onnx": {k: str(v) for k, v in onnx_paths.items()},
                    "prompts": prompt_counts,
                    "runs": args.runs,
                    "tolerance": args.tolerance,
                },
                indent=2,
            )
        )
        return 0

    import cv2
    import onnxruntime as ort
    import torch

    from mobilesamv2.assets import bus_jpg
    from mobilesamv2.export.onnx_export import box_prompts
    from mobilesamv2.modeling.image_encoder import ImageEncoderGraph
    from mobilesamv2.modeling.sam import PromptDecoder
    from mobilesamv2.processing.image import detector_input, encoder_canvas
    from mobilesamv2.reference import ReferencePipeline

    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device visible to PyTorch (use --device cpu to check on CPU)", file=sys.stderr
        )
        return 2
    # Parity, not speed records: full FP32 on both sides.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    providers = (
        ["CUDAExecutionProvider", "CPUExecutionProvider"]
        if args.device == "cuda"
        else ["CPUExecutionProvider"]
    )
    sessions = {
        stage: ort.InferenceSession(str(path), providers=providers) for stage, path in onnx_paths.items()
    }
    if sessions["encoder"].get_providers()[0] != providers[0]:
        print(
            f"gpu_check: ONNX Runtime runs on {sessions['encoder'].get_providers()[0]}, not {providers[0]} "
            "(install onnxruntime-gpu matching the CUDA version)",
            file=sys.stderr,
        )
        return 2

    pipe = ReferencePipeline.from_checkpoints(args.weights, encoder=args.encoder)
    detector = pipe.detector.to(device)
    encoder = ImageEncoderGraph(pipe.image_encoder, pipe.input_pool).to(device).eval()
    decoder = PromptDecoder(pipe.prompt_encoder, pipe.mask_decoder).to(device).eval()
    image = cv2.cvtColor(cv2.imread(str(args.image or bus_jpg())), cv2.COLOR_BGR2RGB)
    rows = []

    def check(stage: str, torch_fn, onnx_fn, masks: bool = False) -> torch.Tensor:
        with torch.inference_mode():
            expected = torch_fn()
            expected_np = [
                t.float().cpu().numpy() for t in (expected if isinstance(expected, tuple) else (expected,))
            ]
            got = onnx_fn()
            diff = max(scaled_max_diff(e, g) for e, g in zip(expected_np, got, strict=True))
            iou = mask_agreement(expected_np[0][:, 0], got[0][:, 0]) if masks else None
            rows.append(
                {
                    "stage": stage,
                    "max_diff": diff,
                    "mask_iou": iou,
                    "torch_ms": median_ms(torch_fn, args.runs, sync),
                    "onnx_ms": median_ms(onnx_fn, args.runs, sync),
                    "ok": diff <= args.tolerance and (iou is None or iou >= args.min_mask_iou),
                }
            )
        return expected

    boxed, _ = detector_input(image, pipe.channel_order)
    boxed_t = torch.from_numpy(boxed)[None].to(device)
    check(
        "discovery",
        lambda: detector(boxed_t.permute(0, 3, 1, 2).float() / 255.0),
        lambda: sessions["discovery"].run(None, {"images": boxed[None]}),
    )

    canvas, size = encoder_canvas(image)
    canvas_t, size_t = torch.from_numpy(canvas)[None].to(device), torch.from_numpy(size)[None].to(device)
    embedding = check(
        "encoder",
        lambda: encoder(canvas_t, size_t),
        lambda: sessions["encoder"].run(None, {"image": canvas[None], "image_size": size[None]}),
    )
    embedding_np = embedding.float().cpu().numpy()

    def decoder_stage(n: int) -> None:
        coords, labels = box_prompts(n, seed=n)
        coords_t, labels_t = coords.to(device), labels.to(device)
        feeds = {
            "image_embeddings": embedding_np,
            "point_coords": coords.numpy(),
            "point_labels": labels.numpy(),
        }
        check(
            f"decoder N={n}",
            lambda: decoder(embedding, coords_t, labels_t),
            lambda: sessions["decoder"].run(None, feeds),
            masks=True,
        )

    for n in prompt_counts:
        decoder_stage(n)

    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    copies = ", TF32 off; ONNX times include host<->device copies" if args.device == "cuda" else ""
    print(
        f"{name}, encoder {args.encoder}, FP32{copies}; ONNX Runtime {ort.__version__} {providers[0]}, "
        f"PyTorch {torch.__version__}; median of {args.runs} runs"
    )
    print(format_table(rows))
    if args.json:
        args.json.write_text(json.dumps({"device": name, "encoder": args.encoder, "rows": rows}, indent=2))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
