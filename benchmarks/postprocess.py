"""CPU mask post-processing: the previous implementation against ``mobilesamv2.processing.masks``.

    flock /tmp/heavy.lock .venv/bin/python benchmarks/postprocess.py                # ~3 min on 2 cores
    flock /tmp/heavy.lock .venv/bin/python benchmarks/postprocess.py --quick        # ~1 min
    .venv/bin/python benchmarks/postprocess.py --out work/benchmarks/postprocess.md --rounds 5

Both sides turn the same low-res logits into COCO RLE strings (``masks_to_rles``), side by side in one
process: each round runs old then new or new then old (alternating), so drift in the machine's speed hits
both alike; the table gives medians in ms per mask. The logits are *smooth* (sums of Gaussian blobs and
scaled signed distance fields of ellipses and rectangles at 256x256, SAM-like magnitudes), i.e. masks with
realistic outlines; a row with noise logits (what random weights produce: the dense path) is added.

Peak memory is the peak of numpy's allocations (``tracemalloc``) during one 300-mask call, for each side.
Parity is reported per case: RLE strings identical, and the pixels that differ (the previous implementation
runs ``cv2.resize`` with opencv-python's default Intel IPP kernels for 1-, 3- and 4-mask chunks, whose
coefficients differ slightly from OpenCV's own code, which the new one reproduces).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a file: python benchmarks/postprocess.py
    sys.path.insert(0, str(REPO_ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.environment import cpu_model, git_commit, package_versions  # noqa: E402
from mobilesamv2.processing import masks  # noqa: E402
from mobilesamv2.processing.image import ENCODER_IMAGE_SIZE, encoder_input_size  # noqa: E402
from mobilesamv2.synthetic_logits import noise_logits, smooth_logits  # noqa: E402
from segment_everything_contract import rle as rle_codec  # noqa: E402

DEFAULT_OUT = REPO_ROOT / "work" / "benchmarks" / "postprocess.md"

# ------------------------------------------------------------------------------ the previous implementation
# mobilesamv2/processing/masks.py before the outline-block rewrite (commit 0cc40a3), verbatim but for names.

_OLD_CHUNK_BYTES = 16 * 1024 * 1024
_CV_MAX_CHANNELS = 512


def _old_resize_channels_last(x: np.ndarray, width: int, height: int) -> np.ndarray:
    out = cv2.resize(x, (width, height), interpolation=cv2.INTER_LINEAR)
    return out if out.ndim == 3 else out[:, :, None]


def _old_iter_upsampled_transposed(
    low_res_logits: np.ndarray,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    chunk_bytes: int = _OLD_CHUNK_BYTES,
) -> Iterator[np.ndarray]:
    n = low_res_logits.shape[0]
    new_h, new_w = input_size
    h, w = original_size
    per_mask = max(h * w, ENCODER_IMAGE_SIZE**2) * 4
    chunk = int(max(1, min(_CV_MAX_CHANNELS, chunk_bytes // per_mask)))
    for start in range(0, n, chunk):
        block = np.ascontiguousarray(
            low_res_logits[start : start + chunk].transpose(2, 1, 0), dtype=np.float32
        )
        up = _old_resize_channels_last(block, ENCODER_IMAGE_SIZE, ENCODER_IMAGE_SIZE)
        up = np.ascontiguousarray(up[:new_w, :new_h])
        yield _old_resize_channels_last(up, h, w)


def old_masks_to_rles(
    low_res_logits: np.ndarray,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    threshold: float = 0.0,
    chunk_bytes: int = _OLD_CHUNK_BYTES,
) -> list[dict]:
    rles: list[dict] = []
    for block in _old_iter_upsampled_transposed(low_res_logits, input_size, original_size, chunk_bytes):
        binary = block > threshold
        rles.extend(rle_codec.encode(binary[:, :, k].T) for k in range(binary.shape[2]))
    return rles


def new_masks_to_rles(low_res_logits, input_size, original_size) -> list[dict]:
    return masks.masks_to_rles(low_res_logits, input_size, original_size)


# ------------------------------------------------------------------------------------------------ logits


# ------------------------------------------------------------------------------------------- measuring

Impl = Callable[[np.ndarray, tuple[int, int], tuple[int, int]], list[dict]]


def alternate(old: Impl, new: Impl, args: tuple, rounds: int) -> tuple[list[float], list[float]]:
    """Seconds per call of each side over ``rounds`` rounds, alternating which side goes first."""
    times: dict[str, list[float]] = {"old": [], "new": []}
    for r in range(rounds):
        order = [("old", old), ("new", new)] if r % 2 == 0 else [("new", new), ("old", old)]
        for name, fn in order:
            t0 = time.perf_counter()
            fn(*args)
            times[name].append(time.perf_counter() - t0)
    return times["old"], times["new"]


def peak_bytes(fn: Impl, args: tuple) -> int:
    """Peak of numpy's (and Python's) allocations during one call, over what was allocated before it."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        fn(*args)
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def parity(old: list[dict], new: list[dict]) -> tuple[int, int, int]:
    """(masks with identical strings, differing pixels in total, pixels of all masks)."""
    same = sum(a == b for a, b in zip(old, new, strict=True))
    differing = 0
    for a, b in zip(old, new, strict=True):
        if a != b:
            differing += int(np.count_nonzero(rle_codec.decode(a) != rle_codec.decode(b)))
    total = sum(int(np.prod(r["size"])) for r in old)
    return same, differing, total


def machine() -> str:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = package_versions(("numpy", "opencv-python-headless"))
    return (
        f"{cpu_model()}, {os.cpu_count()} logical CPUs ({usable} usable), OpenCV threads "
        f"{cv2.getNumThreads()}, IPP {'on' if cv2.ipp.useIPP() else 'off'}; python {versions['python']}, "
        f"numpy {versions['numpy']}, opencv-python-headless {versions['opencv-python-headless']}; "
        f"commit {git_commit(REPO_ROOT)}"
    )


# ------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="markdown report (default: %(default)s)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="timed calls per side and case")
    parser.add_argument("--quick", action="store_true", help="one round, no 300-mask calls at 4000x3000")
    args = parser.parse_args(argv)
    rounds = 1 if args.quick else args.rounds

    cases = [  # (label, (h, w), masks, logits kind)
        ("bus.jpg size", (1080, 810), 50, "smooth"),
        ("bus.jpg size", (1080, 810), 300, "smooth"),
        ("12 MP", (4000, 3000), 50, "smooth"),
        ("12 MP", (4000, 3000), 300, "smooth"),
        ("small, upscaled", (300, 200), 50, "smooth"),
        ("noise (random weights)", (1080, 810), 50, "noise"),
    ]
    if args.quick:
        cases = [c for c in cases if not (c[1] == (4000, 3000) and c[2] == 300)]
    print(f"machine: {machine()}", flush=True)
    rows = []
    for label, size, n, kind in cases:
        logits = smooth_logits(n, seed=n) if kind == "smooth" else noise_logits(n, seed=n)
        call = (logits, encoder_input_size(*size), size)
        # warm-up (the new side caches its per-geometry tap tables) and parity on the same outputs
        same, differing, total = parity(old_masks_to_rles(*call), new_masks_to_rles(*call))
        old_t, new_t = alternate(old_masks_to_rles, new_masks_to_rles, call, rounds)
        old_ms, new_ms = (statistics.median(t) * 1e3 / n for t in (old_t, new_t))
        row = {
            "case": f"{size[0]}x{size[1]} ({label}), {n} {kind} masks",
            "old": old_ms,
            "new": new_ms,
            "parity": f"{same}/{n} identical, {differing} px differ ({differing / total:.1e})",
        }
        if n == 300:
            row["mem_old"], row["mem_new"] = (
                peak_bytes(f, call) / 2**20 for f in (old_masks_to_rles, new_masks_to_rles)
            )
        rows.append(row)
        mem = f", peak {row['mem_old']:.0f} -> {row['mem_new']:.0f} MiB" if "mem_old" in row else ""
        print(
            f"{row['case']}: {old_ms:.2f} -> {new_ms:.2f} ms/mask ({old_ms / new_ms:.1f}x){mem}; "
            f"{row['parity']}",
            flush=True,
        )

    lines = [
        "# CPU mask post-processing: previous vs outline-block implementation",
        "",
        f"`{' '.join(['benchmarks/postprocess.py', *(argv if argv is not None else sys.argv[1:])])}`, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        f"Machine: {machine()}.",
        "",
        f"Medians of {rounds} alternating calls per side (`masks_to_rles`, logits to COCO RLE strings). "
        "Peak memory: numpy allocations during one call (tracemalloc). Parity: RLE strings of the new "
        "implementation against the previous one (opencv-python's default, IPP on).",
        "",
        "| case | old ms/mask | new ms/mask | speed-up | peak memory old -> new | parity |",
        "|---|---:|---:|---:|---|---|",
    ]
    for row in rows:
        mem = f"{row['mem_old']:.0f} -> {row['mem_new']:.0f} MiB" if "mem_old" in row else ""
        lines.append(
            f"| {row['case']} | {row['old']:.2f} | {row['new']:.2f} | {row['old'] / row['new']:.1f}x | {mem} "
            f"| {row['parity']} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
