"""End to end: one SegEvery request through Triton vs the in-process reference, at about 10, 50 and 300 boxes.

    flock /tmp/heavy.lock .venv/bin/python -m benchmarks.run --sections e2e      # inside the full report
    # the same measurement against another checkout (e.g. the old main in a git worktree), run as a file with
    # that checkout's packages first on the path; writes JSON only:
    cd work/baseline && flock /tmp/heavy.lock ../baseline-venv/bin/python ../../benchmarks/e2e.py \\
        --repository ../baseline-repo --weights ../test-cache/weights --out ../benchmarks/baseline/e2e.json

Triton: the client sends the encoded JPEG over gRPC and gets COCO RLE back (client wall time, the server's
``timings`` per stage). Reference: ``ReferencePipeline`` (the original MobileSAMv2 formulation in PyTorch) in
this process on the same bytes: decode, discovery, encoder, decoder, RLE. Sides alternate A B / B A within one
run; medians. The box count is set per point by the detector's confidence threshold (random weights: the
detector's scores are noise, so lowering ``conf`` admits more boxes).

Cold embeddings: the server is started on a copy of the repository whose ``segment_everything`` has
``embedding_cache_mb`` 0 (a repeated image would skip the encoder otherwise) and without Triton's response
cache (``cache_mb=0``, what older builds cached the encoder with).

This file imports only the standard library, numpy, OpenCV and psutil at module level, and the project's
``mobilesamv2`` and ``segment_everything_client`` inside functions, so that it runs against another checkout's
packages unchanged (the before/after comparison).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import psutil

Log = Callable[[str], None]
REPO_ROOT = Path(__file__).resolve().parents[1]

# conf threshold per target box count on bus.jpg with the seeded random weights (work/test-cache/weights):
# calibrated with the reference's detector (see BENCHMARKS.md); the actual counts are reported.
DEFAULT_POINTS: tuple[tuple[str, float], ...] = (("bus.jpg", 0.955), ("bus.jpg", 0.85), ("bus.jpg", 0.4))
SERVER_STAGES = ("decode_image", "discovery", "nms", "encoder", "decoder", "postprocess", "total")
REFERENCE_STAGES = ("decode_image", "discovery", "encoder", "decoder", "postprocess", "total")
ALLOCATOR_KEYS = (
    "LD_PRELOAD",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_MMAP_MAX_",
    "MALLOC_ARENA_MAX",
    "MALLOC_CONF",
)


def median(values: Sequence[float]) -> float:
    values = [v for v in values if v is not None]
    return float(statistics.median(values)) if values else float("nan")


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1e3


# --- the server's allocator for this process too ------------------------------------------------------------


def server_allocator_env(repository: Path | str, overrides: dict[str, str] | None = None) -> dict[str, str]:
    """The allocator variables (``LD_PRELOAD``, ``MALLOC_*``) the launcher gives tritonserver and its stubs
    (``TritonServer.environment()``), so that an in-process reference can run under the same allocator."""
    from mobilesamv2.runner.local import TritonServer

    env = TritonServer(repository, env=overrides or {}).environment()
    return {k: env[k] for k in ALLOCATOR_KEYS if k in env}


def load_reference(weights: Path | str, encoder: str = "efficientvit_l2"):
    """``ReferencePipeline.from_checkpoints``, leaving ``OMP_NUM_THREADS`` as it was: ultralytics (the
    detector's package) sets it to 1 in ``os.environ`` when imported, and every process started afterwards
    inherits that, among them a server started by the launcher, whose ONNX Runtime sessions then take one
    thread each (their default is ``$OMP_NUM_THREADS``). PyTorch here keeps the thread count it had chosen."""
    from mobilesamv2.reference import ReferencePipeline

    before = os.environ.get("OMP_NUM_THREADS")
    pipe = ReferencePipeline.from_checkpoints(weights, encoder=encoder)
    if before is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = before
    return pipe


# --- process-tree statistics --------------------------------------------------------------------------------


def label(proc: psutil.Process) -> str:
    """``tritonserver``, or the model a backend stub serves (its instance name, e.g. ``prompt_decoder_0_0``,
    is on its command line)."""
    try:
        cmdline = proc.cmdline()
    except psutil.Error:
        return "?"
    if cmdline and cmdline[0].endswith("triton_python_backend_stub"):
        instance = next((a for a in cmdline[1:] if re.fullmatch(r"[A-Za-z0-9_.-]+_\d+_\d+", a)), "")
        return re.sub(r"_\d+_\d+$", "", instance) or "stub"
    return proc.name()


def tree(root_pid: int) -> list[psutil.Process]:
    root = psutil.Process(root_pid)
    return [root, *root.children(recursive=True)]


def faults(pid: int) -> tuple[int, int]:
    """(minor, major) page faults of ``pid`` so far (``/proc/<pid>/stat``)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0, 0
    return int(fields[7]), int(fields[9])  # minflt, majflt (fields 10 and 12, counted from the state field)


def tree_counters(root_pid: int) -> dict[str, float]:
    """CPU seconds (user, system) and page faults summed over the server's process tree."""
    out = {"user_s": 0.0, "system_s": 0.0, "minflt": 0, "majflt": 0, "rss_mb": 0.0}
    for proc in tree(root_pid):
        try:
            times = proc.cpu_times()
            rss = proc.memory_info().rss
        except psutil.Error:
            continue
        minflt, majflt = faults(proc.pid)
        out["user_s"] += times.user
        out["system_s"] += times.system
        out["minflt"] += minflt
        out["majflt"] += majflt
        out["rss_mb"] += rss / 2**20
    return out


def counter_delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in ("user_s", "system_s", "minflt", "majflt")}


class PeakRss:
    """Samples the summed RSS of a process tree every ``interval`` s while active: ``peak`` (bytes, of the
    sum) and the peak of each label's sum (a model's instances together)."""

    def __init__(self, root_pid: int, interval: float = 0.01) -> None:
        self.processes = tree(root_pid)
        self.labels = {p.pid: label(p) for p in self.processes}
        self.interval = interval
        self.peak = 0
        self.by_label: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def current(self) -> int:
        sums: dict[str, int] = {}
        for proc in self.processes:
            try:
                rss = proc.memory_info().rss
            except psutil.Error:
                continue
            name = self.labels[proc.pid]
            sums[name] = sums.get(name, 0) + rss
        for name, rss in sums.items():
            self.by_label[name] = max(self.by_label.get(name, 0), rss)
        return sum(sums.values())

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRss:
        self.peak, self.by_label = self.current(), {}
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.current())


# --- repository copies --------------------------------------------------------------------------------------


def repository_variant(source: Path, target: Path, parameters: dict[str, dict[str, str]]) -> Path:
    """A hard-linked copy of the model repository ``source`` at ``target`` with config parameters replaced:
    ``{"segment_everything": {"embedding_cache_mb": "0"}}``. Files are linked (no copy of the ONNX files);
    each changed config is written anew. Rebuilt every call."""
    source, target = Path(source).resolve(), Path(target).resolve()
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, copy_function=os.link, ignore=shutil.ignore_patterns("__pycache__"))
    for model, values in parameters.items():
        config = target / model / "config.pbtxt"
        text = config.read_text()
        for key, value in values.items():
            pattern = re.compile(
                r'(\{\s*key:\s*"' + re.escape(key) + r'",\s*value:\s*\{\s*string_value:\s*")[^"]*(")'
            )
            if not pattern.search(text):
                raise KeyError(f"{config}: no parameter {key!r} to set")
            text = pattern.sub(lambda m, v=value: m.group(1) + v + m.group(2), text)
        config.unlink()  # a hard link: never write through it into the source repository
        config.write_text(text)
    return target


def served_parameters(repository: Path, model: str) -> dict[str, str]:
    """A model's config parameters (``key -> string_value``), read from its config.pbtxt."""
    text = (Path(repository) / model / "config.pbtxt").read_text()
    pairs = re.findall(r'key:\s*"([^"]+)",\s*value:\s*\{\s*string_value:\s*"([^"]*)"', text)
    return dict(pairs)


# --- one request each side ----------------------------------------------------------------------------------


def reference_request(pipe, data: bytes, conf: float) -> tuple[float, dict[str, float], int]:
    """The in-process pipeline on encoded bytes, timed like the server: decode, SegEvery, RLE."""
    start = time.perf_counter()
    rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    decoded = time.perf_counter()
    result = pipe(rgb, conf_threshold=conf)
    segmented = time.perf_counter()
    result.rles()
    wall = _ms(start)
    stages = {
        "decode_image": (decoded - start) * 1e3,
        **result.timings_ms,
        "postprocess": _ms(segmented),
        "total": wall,
    }
    return wall, stages, len(result)


def server_request(client, data: bytes, conf: float) -> tuple[float, dict[str, float], int]:
    """One SegEvery request through Triton (default max_prompts, 300): client wall time and server stages."""
    start = time.perf_counter()
    segmentation = client.segment_everything(data, conf=conf, timings=True)
    wall = _ms(start)
    return wall, dict(segmentation.timings or {}), len(segmentation)


# --- the section --------------------------------------------------------------------------------------------


def ab_points(
    pipe,
    client,
    server_pid: int,
    images: dict[str, bytes],
    points: Sequence[tuple[str, float]],
    reps: int,
    log: Log = print,
    rss_at_most_boxes: bool = True,
) -> list[dict]:
    """For each (image, conf): one untimed warm-up per side, then ``reps`` alternating repetitions. The
    server's process-tree RSS is sampled during the server requests of the point with the most boxes."""
    rows = []
    for index, (name, conf) in enumerate(points):
        data = images[name]
        track = rss_at_most_boxes and index == len(points) - 1
        server_request(client, data, conf)  # warm-up: arenas grown to this prompt count, caches primed
        reference_request(pipe, data, conf)
        row: dict = {
            "image": name,
            "conf": conf,
            "server_wall_ms": [],
            "server_stages": [],
            "server_masks": None,
            "server_counters": [],
            "reference_wall_ms": [],
            "reference_stages": [],
            "reference_masks": None,
            "peak_rss_mb": None,
            "peak_rss_by_process_mb": None,
        }
        for rep in range(reps):
            for side in ("server", "reference") if rep % 2 == 0 else ("reference", "server"):
                if side == "server":
                    before = tree_counters(server_pid)
                    if track:
                        with PeakRss(server_pid, interval=0.02) as peak:
                            wall, stages, masks = server_request(client, data, conf)
                        row["peak_rss_mb"] = max(row["peak_rss_mb"] or 0.0, peak.peak / 2**20)
                        by = {k: v / 2**20 for k, v in peak.by_label.items()}
                        old = row["peak_rss_by_process_mb"] or {}
                        row["peak_rss_by_process_mb"] = {k: max(v, old.get(k, 0.0)) for k, v in by.items()}
                    else:
                        wall, stages, masks = server_request(client, data, conf)
                    row["server_counters"].append(counter_delta(tree_counters(server_pid), before))
                else:
                    wall, stages, masks = reference_request(pipe, data, conf)
                row[f"{side}_wall_ms"].append(wall)
                row[f"{side}_stages"].append(stages)
                row[f"{side}_masks"] = masks
                log(f"  e2e {name} conf {conf}: {side} {wall:,.0f} ms, {masks} masks")
        rows.append(row)
    return rows


def encoder_standalone(repository: Path, image: Path, reps: int = 5) -> dict:
    """The served encoder graph in a fresh ONNX Runtime session with the served config's options (this
    project's ``glue.ort_settings``), batch 1, in a child process (same environment, allocator included)."""
    command = [
        sys.executable,
        "-m",
        "benchmarks.e2e",
        "--child-encoder",
        str(repository),
        str(image),
        str(reps),
    ]
    out = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def served_session(path: Path, repository: Path, model: str, profile_prefix: str | None = None):
    """``(session, intra-op threads)``: the ONNX file ``path`` in a CPU ONNX Runtime session with the options
    ``model``'s config in ``repository`` gives it when served (``glue.ort_settings``); ONNX Runtime's
    profiler on when ``profile_prefix`` is given."""
    import onnxruntime as ort

    from mobilesamv2.inside_triton import glue

    settings = glue.ort_settings(glue.Parameters(served_parameters(repository, model)))
    options = glue.ort_session_options(settings)
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    session = ort.InferenceSession(
        str(path),
        sess_options=options,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=settings["disabled_optimizers"] or None,
    )
    return session, settings["intra_op_thread_count"]


def _child_encoder(repository: Path, image: Path, reps: int) -> dict:
    from mobilesamv2.processing.image import encoder_canvas

    session, threads = served_session(
        repository / "image_encoder" / "1" / "model.onnx", repository, "image_encoder"
    )
    rgb = cv2.cvtColor(cv2.imread(str(image)), cv2.COLOR_BGR2RGB)
    canvas, size = encoder_canvas(rgb)
    feeds = {"image": canvas[None], "image_size": size[None]}
    session.run(None, feeds)  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(_ms(start))
    return {"ms": times, "median_ms": median(times), "threads": threads}


def decoder_standalone(repository: Path, weights: Path, prompts: int, repeats: int = 3) -> dict:
    """``benchmarks/decoder_efficiency.py``'s "ours" row at ``prompts`` prompts (the served factorized graph
    in     slices of the config's ``max_rows_per_run``, its own subprocess)."""
    from benchmarks import decoder_efficiency
    from mobilesamv2.inside_triton.glue import available_cpus

    slice_rows = int(served_parameters(repository, "prompt_decoder").get("max_rows_per_run") or 16)
    args = argparse.Namespace(
        weights=weights, repository=repository, threads=available_cpus(), slice=slice_rows, repeats=repeats
    )
    result = decoder_efficiency.measure("ours", prompts, args)
    result.update(prompts=prompts, slice_rows=slice_rows, threads=args.threads)
    if "median_s" in result:
        result["ms_per_prompt"] = result["median_s"] * 1e3 / prompts
    return result


def e2e_section(
    pipe,
    client,
    server_pid: int,
    images: dict[str, bytes],
    repository: Path,
    weights: Path,
    reps: int,
    points: Sequence[tuple[str, float]] = DEFAULT_POINTS,
    standalone: bool = True,
    log: Log = print,
) -> dict:
    rows = ab_points(pipe, client, server_pid, images, points, reps, log)
    out: dict = {
        "points": [list(p) for p in points],
        "rows": rows,
        "cold": "embedding_cache_mb 0, cache_mb 0",
    }
    if standalone:
        from mobilesamv2.assets import sample_images

        image = next(p for p in sample_images() if p.name == points[0][0])
        log("  encoder standalone (ONNX Runtime, served options, fresh process)")
        try:
            out["encoder_standalone"] = encoder_standalone(repository, image)
        except (subprocess.CalledProcessError, ValueError, OSError) as exc:
            log(f"  encoder standalone failed: {exc}")
            out["encoder_standalone"] = {"error": str(exc)}
        fifty = min(rows, key=lambda r: abs((r["server_masks"] or 0) - 50))
        log(f"  decoder standalone at {fifty['server_masks']} prompts (benchmarks/decoder_efficiency.py)")
        try:
            out["decoder_standalone"] = decoder_standalone(
                repository, weights, int(fifty["server_masks"] or 50)
            )
        except (ValueError, OSError, KeyError) as exc:
            log(f"  decoder standalone failed: {exc}")
            out["decoder_standalone"] = {"error": str(exc)}
    return out


# --- as a file: the same measurement against any checkout ---------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--child-encoder":
        print(json.dumps(_child_encoder(Path(argv[1]), Path(argv[2]), int(argv[3]))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, required=True, help="built model repository")
    parser.add_argument("--weights", type=Path, required=True, help="the checkpoints it was built from")
    parser.add_argument("--out", type=Path, required=True, help="results JSON")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--points", default=",".join(f"{n}:{c}" for n, c in DEFAULT_POINTS), help="image:conf,..."
    )
    parser.add_argument("--label", default="", help="what this checkout is, for the report")
    args = parser.parse_args(argv)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "False")

    from mobilesamv2 import __file__ as package_file
    from mobilesamv2.assets import sample_images
    from mobilesamv2.runner.local import TritonServer
    from segment_everything_client import SegmentEverythingClient

    started = time.time()

    def log(message: str) -> None:
        print(f"[{(time.time() - started) / 60:5.1f} min] {message}", flush=True)

    checkout = Path(package_file).resolve().parents[1]
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=checkout, capture_output=True, text=True, check=False
    ).stdout.strip()
    points = [(p.split(":")[0], float(p.split(":")[1])) for p in args.points.split(",")]
    images = {p.name: p.read_bytes() for p in sample_images()}
    repository = args.repository.resolve()
    parameters = served_parameters(repository, "segment_everything")
    variant = repository
    if "embedding_cache_mb" in parameters:  # newer builds: cold embeddings need the cache off
        variant = repository_variant(
            repository,
            args.out.resolve().parent / "repository-cold",
            {"segment_everything": {"embedding_cache_mb": "0"}},
        )
    log(f"checkout {checkout} ({commit}), repository {variant}")
    pipe = load_reference(args.weights)
    # Triton's response cache: off where the launcher has one (older launchers start none)
    no_cache = {"cache_mb": 0} if "cache_mb" in inspect.signature(TritonServer).parameters else {}
    with (
        TritonServer(
            variant, log_path=args.out.resolve().parent / "tritonserver.log", startup_timeout=300, **no_cache
        ) as server,
        SegmentEverythingClient(server.grpc_url, timeout=1800, retries=0) as client,
    ):
        rows = ab_points(pipe, client, server.pid, images, points, args.reps, log)
    results = {
        "label": args.label,
        "checkout": str(checkout),
        "commit": commit,
        "command": " ".join([os.path.relpath(sys.executable), *sys.argv]),
        "started": time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(started)),
        "allocator_env": {k: os.environ[k] for k in ALLOCATOR_KEYS if k in os.environ},
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "points": [list(p) for p in points],
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
