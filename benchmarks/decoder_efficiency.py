"""Decoder efficiency: ms per prompt, share of the matmul peak and peak memory, reference vs ours, side by
side.

    python benchmarks/decoder_efficiency.py [--weights work/test-cache/weights] [--repeats 3]
        [--out BENCHMARKS.md]

Rows, each measured in a fresh subprocess (so peak RSS belongs to that configuration alone), alternating
reference / ours for every N so machine noise hits both:
- ``reference (PyTorch)``: SAM's decoder as the reference pipeline runs it (one call, all N prompts);
- ``plain ONNX (ORT)``: SAM's formulation exported, one ORT call (the TensorRT source graph);
- ``ours: factorized ONNX, slices of S``: the served graph as the Python-based ONNX Runtime backend runs it
  (the prompt axis in slices of S rows inside one Triton call).
The compute limit is this machine's FP32 matmul rate (torch, 2048x2048, same threads) measured in the same
run, and the FLOPs per prompt are counted with torch's FlopCounterMode on the plain formulation.
The table is printed and written into BENCHMARKS.md between the markers of its section (the rest is kept).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.sections import write_section  # noqa: E402

START, END = "<!-- decoder-efficiency:start -->", "<!-- decoder-efficiency:end -->"


def matmul_gflops(threads: int, size: int = 2048, repeats: int = 10) -> float:
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def flops_per_prompt(weights: Path) -> tuple[float, float]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from mobilesamv2.export.onnx_export import box_prompts
    from mobilesamv2.modeling.checkpoints import load_prompt_decoder
    from mobilesamv2.modeling.fast_decoder import FactorizedPromptDecoder

    plain = load_prompt_decoder(weights / "Prompt_guided_Mask_Decoder.pt")
    fast = FactorizedPromptDecoder(plain)
    emb = torch.randn(1, 256, 64, 64)
    coords, labels = box_prompts(8)
    out = []
    for module in (plain, fast):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(emb, coords, labels)
        out.append(counter.get_total_flops() / 8 / 1e9)
    return out[0], out[1]


# --- one configuration, in its own process ------------------------------------------------------------------


def run_one(
    kind: str, n: int, weights: Path, repository: Path, threads: int, slice_rows: int, repeats: int
) -> dict:
    import numpy as np
    import torch

    from mobilesamv2.export.onnx_export import box_prompts

    torch.set_num_threads(threads)
    coords, labels = box_prompts(n, seed=n)
    emb = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(0))
    if kind == "reference":
        from mobilesamv2.modeling.checkpoints import load_prompt_decoder

        decoder = load_prompt_decoder(weights / "Prompt_guided_Mask_Decoder.pt")

        def call():
            with torch.no_grad():
                decoder(emb, coords, labels)

    else:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        path = repository / "prompt_decoder/1" / ("plain.onnx" if kind == "plain" else "model.onnx")
        disabled = None
        if kind == "ours":  # the served config's options (model_repository/prompt_decoder/config.pbtxt)
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
            disabled = ["SkipLayerNormFusion"]
        session = ort.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"], disabled_optimizers=disabled
        )
        feeds = {
            "image_embeddings": emb.numpy(),
            "point_coords": coords.numpy(),
            "point_labels": labels.numpy(),
        }
        rows = n if kind == "plain" else slice_rows

        def call():
            outs = []
            for start in range(0, n, rows):
                part = {
                    **feeds,
                    "point_coords": feeds["point_coords"][start : start + rows],
                    "point_labels": feeds["point_labels"][start : start + rows],
                }
                outs.append(session.run(None, part)[0])
            return np.concatenate(outs)

    call()  # warm-up (also the first allocation of every buffer)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times)}


def measure(kind: str, n: int, args) -> dict:
    """Run one configuration in a subprocess; sample its RSS to get the peak."""
    import psutil

    cmd = [
        sys.executable,
        __file__,
        "--child",
        kind,
        str(n),
        "--weights",
        str(args.weights),
        "--repository",
        str(args.repository),
        "--threads",
        str(args.threads),
        "--slice",
        str(args.slice),
        "--repeats",
        str(args.repeats),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    peak, ps = 0, psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            peak = max(peak, ps.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.02)
    out = proc.stdout.read()
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}", "peak_rss_gib": peak / 2**30}
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_gib"] = peak / 2**30
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=REPO_ROOT / "work/test-cache/weights")
    parser.add_argument("--repository", type=Path, default=REPO_ROOT / "work/test-cache/model_repository")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument(
        "--slice", type=int, default=16, help="rows per ORT run for our decoder (config max_rows_per_run)"
    )
    parser.add_argument("--counts", default="1,32,300")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--plain-onnx-max-n",
        type=int,
        default=32,
        help="largest N for the plain ONNX graph in one call (300 prompts needed 21.6 GB here)",
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "BENCHMARKS.md")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, n = args.child[0], int(args.child[1])
        print(
            json.dumps(
                run_one(kind, n, args.weights, args.repository, args.threads, args.slice, args.repeats)
            )
        )
        return 0

    peak = matmul_gflops(args.threads)
    ref_flops, our_flops = flops_per_prompt(args.weights)
    limit_ms = ref_flops / peak * 1e3
    rows = []
    for n in (int(c) for c in args.counts.split(",")):
        kinds = ["reference", "plain", "ours"] if n <= args.plain_onnx_max_n else ["reference", "ours"]
        for kind in kinds:
            result = measure(kind, n, args)
            ms = result.get("median_s", float("nan")) / n * 1e3
            flops = our_flops if kind == "ours" else ref_flops
            rows.append(
                {
                    "kind": kind,
                    "n": n,
                    "ms_per_prompt": ms,
                    "peak_rss_gib": result["peak_rss_gib"],
                    "share_of_peak": (flops / (ms / 1e3)) / peak if not math.isnan(ms) else float("nan"),
                    "error": result.get("error"),
                }
            )
            print(
                f"N={n:4d} {kind:10s} {ms:8.1f} ms/prompt  peak RSS {result['peak_rss_gib']:.2f} GiB"
                + (f"  ({result['error']})" if result.get("error") else ""),
                flush=True,
            )

    names = {
        "reference": "reference (PyTorch, one call)",
        "plain": "plain ONNX (ORT, one call)",
        "ours": f"ours: factorized ONNX (ORT tuned, slices of {args.slice})",
    }
    lines = [
        "## Decoder efficiency (prompt encoder + mask decoder, CPU, FP32)",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {args.threads} threads; matmul peak "
        f"measured in this run: **{peak:.0f} GFLOP/s** (torch, 2048x2048). FLOPs per prompt (torch "
        f"FlopCounterMode): reference {ref_flops:.2f} GFLOP, ours {our_flops:.2f} GFLOP. Compute limit of "
        f"the reference formulation: **{limit_ms:.1f} ms/prompt**; target <= {1.5 * limit_ms:.1f} ms/prompt "
        "at N = 300 and <= 2 GB.",
        "",
        "| decoder | N | ms / prompt | share of matmul peak (own FLOPs) | peak RSS (GiB) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        value = f"{r['ms_per_prompt']:.1f}" if not r["error"] else f"failed ({r['error']})"
        lines.append(
            f"| {names[r['kind']]} | {r['n']} | {value} | {r['share_of_peak']:.0%} | {r['peak_rss_gib']:.2f} "
            "|"
        )
    ours300 = next(
        (r for r in rows if r["kind"] == "ours" and r["n"] == max(int(c) for c in args.counts.split(","))),
        None,
    )
    if ours300:
        lines += [
            "",
            f"At N = {ours300['n']}: ours {ours300['ms_per_prompt']:.1f} ms/prompt = "
            f"{ours300['ms_per_prompt'] / limit_ms:.2f}x the reference formulation's compute limit, "
            f"peak {ours300['peak_rss_gib']:.2f} GiB (process RSS, incl. the ORT session and Python).",
        ]
    lines += [
        "",
        f"Reproduce: `python benchmarks/decoder_efficiency.py --repeats {args.repeats}` "
        "(random-weight checkpoints in the official formats; timings do not depend on the weights' values).",
    ]
    section = "\n".join(lines)
    print(section)
    write_section(args.out, START, END, section)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT))
    sys.exit(main())
