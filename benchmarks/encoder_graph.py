"""The image encoder's ONNX graph: upstream ops vs the served formulation, side by side in ONNX Runtime (CPU).

    flock /tmp/heavy.lock .venv/bin/python -m benchmarks.encoder_graph        # ~3 min on 2 cores

Three graphs of the same EfficientViT-SAM-L2 encoder and weights, exported by this checkout:
- ``upstream ops``: the module's ops as they are, opset 18: the neck's two bicubic resizes as ONNX ``Resize``
  and each tanh GELU as 7 elementary ops (the served graph before this formulation);
- ``TensorRT source``: what the build writes as ``image_encoder/1/plain.onnx``: resizes as matrix products,
  GELUs expanded again, opset 18;
- ``served``: ``image_encoder/1/model.onnx``: resizes as matrix products, one fused ``Gelu`` per GELU,
  opset 20.

Each runs in its own ONNX Runtime session with the served config's options (``glue.ort_settings`` of
``model_repository/image_encoder/config.pbtxt``: threads from the usable CPUs, no spinning) on bus.jpg's
canvas, batch 1. Rounds rotate the order (A B C, B C A, C A B, ...); medians. Parity: each graph's
embeddings against PyTorch's (the module with bicubic ``F.interpolate``), scaled max difference. The op
breakdown is ONNX Runtime's profiler (kernel time per op type, one profiled session per graph, 2 runs).
Raw numbers: ``benchmarks/results/encoder_graph.json``; the table goes into BENCHMARKS.md between its markers.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a file
    sys.path.insert(0, str(REPO_ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.e2e import served_parameters  # noqa: E402
from benchmarks.environment import describe_machine, git_commit, package_versions  # noqa: E402
from benchmarks.sections import publish  # noqa: E402

START, END = "<!-- encoder-graph:start -->", "<!-- encoder-graph:end -->"
VARIANTS = ("upstream ops", "TensorRT source", "served")
DEFAULT_WEIGHTS = REPO_ROOT / "work" / "test-cache" / "weights"


def export_variants(graph, run_dir: Path, canvases: list) -> dict[str, dict]:
    from mobilesamv2.export import onnx_export

    out: dict[str, dict] = {}
    for name, tuned in (("upstream ops", False), ("served", True)):
        path = run_dir / f"{name.replace(' ', '-')}.onnx"
        report = onnx_export.export_image_encoder(graph, path, canvases, tuned=tuned)
        out[name] = {"path": str(path), "max_diff_vs_pytorch": report.max_abs_diff}
    plain = run_dir / "tensorrt-source.onnx"
    expanded = onnx_export.write_tensorrt_source(Path(out["served"]["path"]), plain)
    out["TensorRT source"] = {"path": str(plain), "gelus_expanded": expanded}
    return out


def op_counts(path: Path) -> tuple[dict[str, int], int]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    counts = collections.Counter(n.op_type for n in model.graph.node)
    return dict(counts), next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def session(path: Path, profile_prefix: str | None = None):
    import onnxruntime as ort

    from mobilesamv2.server import glue

    settings = glue.ort_settings(
        glue.Parameters(served_parameters(REPO_ROOT / "model_repository", "image_encoder"))
    )
    options = glue.ort_session_options(settings)
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    sess = ort.InferenceSession(
        str(path),
        sess_options=options,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=settings["disabled_optimizers"] or None,
    )
    return sess, settings["intra_op_thread_count"]


def op_profile(path: Path, feeds: dict, run_dir: Path, runs: int = 2) -> dict[str, float]:
    """Kernel milliseconds per op type and run (ONNX Runtime's profiler)."""
    sess, _ = session(path, str(run_dir / "profile"))
    sess.run(None, feeds)
    for _ in range(runs):
        sess.run(None, feeds)
    trace = Path(sess.end_profiling())
    by_op: collections.Counter = collections.Counter()
    for event in json.loads(trace.read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            by_op[event["args"].get("op_name", "?")] += event["dur"]
    trace.unlink()
    return {op: us / 1e3 / (runs + 1) for op, us in by_op.most_common()}


def measure(weights: Path, run_dir: Path, rounds: int) -> dict:
    import torch

    from mobilesamv2.assets import bus_jpg
    from mobilesamv2.modeling.checkpoints import encoder_spec, load_image_encoder
    from mobilesamv2.modeling.image_encoder import ImageEncoderGraph
    from mobilesamv2.processing.image import encoder_canvas

    rgb = cv2.cvtColor(cv2.imread(str(bus_jpg())), cv2.COLOR_BGR2RGB)
    canvases = [encoder_canvas(rgb), encoder_canvas(np.ascontiguousarray(rgb[:500, :700]))]
    spec = encoder_spec("efficientvit_l2")
    torch.manual_seed(0)
    graph = ImageEncoderGraph(load_image_encoder("efficientvit_l2", weights / spec.filename), spec.input_pool)
    graph.eval()
    variants = export_variants(graph, run_dir, canvases)
    canvas, size = canvases[0]
    feeds = {"image": canvas[None], "image_size": size[None]}
    with torch.no_grad():
        expected = graph(torch.from_numpy(feeds["image"]), torch.from_numpy(feeds["image_size"])).numpy()
    del graph
    sessions = {}
    for name in VARIANTS:
        sess, threads = session(Path(variants[name]["path"]))
        got = sess.run(None, feeds)[0]
        variants[name]["bus_scaled_max_diff"] = float(
            np.abs(got - expected).max() / max(1.0, np.abs(expected).max())
        )
        variants[name]["ops"], variants[name]["opset"] = op_counts(Path(variants[name]["path"]))
        variants[name]["threads"] = threads
        sess.run(None, feeds)  # warm-up
        sessions[name] = sess
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for r in range(rounds):
        order = VARIANTS[r % 3 :] + VARIANTS[: r % 3]
        for name in order:
            start = time.perf_counter()
            sessions[name].run(None, feeds)
            times[name].append((time.perf_counter() - start) * 1e3)
    sessions.clear()
    for name in VARIANTS:
        variants[name]["ms"] = times[name]
        variants[name]["median_ms"] = float(np.median(times[name]))
        variants[name]["kernel_ms_by_op"] = op_profile(Path(variants[name]["path"]), feeds, run_dir)
    return {
        "variants": variants,
        "rounds": rounds,
        "machine": describe_machine(),
        "versions": package_versions(("onnxruntime", "torch")),
        "commit": git_commit(REPO_ROOT),
    }


def render(results: dict) -> str:
    v = results["variants"]
    m = results["machine"]
    base = v["upstream ops"]["median_ms"]
    lines = [
        "## Image encoder graph (`python -m benchmarks.encoder_graph`)",
        "",
        f"Measured {results['finished']} on {m['cpu']} ({m['usable_cpus']} usable CPUs), onnxruntime "
        f"{results['versions'].get('onnxruntime', '?')}, commit {results['commit']}: the EfficientViT-SAM-L2 "
        "encoder (seeded "
        "random weights in the official format; timings do not depend on the values) exported three ways "
        "from "
        f"the same module, each in an ONNX Runtime session with the served config's options "
        f"({v['served']['threads']} threads), bus.jpg's canvas, batch 1, {results['rounds']} rounds rotating "
        "the order, medians. Parity: scaled max difference of the embeddings against PyTorch (bicubic "
        "`F.interpolate`).",
        "",
        "| graph | opset | Resize / Gelu / Tanh nodes | ms (median) | vs upstream ops | diff vs PyTorch |",
        "|---|---|---|---|---|---|",
    ]
    for name in VARIANTS:
        x = v[name]
        nodes = " / ".join(str(x["ops"].get(op, 0)) for op in ("Resize", "Gelu", "Tanh"))
        lines.append(
            f"| {name} | {x['opset']} | {nodes} | "
            f"{x['median_ms']:,.1f} | {base / x['median_ms']:.2f}x | {x['bus_scaled_max_diff']:.1e} |"
        )
    top = sorted({op for name in VARIANTS for op in list(v[name]["kernel_ms_by_op"])[:6]})
    lines += [
        "",
        "Kernel time per op type (ms per run, ONNX Runtime's profiler):",
        "",
        "| op | " + " | ".join(VARIANTS) + " |",
        "|---|" + "---|" * len(VARIANTS),
    ]
    for op in sorted(top, key=lambda o: -v["upstream ops"]["kernel_ms_by_op"].get(o, 0.0)):
        cells = [f"{v[name]['kernel_ms_by_op'].get(op, 0.0):,.1f}" for name in VARIANTS]
        lines.append(f"| {op} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "The served graph is `image_encoder/1/model.onnx` (ONNX Runtime); NVIDIA's TensorRT builds its "
        "engine from `plain.onnx` (TensorRT's ONNX parser trails ONNX Runtime in opsets). Reproduce: "
        "`flock /tmp/heavy.lock .venv/bin/python -m benchmarks.encoder_graph`.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=None, help="checkpoints (default: the test cache's)")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--run-dir", type=Path, default=REPO_ROOT / "work" / "benchmarks" / "encoder-graph")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "BENCHMARKS.md")
    parser.add_argument(
        "--json", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "encoder_graph.json"
    )
    args = parser.parse_args(argv)
    args.run_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="encoder-graph-weights-") as tmp:
        weights = args.weights or (DEFAULT_WEIGHTS if (DEFAULT_WEIGHTS / "l2.pt").is_file() else None)
        if weights is None:
            from mobilesamv2.fake_checkpoints import write_all

            weights = Path(tmp)
            write_all(weights, seed=0, encoders=("efficientvit_l2",))
        results = measure(weights, args.run_dir, args.rounds)
    results["command"] = " ".join(["python -m benchmarks.encoder_graph", *(argv or sys.argv[1:])])
    publish(results, args.json, args.out, START, END, render)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("YOLO_OFFLINE", "1")
    raise SystemExit(main())
