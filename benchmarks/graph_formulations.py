"""Served ONNX graphs vs upstream's ops, side by side in ONNX Runtime (CPU): image encoder and detector.

    flock /tmp/heavy.lock .venv/bin/python -m benchmarks.graph_formulations        # ~4 min on 2 cores

Graphs of the same modules and weights, exported by this checkout:

- image encoder (EfficientViT-SAM-L2):
  - ``upstream ops``: the module's ops as they are, opset 18: the neck's two bicubic resizes as ONNX
    ``Resize`` and each tanh GELU as 7 elementary ops (the served graph before this formulation);
  - ``TensorRT source``: what the build writes as ``image_encoder/1/plain.onnx``: resizes as matrix products,
    GELUs expanded again, opset 18;
  - ``served``: ``image_encoder/1/model.onnx``: resizes as matrix products, one fused ``Gelu`` per GELU,
    opset 20;
- detector (the object-aware model):
  - ``upstream ops``: ultralytics' DFL box decoding as it is (softmax over a middle axis);
  - ``served``: ``object_discovery/1/detector.onnx``: the DFL softmax over the last axis, its expectation a
    MatMul.

Each graph runs in its own ONNX Runtime session with the served config's options (``glue.ort_settings`` of
the committed ``model_repository/<model>/config.pbtxt``: threads from the usable CPUs, no spinning) on
bus.jpg (the encoder's canvas, the detector's letterbox), batch 1. Rounds rotate the order (A B C, B C A,
...); medians. Parity: each graph's output against PyTorch's (upstream's formulation), scaled max difference.
The op breakdown is ONNX Runtime's profiler (kernel time per op type, one profiled session per graph, mean of
4 runs).
Raw numbers: ``benchmarks/results/graph_formulations.json``; the tables go into BENCHMARKS.md between its
markers.
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

from benchmarks.e2e import served_session  # noqa: E402
from benchmarks.environment import describe_machine, git_commit, package_versions  # noqa: E402
from benchmarks.sections import publish, rerender  # noqa: E402

START, END = "<!-- graph-formulations:start -->", "<!-- graph-formulations:end -->"
DEFAULT_WEIGHTS = REPO_ROOT / "work" / "test-cache" / "weights"
#: model -> (the served config whose ONNX Runtime options the sessions take, its variants in table order)
MODELS = {
    "image encoder": ("image_encoder", ("upstream ops", "TensorRT source", "served")),
    "detector": ("object_discovery", ("upstream ops", "served")),
}
#: op types whose node counts the table shows, per model
COUNTED_OPS = {"image encoder": ("Resize", "Gelu", "Tanh"), "detector": ("Softmax", "Transpose", "Conv")}


def _file(run_dir: Path, model: str, variant: str) -> Path:
    return run_dir / f"{model.replace(' ', '-')}-{variant.replace(' ', '-')}.onnx"


def export_encoders(weights: Path, run_dir: Path, rgb: np.ndarray) -> tuple[dict[str, Path], dict]:
    """The three encoder graphs, and the feeds and PyTorch output of bus.jpg's canvas."""
    import torch

    from mobilesamv2.export import onnx_export
    from mobilesamv2.modeling.checkpoints import encoder_spec, load_image_encoder
    from mobilesamv2.modeling.image_encoder import ImageEncoderGraph
    from mobilesamv2.processing.image import encoder_canvas

    spec = encoder_spec("efficientvit_l2")
    graph = ImageEncoderGraph(load_image_encoder("efficientvit_l2", weights / spec.filename), spec.input_pool)
    graph.eval()
    canvases = [encoder_canvas(rgb), encoder_canvas(np.ascontiguousarray(rgb[:500, :700]))]
    paths = {}
    for variant, tuned in (("upstream ops", False), ("served", True)):
        paths[variant] = _file(run_dir, "image encoder", variant)
        onnx_export.export_image_encoder(graph, paths[variant], canvases, tuned=tuned)
    paths["TensorRT source"] = _file(run_dir, "image encoder", "TensorRT source")
    onnx_export.write_tensorrt_source(paths["served"], paths["TensorRT source"])
    canvas, size = canvases[0]
    feeds = {"image": canvas[None], "image_size": size[None]}
    with torch.no_grad():
        expected = graph(torch.from_numpy(feeds["image"]), torch.from_numpy(feeds["image_size"])).numpy()
    return paths, {"feeds": feeds, "expected": expected}


def export_detectors(weights: Path, run_dir: Path, rgb: np.ndarray) -> tuple[dict[str, Path], dict]:
    """The two detector graphs, and the feeds and PyTorch output of bus.jpg's letterbox."""
    import torch

    from mobilesamv2.export import onnx_export
    from mobilesamv2.modeling.detector import load_object_aware_model
    from mobilesamv2.processing.image import detector_input

    network = load_object_aware_model(weights / "ObjectAwareModel.pt")
    boxed, _ = detector_input(rgb)
    paths = {}
    for variant, tuned in (("upstream ops", False), ("served", True)):
        paths[variant] = _file(run_dir, "detector", variant)
        onnx_export.export_detector(network, paths[variant], [boxed], tuned=tuned)
    graph = onnx_export.DetectorGraph(network).eval()
    feeds = {"images": boxed[None]}
    with torch.no_grad():
        expected = graph(torch.from_numpy(feeds["images"])).numpy()
    return paths, {"feeds": feeds, "expected": expected}


def session(path: Path, config_model: str, profile_prefix: str | None = None):
    """The graph in an ONNX Runtime session with the committed config's served options."""
    return served_session(path, REPO_ROOT / "model_repository", config_model, profile_prefix)


def op_profile(path: Path, config_model: str, feeds: dict, run_dir: Path, runs: int = 4) -> dict[str, float]:
    """Kernel milliseconds per op type and run (ONNX Runtime's profiler, mean of ``runs`` runs, the first
    included: the profiler records from the session's start)."""
    sess, _ = session(path, config_model, str(run_dir / "profile"))
    for _ in range(runs):
        sess.run(None, feeds)
    trace = Path(sess.end_profiling())
    by_op: collections.Counter = collections.Counter()
    for event in json.loads(trace.read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            by_op[event["args"].get("op_name", "?")] += event["dur"]
    trace.unlink()
    return {op: us / 1e3 / runs for op, us in by_op.most_common()}


def measure_model(name: str, paths: dict[str, Path], data: dict, run_dir: Path, rounds: int) -> dict:
    from mobilesamv2.export import onnx_export

    config_model, variants = MODELS[name]
    feeds, expected = data["feeds"], data["expected"]
    out: dict[str, dict] = {}
    sessions = {}
    for variant in variants:
        sess, threads = session(paths[variant], config_model)
        got = sess.run(None, feeds)[0]
        scale = max(1.0, float(np.abs(expected).max()))
        ops, opset = onnx_export.op_counts(paths[variant])
        out[variant] = {
            "file": paths[variant].name,
            "scaled_max_diff": float(np.abs(got - expected).max() / scale),
            "ops": ops,
            "opset": opset,
            "threads": threads,
        }
        sess.run(None, feeds)  # warm-up
        sessions[variant] = sess
    times: dict[str, list[float]] = {variant: [] for variant in variants}
    for r in range(rounds):
        k = r % len(variants)
        for variant in variants[k:] + variants[:k]:
            start = time.perf_counter()
            sessions[variant].run(None, feeds)
            times[variant].append((time.perf_counter() - start) * 1e3)
    sessions.clear()
    for variant in variants:
        out[variant]["ms"] = times[variant]
        out[variant]["median_ms"] = float(np.median(times[variant]))
        out[variant]["kernel_ms_by_op"] = op_profile(paths[variant], config_model, feeds, run_dir)
    return out


def measure(weights: Path, run_dir: Path, rounds: int) -> dict:
    import torch

    from mobilesamv2.assets import bus_jpg

    torch.manual_seed(0)
    rgb = cv2.cvtColor(cv2.imread(str(bus_jpg())), cv2.COLOR_BGR2RGB)
    models = {}
    for name, export in (("image encoder", export_encoders), ("detector", export_detectors)):
        paths, data = export(weights, run_dir, rgb)
        models[name] = measure_model(name, paths, data, run_dir, rounds)
    return {
        "models": models,
        "rounds": rounds,
        "machine": describe_machine(),
        "versions": package_versions(("onnxruntime", "torch")),
        "commit": git_commit(REPO_ROOT),
    }


def _threads(count: int) -> str:
    return f"{count} threads" if count else "ONNX Runtime's default thread count, as served"


def render(results: dict) -> str:
    m = results["machine"]
    lines = [
        "## Graph formulations (`python -m benchmarks.graph_formulations`)",
        "",
        f"Measured {results['finished']} on {m['cpu']} ({m['usable_cpus']} usable CPUs), onnxruntime "
        f"{results['versions'].get('onnxruntime', '?')}, commit {results['commit']}: the served ONNX graphs "
        "against the modules' ops as they are, exported from the same modules and weights (seeded random "
        "weights in the official formats; timings do not depend on the values), each in an ONNX Runtime "
        "session with the served config's options, bus.jpg, batch 1, "
        f"{results['rounds']} rounds rotating the order, medians. Parity: scaled max difference of the "
        "output against PyTorch running upstream's formulation (bicubic `F.interpolate`, ultralytics' DFL).",
    ]
    for name, (_, variants) in MODELS.items():
        v = results["models"][name]
        base = v["upstream ops"]["median_ms"]
        counted = COUNTED_OPS[name]
        lines += [
            "",
            f"**{name[0].upper()}{name[1:]}** ({_threads(v['served']['threads'])}):",
            "",
            f"| graph | file | opset | {' / '.join(counted)} nodes | ms (median) | vs upstream ops | "
            "diff vs PyTorch |",
            "|---|---|---|---|---|---|---|",
        ]
        for variant in variants:
            x = v[variant]
            nodes = " / ".join(str(x["ops"].get(op, 0)) for op in counted)
            lines.append(
                f"| {variant} | `{x['file']}` | {x['opset']} | {nodes} | {x['median_ms']:,.1f} | "
                f"{base / x['median_ms']:.2f}x | {x['scaled_max_diff']:.1e} |"
            )
        top = {op for variant in variants for op in list(v[variant]["kernel_ms_by_op"])[:6]}
        lines += [
            "",
            "| kernel ms per run, by op type | " + " | ".join(variants) + " |",
            "|---|" + "---|" * len(variants),
        ]
        for op in sorted(top, key=lambda o: -v["upstream ops"]["kernel_ms_by_op"].get(o, 0.0)):
            cells = [f"{v[variant]['kernel_ms_by_op'].get(op, 0.0):,.1f}" for variant in variants]
            lines.append(f"| {op} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Served: `image_encoder/1/model.onnx` and `object_discovery/1/detector.onnx` (ONNX Runtime); "
        "NVIDIA's TensorRT builds the encoder's engine from `plain.onnx` (its ONNX parser trails ONNX "
        "Runtime in opsets). Reproduce: "
        "`flock /tmp/heavy.lock .venv/bin/python -m benchmarks.graph_formulations`.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=None, help="checkpoints (default: the test cache's)")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--run-dir", type=Path, default=REPO_ROOT / "work" / "benchmarks" / "graphs")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "BENCHMARKS.md")
    parser.add_argument(
        "--json", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "graph_formulations.json"
    )
    parser.add_argument("--render", action="store_true", help="only re-render --out from --json")
    args = parser.parse_args(argv)
    if args.render:
        return rerender(args.json, args.out, START, END, render)
    args.run_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="graph-formulations-weights-") as tmp:
        weights = args.weights or (DEFAULT_WEIGHTS if (DEFAULT_WEIGHTS / "l2.pt").is_file() else None)
        if weights is None:
            from mobilesamv2.fake_checkpoints import write_all

            weights = Path(tmp)
            write_all(weights, seed=0, encoders=("efficientvit_l2",))
        results = measure(weights, args.run_dir, args.rounds)
    results["command"] = " ".join(["python -m benchmarks.graph_formulations", *(argv or sys.argv[1:])])
    publish(results, args.json, args.out, START, END, render)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("YOLO_OFFLINE", "1")
    raise SystemExit(main())
