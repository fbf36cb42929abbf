"""Interactive SegAny: per-click latency of a labelling session (client/examples/labelling_session.py).

    flock /tmp/heavy.lock .venv/bin/python -m benchmarks.interactive        # ~2 min

Each session: 10 clicks on one object of one image (``labelling_session.session``): the first click asks for
SAM's three candidate masks (multimask) and computes the image embedding; every later click adds a point and
sends the previous low-res logits back (``mask_input``), answered from the server's embedding cache (one
interactive decoder call). ``--sessions`` sessions per image, each on a copy of the image with one corner
pixel changed so that its first click is a cache miss. The image travels as raw RGB pixels (the client's
choice for an array). Cache memory per image: the size of the ``.npy`` entry the first click wrote under
``/dev/shm/mobilesamv2-embeddings/``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a file
    sys.path.insert(0, str(REPO_ROOT))
for extra in (REPO_ROOT / "client" / "examples",):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from benchmarks import e2e  # noqa: E402
from benchmarks.sections import publish, rerender  # noqa: E402

START, END = "<!-- interactive:start -->", "<!-- interactive:end -->"
RESULTS = REPO_ROOT / "benchmarks" / "results" / "interactive.json"
DEFAULT_REPOSITORY = REPO_ROOT / "work" / "test-cache" / "model_repository"
CACHE_ROOTS = (Path("/dev/shm/mobilesamv2-embeddings"), Path("/tmp/mobilesamv2-embeddings"))
TARGET_MS = 100.0


def cache_files() -> dict[Path, int]:
    files = {}
    for root in CACHE_ROOTS:
        if root.is_dir():
            for path in root.glob("*/*.npy"):
                try:
                    files[path] = path.stat().st_size
                except OSError:
                    continue
    return files


def summarize(results: dict) -> list[dict]:
    rows = []
    for name, sessions in results["images"].items():
        first = [s["clicks"][0]["ms"] for s in sessions]
        later = [c["ms"] for s in sessions for c in s["clicks"][1:]]
        entries = [s["cache_entry_bytes"] for s in sessions if s["cache_entry_bytes"]]
        rows.append(
            {
                "image": name,
                "size": sessions[0]["size"],
                "sessions": len(sessions),
                "first_ms": statistics.median(first),
                "first_max_ms": max(first),
                "later_p50_ms": statistics.median(later),
                "later_max_ms": max(later),
                "later_n": len(later),
                "cache_entry_mib": (statistics.median(entries) / 2**20) if entries else float("nan"),
            }
        )
    return rows


def render(results: dict) -> str:
    lines = [
        "## Interactive SegAny (`python -m benchmarks.interactive`)",
        "",
        f"Measured {results['finished']} on {results['machine']}; the launcher's defaults (allocator "
        f"{results['allocator']}, embedding cache on). A labelling session = 10 clicks on one object "
        "(`client/examples/labelling_session.py`): one-point prompt growing by a point per click, the first "
        "click with multimask (3 candidates, the best kept) and the embedding computed, the following 9 with "
        "the previous mask's logits as `mask_input`, the embedding from the cache. Client wall time per "
        f"click (gRPC, raw RGB pixels, logits returned); {results['sessions']} sessions per image, each on a "
        "copy with one corner pixel changed (a cache miss on its first click). Goal for the following "
        f"clicks: at most {TARGET_MS:.0f} ms.",
        "",
        "| image | size | first click ms (median / max) | following clicks p50 ms | following clicks max ms "
        "| clicks | cache entry per image |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['image']} | {r['size'][1]}x{r['size'][0]} | {r['first_ms']:,.0f} / "
        f"{r['first_max_ms']:,.0f} | {r['later_p50_ms']:,.1f} | {r['later_max_ms']:,.1f} | {r['later_n']} | "
        f"{r['cache_entry_mib']:.2f} MiB |"
        for r in summarize(results)
    ]
    lines += [
        "",
        "The cache entry is the image embedding (256x64x64 float32 = 4 MiB) as a `.npy` file in "
        "`/dev/shm/mobilesamv2-embeddings/<build>/`, whatever the image size; the default budget "
        "(`embedding_cache_mb` 256) holds about 60 images.",
        "",
        f"Reproduce: `{results['command']}`.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    parser.add_argument("--sessions", type=int, default=3)
    parser.add_argument("--clicks", type=int, default=10)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "BENCHMARKS.md")
    parser.add_argument("--json", type=Path, default=RESULTS)
    parser.add_argument("--render", action="store_true", help="only re-render from --json")
    args = parser.parse_args(argv)
    if args.render:
        return rerender(args.json, args.out, START, END, render)

    os.environ.setdefault("YOLO_OFFLINE", "1")
    from labelling_session import session

    from benchmarks.environment import cpu_model
    from mobilesamv2.assets import sample_images
    from mobilesamv2.runner.local import TritonServer
    from segment_everything_client import SegmentEverythingClient
    from segment_everything_client.images import load_image

    started = time.time()
    salt = int(started) % 200 + 1
    run_dir = REPO_ROOT / "work" / "benchmarks" / "interactive"
    results: dict = {
        "command": shlex.join(
            ["flock", "/tmp/heavy.lock", ".venv/bin/python", "-m", "benchmarks.interactive", *argv]
        ),
        "machine": f"{cpu_model()}, {len(os.sched_getaffinity(0))} cores",
        "sessions": args.sessions,
        "images": {},
    }
    with (
        TritonServer(args.repository, log_path=run_dir / "tritonserver.log", startup_timeout=300) as server,
        SegmentEverythingClient(server.grpc_url, timeout=120, retries=0) as client,
    ):
        env = Path(f"/proc/{server.pid}/environ").read_bytes().split(b"\0")
        results["allocator"] = (
            ", ".join(e.decode() for e in env if e.split(b"=")[0].decode() in e2e.ALLOCATOR_KEYS)
            or "default: nothing process-wide, the ONNX Runtime stubs tune their own heap"
        )
        warm = load_image(sample_images()[0])
        warm[0, 0] = (salt, 0, 255)
        session(client, warm, 2)  # warm-up: first calls of each model
        for s in range(args.sessions):
            for path in sample_images():
                image = load_image(path)
                image[0, 0] = (
                    salt,
                    s,
                    7,
                )  # a new image for the cache: the first click computes the embedding
                before = cache_files()
                records = session(client, image, args.clicks)
                new = {p: size for p, size in cache_files().items() if p not in before}
                results["images"].setdefault(path.name, []).append(
                    {
                        "size": list(image.shape[:2]),
                        "clicks": records,
                        "cache_entry_bytes": max(new.values()) if new else None,
                        "cache_entry": str(max(new, key=new.get)) if new else None,
                    }
                )
                print(
                    f"{path.name} session {s + 1}: "
                    + ", ".join(f"{r['ms']:.0f}" for r in records)
                    + f" ms; cache entry {max(new.values()) if new else '?'} bytes",
                    flush=True,
                )
    publish(results, args.json, args.out, START, END, render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
