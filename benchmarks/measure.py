"""The measurements. Each section returns a JSON-able dict of raw numbers (every repetition, not just
medians); ``benchmarks.run`` orchestrates them and ``benchmarks.report`` turns them into tables and a plot.

Comparisons alternate inside one process run (A B, B A, A B, ...) so that drift in the machine's speed (other
load, thermal state, caches) hits both sides alike.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from benchmarks.e2e import PeakRss
from loadtest.run import LoadTestSettings, percentile, run_locust, summarize_samples
from mobilesamv2.processing import boxes as box_ops

Log = Callable[[str], None]


@dataclass(frozen=True)
class Plan:
    """How much each section measures; ``QUICK`` fits ~10 minutes on 2 cores, ``FULL`` ~30."""

    reps: int  # timed repetitions per side of a comparison (after one untimed warm-up)
    grid_images: tuple[
        str, ...
    ]  # images that also get the 32x32 grid baseline (~90 s of decoder each on 2 cores)
    concurrency_levels: tuple[int, ...] = (1, 2, 4, 8)
    concurrency_run_time: str = "30s"
    concurrency_passes: int = 1  # 2 = levels up, then down again (pooled), to cancel drift
    load_max_prompts: int = 16  # keeps one request at ~2-3 s on 2 cores; the default 300 takes ~20 s
    soak_users: int = 4
    soak_run_time: str = "60s"
    memory_prompts: tuple[int, ...] = (1, 50, 300)
    memory_sides: tuple[int, ...] = (
        640,
        2560,
        5120,
    )  # longest side of bus.jpg rescaled (5120: 3840x5120, 19.7 MP)
    memory_conf: float = 0.05  # low, so that every cell gets max_prompts boxes

    def to_dict(self) -> dict:
        return asdict(self)


QUICK = Plan(
    reps=2,
    grid_images=("bus.jpg",),
    concurrency_run_time="25s",
    soak_run_time="45s",
    memory_prompts=(1, 50, 300),
    memory_sides=(640, 5120),
)
# Checks that every section runs end to end (about 3 minutes); its numbers mean nothing.
SMOKE = Plan(
    reps=1,
    grid_images=(),
    concurrency_levels=(1, 2),
    concurrency_run_time="10s",
    load_max_prompts=2,
    soak_users=2,
    soak_run_time="10s",
    memory_prompts=(1, 4),
    memory_sides=(320, 640),
)
FULL = Plan(
    reps=3,
    grid_images=("bus.jpg", "zidane.jpg"),
    concurrency_run_time="60s",
    concurrency_passes=2,
    soak_run_time="5m",
    memory_prompts=(1, 10, 50, 150, 300),
    memory_sides=(640, 1280, 2560, 5120),
)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1e3


# --- 1. decoder cost: object-aware box prompts vs SAM's 32x32 point grid ------------------------------------


def decoder_section(pipe, images: dict[str, np.ndarray], plan: Plan, log: Log = print) -> dict:
    """Decoder time and decoded masks of SegEvery's box prompts vs the 32x32 grid, same embedding and weights.

    Both run the same PyTorch decoder (the reference pipeline's); only the prompts differ. The grid is SAM's
    automatic mask generator: 1024 single-point prompts, 3 masks each, in batches of 64.
    """
    from mobilesamv2.reference import grid_segment_everything

    rows = []
    for name, rgb in images.items():
        h, w = rgb.shape[:2]
        boxes, _ = pipe.detect(rgb)
        embedding = pipe.encode(rgb)
        prompts = box_ops.boxes_to_encoder_frame(boxes, (h, w))
        pipe.decode_boxes(embedding, prompts[:2])  # warm-up
        grid_runs = 1 if name in plan.grid_images else 0
        row: dict = {
            "image": name,
            "size": [h, w],
            "box_prompts": len(prompts),
            "box_masks": len(prompts),
            "box_ms": [],
            "grid_ms": [],
            "grid_total_ms": [],
        }
        for rep in range(max(plan.reps, grid_runs)):
            if rep < plan.reps:
                start = time.perf_counter()
                pipe.decode_boxes(embedding, prompts)
                row["box_ms"].append(_ms(start))
                log(f"  decoder {name}: {len(prompts)} box prompts {row['box_ms'][-1]:.0f} ms")
            if rep < grid_runs:
                grid = grid_segment_everything(pipe, rgb, embedding=embedding)
                row["grid_ms"].append(grid.decoder_ms)
                row["grid_total_ms"].append(grid.total_ms)
                row.update(grid_points=32 * 32, grid_masks=grid.decoded_masks, grid_kept=len(grid.boxes))
                log(
                    f"  decoder {name}: 32x32 grid {grid.decoder_ms:.0f} ms decoder, {grid.decoded_masks} "
                    "masks"
                )
        rows.append(row)
    return {"rows": rows}


# --- 3. throughput and latency vs concurrency (locust) ------------------------------------------------------


def _locust_settings(host: str, users: int, run_time: str, max_prompts: int) -> LoadTestSettings:
    return LoadTestSettings(
        host=host,
        users=users,
        spawn_rate=float(users),
        run_time=run_time,
        max_prompts=max_prompts,
        server_timings=True,
        stop_timeout=300,
        request_timeout=600,
    )


def concurrency_section(host: str, plan: Plan, out_dir: Path, log: Log = print) -> dict:
    """Closed-loop locust runs at each concurrency level; with 2 passes the levels go up, then down again."""
    order: list[tuple[int, int]] = []
    for p in range(plan.concurrency_passes):
        levels = plan.concurrency_levels if p % 2 == 0 else tuple(reversed(plan.concurrency_levels))
        order += [(p, users) for users in levels]
    runs: dict[int, list[dict]] = {users: [] for users in plan.concurrency_levels}
    for p, users in order:
        settings = _locust_settings(host, users, plan.concurrency_run_time, plan.load_max_prompts)
        result = run_locust(settings, out_dir / f"users-{users}-pass-{p + 1}", warmup=1)
        s = result.summary
        log(
            f"  concurrency {users} users (pass {p + 1}): {s.requests} requests, {s.failures} failed, "
            f"{s.throughput_rps:.3f} req/s, p50 {s.p50_ms:.0f} p95 {s.p95_ms:.0f} ms"
        )
        runs[users].append(
            {"summary": s.to_dict(), "samples": result.samples, "report": str(result.html_report)}
        )
    levels = []
    for users, passes in runs.items():
        samples = [r for run in passes for r in run["samples"]]
        ok = [float(r["ms"]) for r in samples if r.get("ok")]
        window = sum(run["summary"]["window_s"] or 0.0 for run in passes)
        levels.append(
            {
                "users": users,
                "requests": len(samples),
                "failures": len(samples) - len(ok),
                "throughput_rps": len(ok) / window if window else float("nan"),
                "p50_ms": percentile(ok, 50),
                "p95_ms": percentile(ok, 95),
                "p99_ms": percentile(ok, 99),
                "mean_ms": sum(ok) / len(ok) if ok else float("nan"),
                "masks_mean": sum(r.get("masks", 0) for r in samples) / len(samples)
                if samples
                else float("nan"),
                "server_total_ms_p50": percentile(
                    [r["server_ms"]["total"] for r in samples if r.get("server_ms")], 50
                ),
                "passes": [{k: v for k, v in run.items() if k != "samples"} for run in passes],
            }
        )
    return {
        "max_prompts": plan.load_max_prompts,
        "run_time": plan.concurrency_run_time,
        "passes": plan.concurrency_passes,
        "levels": levels,
    }


def soak_section(host: str, plan: Plan, out_dir: Path, log: Log = print) -> dict:
    """One long locust run at ``soak_users`` users: the zero-failure target."""
    settings = _locust_settings(host, plan.soak_users, plan.soak_run_time, plan.load_max_prompts)
    result = run_locust(settings, out_dir / f"soak-{plan.soak_users}-users", warmup=1)
    s = summarize_samples(result.samples) if result.samples else result.summary
    log(f"  soak {plan.soak_users} users {plan.soak_run_time}: {s.requests} requests, {s.failures} failed")
    return {
        "users": plan.soak_users,
        "run_time": plan.soak_run_time,
        "max_prompts": plan.load_max_prompts,
        "summary": s.to_dict(),
        "report": str(result.html_report),
        "command": result.command,
    }


# --- 4. peak memory vs prompts and image size ---------------------------------------------------------------


def rescaled_jpeg(bgr: np.ndarray, longest_side: int) -> tuple[bytes, tuple[int, int]]:
    h, w = bgr.shape[:2]
    scale = longest_side / max(h, w)
    size = (round(w * scale), round(h * scale))
    resized = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    ok, data = cv2.imencode(".jpg", resized, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return data.tobytes(), resized.shape[:2]


def memory_section(server_pid: int, client, bgr: np.ndarray, plan: Plan, log: Log = print) -> dict:
    """Peak RSS of tritonserver + its stub processes during one request per (prompts, image size) cell.

    Run on a fresh server, prompts ascending in the outer loop: ONNX Runtime's arenas keep what they grew to,
    so a cell also carries what smaller cells before it grew. ``dense_equivalent_mb`` is what the masks alone
    would take at full resolution (prompts x pixels, 1 byte each): the footprint the server must not have.
    """
    images = {side: rescaled_jpeg(bgr, side) for side in plan.memory_sides}
    tracker = PeakRss(server_pid)
    idle_fresh = tracker.current()
    client.segment_everything(images[min(images)][0], max_prompts=1)  # warm-up: lazy initialisation
    baseline = tracker.current()
    cells = []
    for prompts in plan.memory_prompts:
        for side, (data, (h, w)) in images.items():
            tracker = PeakRss(server_pid)
            before = tracker.current()
            start = time.perf_counter()
            with tracker:
                segmentation = client.segment_everything(
                    data, conf=plan.memory_conf, max_prompts=prompts, timings=True
                )
            cell = {
                "max_prompts": prompts,
                "masks": len(segmentation),
                "side": side,
                "size": [h, w],
                "megapixels": h * w / 1e6,
                "before_mb": before / 2**20,
                "peak_mb": tracker.peak / 2**20,
                "growth_mb": (tracker.peak - baseline) / 2**20,
                "request_growth_mb": (tracker.peak - before) / 2**20,
                "dense_equivalent_mb": len(segmentation) * h * w / 2**20,
                "response_rle_mb": sum(len(r["counts"]) for r in segmentation.rles) / 2**20,
                "wall_ms": _ms(start),
                "server_ms": segmentation.timings,
                "by_process_peak_mb": {k: v / 2**20 for k, v in tracker.by_label.items()},
            }
            cells.append(cell)
            log(
                f"  memory {prompts} prompts, {w}x{h}: peak {cell['peak_mb']:.0f} MB "
                f"(+{cell['growth_mb']:.0f} over warm idle), {cell['wall_ms'] / 1e3:.1f} s"
            )
    return {
        "idle_fresh_mb": idle_fresh / 2**20,
        "idle_warm_mb": baseline / 2**20,
        "conf": plan.memory_conf,
        "processes": sorted(set(PeakRss(server_pid).labels.values())),
        "cells": cells,
    }


@dataclass
class Timer:
    """Wall time of each section, for the report's footer."""

    seconds: dict[str, float] = field(default_factory=dict)

    def section(self, name: str):
        timer = self

        class _Section:
            def __enter__(self) -> None:
                self.start = time.perf_counter()

            def __exit__(self, *exc: object) -> None:
                timer.seconds[name] = time.perf_counter() - self.start

        return _Section()
