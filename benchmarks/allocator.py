"""Memory allocator: glibc defaults vs glibc tuning vs jemalloc vs tcmalloc, for the server and the reference.

    flock /tmp/heavy.lock .venv/bin/python -m benchmarks.allocator        # ~12 min on 2 cores

(a) tritonserver and every Python stub (the launcher's environment reaches them: ``MOBILESAMV2_ALLOCATOR``
selects the variant, see ``TritonServer.environment()``) on the 50-box SegEvery request of bus.jpg (cold
embeddings: ``embedding_cache_mb`` 0), and (b) the in-process PyTorch reference on the same request, in a
child process started with the variant's environment (glibc reads ``MALLOC_*``, the loader ``LD_PRELOAD``, at
process start only). Reported: median milliseconds, CPU seconds in the kernel (system time: page faults and
the zeroing of fresh pages), minor page faults, and peak RSS (server: tritonserver + stubs, sampled every
20 ms; reference: the child's ``ru_maxrss``). Variants run in turn (server: A B C D, then D C B A), medians.
Raw numbers: ``benchmarks/results/allocator.json``; the table goes into BENCHMARKS.md between its markers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a file
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import e2e  # noqa: E402
from benchmarks.sections import publish, write_section  # noqa: E402

START, END = "<!-- allocator:start -->", "<!-- allocator:end -->"
ALLOCATOR_VAR = "MOBILESAMV2_ALLOCATOR"
VARIANTS = ("glibc", "default", "glibc-tuned", "glibc-mmap-threshold", "jemalloc", "tcmalloc")
# Not a launcher choice: the launcher's glibc-tuned without MALLOC_MMAP_MAX_=0 (blocks above glibc's 32 MiB
# threshold cap are still mmap'd and unmapped per allocation).
EXPERIMENTS = {
    # the launcher's default: nothing process-wide, the ONNX Runtime stubs tune their own heap (mallopt)
    "default": {},
    "glibc-mmap-threshold": {
        ALLOCATOR_VAR: "glibc",
        "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
        "MALLOC_TRIM_THRESHOLD_": str(1 << 30),
        "MALLOC_TOP_PAD_": str(256 << 20),
    },
}
RESULTS = REPO_ROOT / "benchmarks" / "results" / "allocator.json"
DEFAULT_REPOSITORY = REPO_ROOT / "work" / "test-cache" / "model_repository"


def overrides(variant: str) -> dict[str, str]:
    """What the benchmark passes to the launcher (``TritonServer(env=...)``) for ``variant``."""
    return EXPERIMENTS.get(variant, {ALLOCATOR_VAR: variant})


def variant_env(repository: Path, variant: str) -> dict[str, str]:
    """This process's environment without allocator variables, plus the launcher's for ``variant``."""
    env = {k: v for k, v in os.environ.items() if k not in e2e.ALLOCATOR_KEYS}
    env.update(overrides(variant))
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        extra = e2e.server_allocator_env(repository, overrides(variant))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return {**env, **extra}


# --- (b) the reference, in a child with the variant's environment -------------------------------------------


def _child_reference(weights: Path, image: Path, conf: float, reps: int, heap: bool = False) -> dict:
    from mobilesamv2.inside_triton.glue import keep_large_blocks_in_heap
    from mobilesamv2.reference import ReferencePipeline

    heap_tuned = (
        heap and keep_large_blocks_in_heap()
    )  # "default": what benchmarks/run.py does for its reference

    pipe = ReferencePipeline.from_checkpoints(weights, encoder="efficientvit_l2")
    data = image.read_bytes()
    e2e.reference_request(pipe, data, conf)  # warm-up
    records = []
    for _ in range(reps):
        before = resource.getrusage(resource.RUSAGE_SELF)
        wall, stages, masks = e2e.reference_request(pipe, data, conf)
        after = resource.getrusage(resource.RUSAGE_SELF)
        records.append(
            {
                "ms": wall,
                "stages": stages,
                "masks": masks,
                "user_s": after.ru_utime - before.ru_utime,
                "system_s": after.ru_stime - before.ru_stime,
                "minflt": after.ru_minflt - before.ru_minflt,
                "majflt": after.ru_majflt - before.ru_majflt,
            }
        )
    return {
        "records": records,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "ld_preload": os.environ.get("LD_PRELOAD", ""),
        "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
        "heap_tuned": heap_tuned,
    }


def reference_run(repository: Path, variant: str, weights: Path, image: Path, conf: float, reps: int) -> dict:
    command = [
        sys.executable, "-m", "benchmarks.allocator", "--child-reference",
        str(weights), str(image), str(conf), str(reps), "heap" if variant == "default" else "",
    ]  # fmt: skip
    result = subprocess.run(
        command,
        cwd=REPO_ROOT,
        env=variant_env(repository, variant),
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"reference child ({variant}) failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# --- (a) the server -----------------------------------------------------------------------------------------


def server_run(repository: Path, variant: str, data: bytes, conf: float, reps: int, log_dir: Path) -> dict:
    from mobilesamv2.runner.local import TritonServer
    from segment_everything_client import SegmentEverythingClient

    records = []
    with (
        TritonServer(
            repository,
            env=overrides(variant),
            log_path=log_dir / f"tritonserver-{variant}.log",
            startup_timeout=300,
        ) as server,
        SegmentEverythingClient(server.grpc_url, timeout=600, retries=0) as client,
    ):
        environ = Path(f"/proc/{server.pid}/environ").read_bytes().split(b"\0")
        applied = sorted(
            item.decode() for item in environ if item.split(b"=")[0].decode() in e2e.ALLOCATOR_KEYS
        )
        idle = e2e.tree_counters(server.pid)["rss_mb"]
        e2e.server_request(client, data, conf)  # warm-up
        for _ in range(reps):
            before = e2e.tree_counters(server.pid)
            with e2e.PeakRss(server.pid, interval=0.02) as peak:
                wall, stages, masks = e2e.server_request(client, data, conf)
            delta = e2e.counter_delta(e2e.tree_counters(server.pid), before)
            records.append(
                {"ms": wall, "stages": stages, "masks": masks, **delta, "peak_rss_mb": peak.peak / 2**20}
            )
    return {"records": records, "idle_rss_mb": idle, "applied": applied}


# --- report -------------------------------------------------------------------------------------------------


def summarize(results: dict) -> list[dict]:
    rows = []
    for variant in results["variants"]:
        server = [r for run in results["server"].get(variant, []) for r in run["records"]]
        reference = [r for run in results["reference"].get(variant, []) for r in run["records"]]
        ref_peaks = [run["peak_rss_mb"] for run in results["reference"].get(variant, [])]
        rows.append(
            {
                "variant": variant,
                "server_ms": e2e.median([r["ms"] for r in server]),
                "server_decoder_ms": e2e.median([r["stages"].get("decoder") for r in server]),
                "server_system_s": e2e.median([r["system_s"] for r in server]),
                "server_minflt": e2e.median([r["minflt"] for r in server]),
                "server_peak_mb": max((r["peak_rss_mb"] for r in server), default=float("nan")),
                "server_masks": server[-1]["masks"] if server else None,
                "server_n": len(server),
                "reference_ms": e2e.median([r["ms"] for r in reference]),
                "reference_decoder_ms": e2e.median([r["stages"].get("decoder") for r in reference]),
                "reference_system_s": e2e.median([r["system_s"] for r in reference]),
                "reference_minflt": e2e.median([r["minflt"] for r in reference]),
                "reference_peak_mb": max(ref_peaks, default=float("nan")),
                "reference_n": len(reference),
            }
        )
    return rows


def _f(value: float | None, digits: int = 0) -> str:
    if value is None or math.isnan(value):
        return "–"
    return f"{value:,.{digits}f}"


def render(results: dict) -> str:
    rows = summarize(results)
    base = rows[0]
    lines = [
        "## Allocator (`python -m benchmarks.allocator`)",
        "",
        f"Measured {results['finished']} on {results['machine']}. The 50-box SegEvery request (bus.jpg, conf "
        f"{results['conf']}, {base['server_masks']} masks, cold embeddings) through Triton, and the same "
        "request through the in-process PyTorch reference in a child process started with the same "
        "environment. Server columns: tritonserver + every stub (the launcher's `environment()` passes the "
        "variant to all of them); system CPU and page faults summed over the process tree per request; peak "
        "RSS sampled every 20 ms. Reference columns: the child's `getrusage` per request, peak = `ru_maxrss` "
        f"(model loading included). Medians of {base['server_n']} server and {base['reference_n']} reference "
        "requests per variant.",
        "",
        "| allocator | Triton ms | Triton decoder ms | Triton system CPU s | Triton minor faults | "
        "Triton peak RSS MB | reference ms | reference decoder ms | reference system CPU s | "
        "reference minor faults | reference peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['variant']} | {_f(r['server_ms'])} | {_f(r['server_decoder_ms'])} | "
        f"{_f(r['server_system_s'], 2)} | {_f(r['server_minflt'])} | {_f(r['server_peak_mb'])} | "
        f"{_f(r['reference_ms'])} | {_f(r['reference_decoder_ms'])} | "
        f"{_f(r['reference_system_s'], 2)} | {_f(r['reference_minflt'])} | {_f(r['reference_peak_mb'])} |"
        for r in rows
    ]
    lines += ["", "Variants (what the launcher sets; `MOBILESAMV2_ALLOCATOR` picks one):", ""]
    for variant, applied in results.get("applied", {}).items():
        if variant == "default":
            lines.append(
                "- `default` (`MOBILESAMV2_ALLOCATOR` unset): nothing process-wide; the image_encoder, "
                "prompt_decoder and interactive_decoder stubs call glibc's `mallopt` at load (config "
                "parameter "
                "`malloc_keep_large_blocks`: mmap threshold 32 MiB, no mmap, trim threshold 1 GiB, top pad "
                "256 MiB); the reference child calls the same (as `benchmarks/run.py` does for its reference)"
            )
            continue
        lines.append(f"- `{variant}`: {', '.join(f'`{a}`' for a in applied) or 'nothing (glibc defaults)'}")
    if results.get("decision"):
        lines += ["", results["decision"]]
    lines += ["", f"Reproduce: `{results['command']}`."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--child-reference":
        weights, image, conf, reps = Path(argv[1]), Path(argv[2]), float(argv[3]), int(argv[4])
        heap = len(argv) > 5 and argv[5] == "heap"
        print(json.dumps(_child_reference(weights, image, conf, reps, heap)))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    parser.add_argument(
        "--weights", type=Path, default=None, help="default: those the repository was built from"
    )
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument(
        "--conf", type=float, default=0.85, help="bus.jpg at 0.85: about 50 boxes (random weights)"
    )
    parser.add_argument("--server-reps", type=int, default=2, help="timed server requests per start")
    parser.add_argument("--passes", type=int, default=2, help="server starts per variant (A B C D, D C B A)")
    parser.add_argument("--reference-reps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "BENCHMARKS.md")
    parser.add_argument("--json", type=Path, default=RESULTS)
    parser.add_argument("--render", action="store_true", help="only re-render from --json")
    parser.add_argument("--decision", default=None, help="a paragraph to put under the table")
    args = parser.parse_args(argv)
    if args.render:
        results = json.loads(args.json.read_text())
        if args.decision:
            results["decision"] = args.decision
            args.json.write_text(json.dumps(results, indent=1) + "\n")
        write_section(args.out, START, END, render(results))
        print(render(results))
        return 0

    os.environ.setdefault("YOLO_OFFLINE", "1")
    from benchmarks.environment import cpu_model
    from mobilesamv2.assets import sample_images

    started = time.time()

    def log(message: str) -> None:
        print(f"[{(time.time() - started) / 60:5.1f} min] {message}", flush=True)

    repository = args.repository.resolve()
    build_info = json.loads((repository / "BUILD_INFO.json").read_text())
    weights = (args.weights or Path(build_info["weights_dir"])).resolve()
    run_dir = REPO_ROOT / "work" / "benchmarks" / "allocator"
    cold = e2e.repository_variant(
        repository, run_dir / "repository-cold", {"segment_everything": {"embedding_cache_mb": "0"}}
    )
    image = next(p for p in sample_images() if p.name == "bus.jpg")
    data = image.read_bytes()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    results: dict = {
        "command": shlex.join(
            ["flock", "/tmp/heavy.lock", ".venv/bin/python", "-m", "benchmarks.allocator", *argv]
        ),
        "machine": f"{cpu_model()}, {len(os.sched_getaffinity(0))} cores",
        "conf": args.conf,
        "variants": variants,
        "server": {},
        "reference": {},
        "applied": {},
    }
    for p in range(args.passes):
        for variant in variants if p % 2 == 0 else list(reversed(variants)):
            log(f"server, {variant} (pass {p + 1})")
            run = server_run(cold, variant, data, args.conf, args.server_reps, run_dir)
            results["server"].setdefault(variant, []).append(run)
            results["applied"][variant] = run["applied"]
            log(
                "  "
                + ", ".join(
                    f"{r['ms']:,.0f} ms sys {r['system_s']:.2f} s {r['minflt']:,} faults"
                    for r in run["records"]
                )
            )
    for variant in variants:
        log(f"reference, {variant}")
        run = reference_run(repository, variant, weights, image, args.conf, args.reference_reps)
        results["reference"].setdefault(variant, []).append(run)
        log(
            "  "
            + ", ".join(
                f"{r['ms']:,.0f} ms sys {r['system_s']:.2f} s {r['minflt']:,} faults" for r in run["records"]
            )
        )
    publish(results, args.json, args.out, START, END, render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
