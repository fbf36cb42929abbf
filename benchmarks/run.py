"""Benchmark SegEvery on this machine and write ``BENCHMARKS.md`` and its plot.

    flock /tmp/heavy.lock .venv/bin/python -m benchmarks.run            # full, ~30 min on 2 cores
    flock /tmp/heavy.lock .venv/bin/python -m benchmarks.run --quick    # ~10 min
    .venv/bin/python -m benchmarks.run --sections e2e,memory --quick --out work/benchmarks/partial.md
    # re-render, no measuring:
    .venv/bin/python -m benchmarks.run --render work/benchmarks/<time>/results.json

Sections: ``decoder`` (box prompts vs the 32x32 grid, in-process), ``e2e`` (Triton vs the in-process
reference at about 10, 50 and 300 boxes with cold embeddings, stage by stage; the encoder and the decoder in
the server vs standalone ONNX Runtime; the server's peak RSS; ``benchmarks/e2e.py``), ``concurrency``
(locust at 1, 2, 4, 8 users), ``soak`` (locust, 4 users, 5 min; 60 s with --quick) and ``memory`` (server RSS
vs prompts and image size, on a fresh server). The servers are started with the launcher on the built model
repository (e2e: on a copy with the embedding cache off); the reference pipeline loads the weights that
repository was built from, in this process, which first re-executes itself with the allocator variables the
launcher gives the servers. ``--baseline-e2e``/``--baseline-run`` add the before/after comparison
(``benchmarks/baseline.sh``). Raw numbers (every repetition, every request) go to
``work/benchmarks/<time>/results.json``, with the default ``--out`` also to benchmarks/results/segevery.json.
The Targets table also reads ``benchmarks/results/overload.json`` and ``interactive.json`` (written by
``benchmarks/overload.py`` and ``benchmarks/interactive.py``); ``benchmarks/allocator.py`` writes its own
section.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a file: python benchmarks/run.py
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import report

SECTIONS = ("decoder", "e2e", "concurrency", "soak", "memory")
DEFAULT_REPOSITORY = REPO_ROOT / "work" / "test-cache" / "model_repository"
DEFAULT_OUT = REPO_ROOT / "BENCHMARKS.md"
DEFAULT_PLOT = REPO_ROOT / "docs" / "benchmarks.png"


def _json_default(value: object) -> object:
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _clean(value: object) -> object:
    """NaN -> None, recursively, so the JSON is standard."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def save(results: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(
        json.dumps(_clean(json.loads(json.dumps(results, default=_json_default))), indent=1) + "\n"
    )
    os.replace(tmp, path)


def _nan_from_none(value: object) -> object:
    if value is None:
        return math.nan
    if isinstance(value, dict):
        return {k: _nan_from_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_from_none(v) for v in value]
    return value


def load_attached(directory: Path = report.RESULTS_DIR) -> dict:
    """Results of the benchmarks that run on their own (overload, interactive, allocator), when present."""
    attached = {}
    for name in report.ATTACHED:
        path = directory / f"{name}.json"
        if path.is_file():
            attached[name] = json.loads(path.read_text())
    return attached


def write_outputs(results: dict, out: Path, plot_path: Path | None) -> None:
    """This report's section of BENCHMARKS.md (``out``; other sections are kept) and the PNG; the markdown
    links the plot relative to itself. The Targets table also covers the benchmarks that run on their own
    (``benchmarks/results/{overload,interactive}.json``, read now)."""
    results = _nan_from_none({**results, "attached": load_attached()})  # type: ignore[assignment]
    link = None
    if plot_path is not None:
        report.plot(results, plot_path)
        link = os.path.relpath(plot_path.resolve(), out.resolve().parent)
    out.parent.mkdir(parents=True, exist_ok=True)
    existing = out.read_text() if out.is_file() else ""
    out.write_text(report.merge_into(existing, report.render_markdown(results, link)))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}"
    )
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, short locust runs (~10 min)")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a few minutes' check that every section runs (numbers meaningless; not for BENCHMARKS.md)",
    )
    parser.add_argument("--reps", type=int, default=None, help="override the repetitions per comparison side")
    parser.add_argument(
        "--model-repository",
        type=Path,
        default=DEFAULT_REPOSITORY,
        help="built repository served by Triton (default: the test suite's, from fake weights)",
    )
    parser.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="checkpoints for the reference pipeline (default: those the repository was built from)",
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="markdown report (default BENCHMARKS.md)"
    )
    parser.add_argument(
        "--plot", type=Path, default=DEFAULT_PLOT, help="PNG plot (default docs/benchmarks.png)"
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="raw results and locust reports (default work/benchmarks/<time>/)",
    )
    parser.add_argument(
        "--merge",
        type=Path,
        default=None,
        metavar="RESULTS_JSON",
        help="carry the sections not measured now (and a baseline) over from an earlier results.json",
    )
    parser.add_argument(
        "--baseline-e2e",
        type=Path,
        default=None,
        help="results of benchmarks/e2e.py run against the old checkout (the before/after table)",
    )
    parser.add_argument(
        "--baseline-run",
        type=Path,
        default=None,
        help="results.json of the old checkout's own benchmarks/run.py --sections e2e",
    )
    parser.add_argument(
        "--baseline-command",
        action="append",
        default=[],
        help="a command that produced the baseline (for the report; repeatable)",
    )
    parser.add_argument(
        "--render",
        type=Path,
        default=None,
        metavar="RESULTS_JSON",
        help="only re-render --out and --plot from a saved results.json",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.render is not None:
        write_outputs(json.loads(args.render.read_text()), args.out, args.plot)
        print(f"wrote {args.out} and {args.plot} from {args.render}")
        return 0
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        print(
            f"benchmarks: unknown sections {sorted(unknown)}; choose from {','.join(SECTIONS)}",
            file=sys.stderr,
        )
        return 2

    # The in-process reference gets the heap tuning the server's ONNX Runtime stubs give themselves (it helps
    # PyTorch more than ONNX Runtime: BENCHMARKS.md "Allocator"), so that no ratio here flatters the server.
    from benchmarks.e2e import ALLOCATOR_KEYS
    from mobilesamv2.inside_triton.glue import keep_large_blocks_in_heap

    reference_heap_tuned = keep_large_blocks_in_heap()
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "False")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(REPO_ROOT / "work" / "ultralytics"))
    import cv2
    import numpy as np

    from benchmarks import measure
    from benchmarks.environment import describe_machine, git_commit, package_versions
    from mobilesamv2.assets import sample_images
    from mobilesamv2.runner.local import TritonServer
    from segment_everything_client import SegmentEverythingClient

    plan = measure.SMOKE if args.smoke else measure.QUICK if args.quick else measure.FULL
    if args.reps is not None:
        plan = dataclasses.replace(plan, reps=args.reps)
    repository = args.model_repository.resolve()
    build_info_path = repository / "BUILD_INFO.json"
    build_info = json.loads(build_info_path.read_text()) if build_info_path.is_file() else {}
    weights_dir = (args.weights or Path(build_info.get("weights_dir", REPO_ROOT / "weights"))).resolve()
    encoder = build_info.get("encoder", "efficientvit_l2")
    run_dir = (args.run_dir or REPO_ROOT / "work" / "benchmarks" / time.strftime("%Y%m%d-%H%M%S")).resolve()
    results_json = run_dir / "results.json"
    started = time.time()

    def log(message: str) -> None:
        print(f"[{(time.time() - started) / 60:5.1f} min] {message}", flush=True)

    results: dict = {
        "meta": {
            "command": shlex.join([".venv/bin/python", "-m", "benchmarks.run", *argv]),
            "quick": args.quick or args.smoke,
            "plan": plan.to_dict(),
            "sections": sections,
            "started": time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(started)),
            "machine": describe_machine(),
            "versions": package_versions(),
            "commit": git_commit(REPO_ROOT),
            "model_repository": os.path.relpath(repository, REPO_ROOT),
            "weights_dir": os.path.relpath(weights_dir, REPO_ROOT),
            "weights": build_info.get("weights", "unknown"),
            "encoder": encoder,
            "results_json": os.path.relpath(results_json, REPO_ROOT),
            "allocator_env": {k: os.environ[k] for k in ALLOCATOR_KEYS if k in os.environ},
            "reference_heap_tuned": reference_heap_tuned,
        }
    }
    if args.merge is not None:
        previous = json.loads(args.merge.read_text())
        carried = [k for k in (*SECTIONS, "baseline") if k in previous and k not in sections]
        for key in carried:
            results[key] = previous[key]
        results["meta"]["carried_over"] = {
            "from": os.path.relpath(args.merge.resolve(), REPO_ROOT),
            "sections": carried,
            "measured": previous["meta"].get("finished"),
            "command": previous["meta"].get("command"),
        }
    if args.baseline_e2e or args.baseline_run:
        results["baseline"] = {
            "e2e": json.loads(args.baseline_e2e.read_text()) if args.baseline_e2e else None,
            "run": json.loads(args.baseline_run.read_text()) if args.baseline_run else None,
            "commands": args.baseline_command,
            "worktree": "work/baseline",
        }
    timer = measure.Timer()
    images = {p.name: p.read_bytes() for p in sample_images()}
    decoded = {
        name: cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) for name, data in images.items()
    }
    log(
        f"plan {'smoke' if args.smoke else 'quick' if args.quick else 'full'}: {', '.join(sections)}; raw "
        f"results {results_json}"
    )

    pipe = None
    if {"decoder", "e2e"} & set(sections):
        from benchmarks.e2e import load_reference

        log(f"loading the reference pipeline ({encoder}) from {weights_dir}")
        pipe = load_reference(weights_dir, encoder)  # leaves no OMP_NUM_THREADS=1 to the servers started next

    if "decoder" in sections:
        log("section decoder: box prompts vs 32x32 grid")
        with timer.section("decoder"):
            rgb = {name: cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) for name, bgr in decoded.items()}
            results["decoder"] = measure.decoder_section(pipe, rgb, plan, log)
        save(results, results_json)

    if "e2e" in sections:
        from benchmarks import e2e

        cold = e2e.repository_variant(
            repository, run_dir / "repository-cold", {"segment_everything": {"embedding_cache_mb": "0"}}
        )
        log(f"section e2e: Triton (cold embeddings: {cold}) vs in-process reference")
        with (
            timer.section("e2e"),
            TritonServer(cold, log_path=run_dir / "tritonserver-e2e.log", startup_timeout=300) as server,
            SegmentEverythingClient(server.grpc_url, timeout=1800, retries=0) as client,
        ):
            results["e2e"] = e2e.e2e_section(
                pipe, client, server.pid, images, cold, weights_dir, plan.reps, log=log
            )
        save(results, results_json)

    if {"concurrency", "soak", "memory"} & set(sections):
        log(f"starting Triton on {repository}")
        with (
            TritonServer(repository, log_path=run_dir / "tritonserver.log", startup_timeout=300) as server,
            SegmentEverythingClient(server.grpc_url, timeout=1800, retries=0) as client,
        ):
            if "memory" in sections:  # first: on a fresh server
                log("section memory: server RSS vs prompts and image size")
                with timer.section("memory"):
                    results["memory"] = measure.memory_section(
                        server.pid, client, decoded["bus.jpg"], plan, log
                    )
                save(results, results_json)
            if "concurrency" in sections:
                log(
                    "section concurrency: locust at "
                    + ", ".join(map(str, plan.concurrency_levels))
                    + " users"
                )
                with timer.section("concurrency"):
                    results["concurrency"] = measure.concurrency_section(
                        server.grpc_url, plan, run_dir / "locust", log
                    )
                save(results, results_json)
            if "soak" in sections:
                log(f"section soak: {plan.soak_users} users for {plan.soak_run_time}")
                with timer.section("soak"):
                    results["soak"] = measure.soak_section(server.grpc_url, plan, run_dir / "locust", log)
                save(results, results_json)

    results["meta"]["finished"] = time.strftime("%Y-%m-%d %H:%M %Z")
    results["meta"]["duration_s"] = time.time() - started
    results["meta"]["section_seconds"] = timer.seconds
    save(results, results_json)
    if args.out.resolve() == DEFAULT_OUT.resolve():  # the committed copy BENCHMARKS.md is rendered from
        save(results, report.RESULTS_DIR / "segevery.json")
    write_outputs(json.loads(results_json.read_text()), args.out, args.plot)
    print("\n" + report.console_summary(_nan_from_none(results)))  # type: ignore[arg-type]
    print(f"\nwrote {args.out}, {args.plot} and {results_json} in {(time.time() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
