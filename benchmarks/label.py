"""Label throughput: ``segment-everything label`` on a folder of images against the server's capacity,
measured side by side on one server.

    flock /tmp/heavy.lock .venv/bin/python -m benchmarks.label            # ~5 min on 2 cores
    .venv/bin/python -m benchmarks.label --render                          # re-render, no measuring

Each round: (1) capacity: a closed loop of ``--workers`` client threads, each sending its next image when the
previous one returns, over a folder of ``--images`` JPEGs; (2) the label run: the CLI's ``label`` (in this
process, ``--concurrency`` = ``--workers``) over another folder of as many JPEGs, from its start to the
dataset file written. Both folders hold bus.jpg and zidane.jpg alternating, each with its corner pixels set
from its number (every request has a cold embedding), and both send the same settings: SegEvery,
``--max-prompts``, RLE, stability scores (the label run asks for them), SAM's filters off.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks import common
from benchmarks.common import fmt, percentile, table

NAME = "label"
GOAL = 0.9
"""The label run's throughput as a fraction of the server's capacity (issue: at least 90%)."""


def write_images(folder: Path, count: int, salt: int) -> list[Path]:
    """``count`` JPEGs: bus.jpg / zidane.jpg alternating, the 4x4 corner of the i-th set from ``salt + i``."""
    import cv2
    import numpy as np

    from mobilesamv2.assets import sample_images

    sources = [cv2.imread(str(p)) for p in sorted(sample_images())]
    folder.mkdir(parents=True)
    paths = []
    for i in range(count):
        image = sources[i % len(sources)].copy()
        n = salt + i
        image[:4, :4] = np.array([n & 255, (n >> 8) & 255, (n >> 16) & 255], np.uint8)
        path = folder / f"{i:03d}.jpg"
        if not cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 92]):
            raise OSError(f"cannot write {path}")
        paths.append(path)
    return paths


def capacity(client, paths: list[Path], workers: int, max_prompts: int) -> dict:
    """Closed loop over ``paths``: images per second from the first request to the last answer."""
    lock = threading.Lock()
    pending = list(reversed(paths))
    latencies: list[float] = []
    errors: list[str] = []

    def worker() -> None:
        while True:
            with lock:
                if not pending:
                    return
                path = pending.pop()
            t0 = time.perf_counter()
            try:
                client.segment_everything(path, max_prompts=max_prompts, stability_scores=True)
            except Exception as exc:  # counted, not fatal: the rate counts answered images only
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            with lock:
                latencies.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    return {
        "images": len(latencies),
        "errors": errors,
        "seconds": seconds,
        "images_per_s": len(latencies) / seconds,
        "latency_p50_s": percentile(latencies, 50),
    }


def label_run(server, folder: Path, out: Path, workers: int, max_prompts: int) -> dict:
    """The CLI's ``label`` on ``folder``: wall time from its start to the dataset file written."""
    import json

    from segment_everything_client.cli import main as cli

    args = ["label", str(folder), "--out", str(out), "--url", server.grpc_url, "--quiet"]
    args += ["--max-prompts", str(max_prompts), "--concurrency", str(workers)]
    started = time.perf_counter()
    code = cli(args)
    seconds = time.perf_counter() - started
    dataset = json.loads(out.read_text())
    images = len(dataset["images"])
    return {
        "exit_code": code,
        "images": images,
        "failed": len(dataset["failures"]),
        "masks": len(dataset["annotations"]),
        "seconds": seconds,
        "images_per_s": images / seconds,
    }


def render(results: dict) -> str:
    s = results["settings"]
    rows = []
    for i, r in enumerate(results["rounds"], start=1):
        cap, lab = r["capacity"], r["label"]
        ratio = lab["images_per_s"] / cap["images_per_s"]
        rows.append(
            [
                i,
                f"{fmt(cap['images_per_s'], 3)} ({cap['images']} in {fmt(cap['seconds'], 1)} s)",
                f"{fmt(lab['images_per_s'], 3)} ({lab['images']} in {fmt(lab['seconds'], 1)} s)",
                lab["masks"],
                f"{fmt(100 * ratio, 1)}%",
                common.verdict(ratio >= GOAL),
            ]
        )
    header = ["round", "capacity, images/s", "label run, images/s", "masks", "label / capacity", "≥ 90%"]
    return "\n\n".join(
        [
            common.provenance(results),
            f"{s['images']} images per folder (bus.jpg / zidane.jpg alternating, cold embeddings), "
            f"max_prompts {s['max_prompts']}, stability scores returned, {s['workers']} requests in flight "
            "(capacity: closed loop of client threads; label: `--concurrency`), gRPC.",
            table(header, rows),
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = common.argument_parser(NAME, __doc__)
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--max-prompts", type=int, default=16)
    parser.add_argument("--workers", type=int, default=4, help="the pipeline's 2 instances busy + 2 waiting")
    parser.add_argument("--rounds", type=int, default=2, help="capacity, then label, this many times")
    args = parser.parse_args(argv)
    if args.render:
        return common.rerender(NAME, render)

    from mobilesamv2.runner.local import TritonServer
    from segment_everything_client import SegmentEverythingClient

    results = common.results_for(args)
    results["rounds"] = []
    work = Path(tempfile.mkdtemp(prefix="label-benchmark-"))
    salt = int(time.time()) % 100_000 * 1000  # no image of an earlier run is in the embedding cache
    try:
        log = common.REPO_ROOT / "work" / "benchmarks" / NAME / "tritonserver.log"
        with (
            TritonServer(args.repository, log_path=log, startup_timeout=300) as server,
            SegmentEverythingClient(server.grpc_url, timeout=120) as client,
        ):
            for path in write_images(work / "warm-up", 2, salt):
                client.segment_everything(path, max_prompts=args.max_prompts, stability_scores=True)
            for r in range(args.rounds):
                base = salt + (2 * r + 1) * args.images
                folders = [work / f"round{r}-capacity", work / f"round{r}-label"]
                capacity_paths = write_images(folders[0], args.images, base)
                write_images(folders[1], args.images, base + args.images)
                print(f"round {r + 1}: capacity, closed loop of {args.workers}", flush=True)
                cap = capacity(client, capacity_paths, args.workers, args.max_prompts)
                print(f"  {cap['images_per_s']:.3f} images/s; label run", flush=True)
                lab = label_run(server, folders[1], work / f"round{r}.json", args.workers, args.max_prompts)
                print(f"  {lab['images_per_s']:.3f} images/s", flush=True)
                results["rounds"].append({"capacity": cap, "label": lab})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    common.publish(NAME, results, render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
