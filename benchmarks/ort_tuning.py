"""ONNX Runtime session options for the served graphs, measured rather than guessed.

    python benchmarks/ort_tuning.py [--repository work/test-cache/model_repository] [--repeats 5]

For the decoder (factorized graph, 16 box prompts = one slice of the runner) and the image encoder (batch 1)
it times every combination below in one process, alternating configurations on each repeat so noise spreads
evenly, and writes the medians into BENCHMARKS.md between its markers. The PyTorch modules are timed in the
same loop as a baseline. The winning options are the ones set in the committed configs.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.sections import write_section  # noqa: E402

START, END = "<!-- ort-tuning:start -->", "<!-- ort-tuning:end -->"

OPTIONS = {
    "graph_optimization_level": ["basic", "extended", "all"],
    "enable_cpu_mem_arena": [True, False],
    "intra_op_threads": [1, 0],  # 0 = one per core
    "skip_layer_norm_fusion": [True, False],  # ORT's Add+LayerNorm fusion (SkipLayerNormalization kernel)
}


def session(path: Path, level: str, arena: bool, threads: int, skip_ln_fusion: bool):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    options.enable_cpu_mem_arena = arena
    options.intra_op_num_threads = threads
    disabled = None if skip_ln_fusion else ["SkipLayerNormFusion"]
    return ort.InferenceSession(
        str(path), options, providers=["CPUExecutionProvider"], disabled_optimizers=disabled
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=REPO_ROOT / "work/test-cache/model_repository")
    parser.add_argument("--weights", type=Path, default=REPO_ROOT / "work/test-cache/weights")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "BENCHMARKS.md")
    args = parser.parse_args(argv)

    import cv2
    import torch

    from mobilesamv2.assets import bus_jpg
    from mobilesamv2.export.onnx_export import box_prompts
    from mobilesamv2.modeling.checkpoints import load_image_encoder, load_prompt_decoder
    from mobilesamv2.modeling.fast_decoder import FactorizedPromptDecoder
    from mobilesamv2.modeling.image_encoder import ImageEncoderGraph
    from mobilesamv2.processing.image import encoder_canvas

    threads = os.cpu_count() or 2
    torch.set_num_threads(threads)
    canvas, size = encoder_canvas(cv2.cvtColor(cv2.imread(str(bus_jpg())), cv2.COLOR_BGR2RGB))
    coords, labels = box_prompts(args.prompts, seed=1)
    embedding = torch.randn(1, 256, 64, 64)
    feeds = {
        "prompt_decoder": {
            "image_embeddings": embedding.numpy(),
            "point_coords": coords.numpy(),
            "point_labels": labels.numpy(),
        },
        "image_encoder": {"image": canvas[None], "image_size": size[None]},
    }
    plain = load_prompt_decoder(args.weights / "Prompt_guided_Mask_Decoder.pt")
    torch_modules = {
        "prompt_decoder": (FactorizedPromptDecoder(plain).eval(), (embedding, coords, labels)),
        "image_encoder": (
            ImageEncoderGraph(
                load_image_encoder("efficientvit_l2", args.weights / "l2.pt"), input_pool=2
            ).eval(),
            (torch.from_numpy(canvas[None]), torch.from_numpy(size[None])),
        ),
    }
    configs = list(itertools.product(*OPTIONS.values()))
    results: dict[tuple, list[float]] = {}
    sessions = {}
    for model, feed in feeds.items():
        path = args.repository / model / "1/model.onnx"
        for config in configs:
            sessions[(model, config)] = session(path, *config)
            sessions[(model, config)].run(None, feed)  # warm-up
    for repeat in range(args.repeats):
        for model, feed in feeds.items():
            module, inputs = torch_modules[model]
            start = time.perf_counter()
            with torch.no_grad():
                module(*inputs)
            results.setdefault((model, "torch"), []).append(time.perf_counter() - start)
            for config in configs[repeat % len(configs) :] + configs[: repeat % len(configs)]:
                start = time.perf_counter()
                sessions[(model, config)].run(None, feed)
                results.setdefault((model, config), []).append(time.perf_counter() - start)
        print(f"repeat {repeat + 1}/{args.repeats} done", file=sys.stderr, flush=True)

    lines = [
        "## ONNX Runtime session options (CPU)",
        "",
        f"Medians of {args.repeats} alternating repeats, {threads} cores; decoder = factorized graph with "
        f"{args.prompts} box prompts (one slice of the runner), encoder = EfficientViT-L2 at batch 1 on "
        "bus.jpg.",
        "",
        "| model | runtime | graph optimisation | memory arena | intra-op threads | Add+LayerNorm fusion | "
        "median ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for model in feeds:
        ranked = sorted(
            ((statistics.median(v), k) for k, v in results.items() if k[0] == model), key=lambda x: x[0]
        )
        for ms, key in ranked:
            if key[1] == "torch":
                lines.append(f"| {model} | PyTorch (eager) | - | - | {threads} | - | {ms * 1e3:.0f} |")
            else:
                level, arena, t, fusion = key[1]
                lines.append(
                    f"| {model} | ONNX Runtime | {level} | {'on' if arena else 'off'} | {t or threads} | "
                    f"{'on' if fusion else 'off'} | {ms * 1e3:.0f} |"
                )
    lines += ["", "Reproduce: `python benchmarks/ort_tuning.py`."]
    section = "\n".join(lines)
    print(section)
    write_section(args.out, START, END, section)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT))
    sys.exit(main())
