"""Peak memory of the server vs prompts and image size, on a fresh server.

    flock /tmp/heavy.lock .venv/bin/python -m benchmarks.memory      # ~4 min on 2 cores
    .venv/bin/python -m benchmarks.memory --render                    # re-render BENCHMARKS.md, no measuring

One SegEvery request per cell (max_prompts x bus.jpg rescaled to a longest side), conf 0.05 so that every
cell gets max_prompts boxes; the summed RSS of tritonserver and its stub processes sampled every 10 ms during
the request. Prompts ascend in the outer loop on a fresh server: ONNX Runtime's arenas keep what they grew to.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

from benchmarks import common, serving
from benchmarks.common import fmt, table

NAME = "memory"
PROMPTS = (1, 10, 50, 150, 300)
SIDES = (640, 1280, 2560, 5120)  # longest side; 5120: 3840x5120, 19.7 MP
CONF = 0.05
# The goal of BENCHMARKS.md's Targets table: what grows with prompts x pixels stays below this share of
# what dense masks would add.
PIXEL_SHARE_GOAL = 0.05


def measure(server_pid: int, client, prompts: Sequence[int], sides: Sequence[int], conf: float) -> dict:
    import cv2

    bus = cv2.imread(str(serving.sample_image("bus.jpg")))
    images = {side: serving.rescaled(bus, side) for side in sides}
    idle = serving.tree_rss_mb(server_pid)
    client.segment_everything(serving.jpeg(images[min(sides)]), max_prompts=1)  # lazy initialisation
    warm = serving.tree_rss_mb(server_pid)
    cells = []
    for count in prompts:
        for side in sides:
            bgr = images[side]
            data, (h, w) = serving.jpeg(bgr), bgr.shape[:2]
            start = time.perf_counter()
            with serving.PeakRss(server_pid) as peak:
                result = client.segment_everything(data, conf=conf, max_prompts=count)
            cell = {
                "max_prompts": count,
                "masks": len(result),
                "size": [h, w],
                "megapixels": h * w / 1e6,
                "peak_mb": peak.peak_mb,
                "growth_mb": peak.peak_mb - warm,
                "dense_masks_mb": len(result) * h * w / 2**20,
                "rle_response_mb": sum(len(r["counts"]) for r in result.rles) / 2**20,
                "request_s": time.perf_counter() - start,
            }
            if count == max(prompts):
                cell["by_process_mb"] = peak.by_label_mb
            cells.append(cell)
            serving.log(f"{count} prompts, {w}x{h}: peak {cell['peak_mb']:,.0f} MB")
    return {"idle_mb": idle, "warm_idle_mb": warm, "cells": cells}


def scaling(results: dict) -> dict[str, float]:
    """How the peak grows: from the smallest to the largest image at the fewest and at the most prompts; the
    difference is the prompts x pixels term, compared with what dense masks would add (``pixel_share``)."""
    cells = results["cells"]
    at = {(c["max_prompts"], c["megapixels"]): c for c in cells}
    few, many = min(c["max_prompts"] for c in cells), max(c["max_prompts"] for c in cells)
    small, large = min(c["megapixels"] for c in cells), max(c["megapixels"] for c in cells)
    fs, fl, ms, ml = at[few, small], at[few, large], at[many, small], at[many, large]
    term = (ml["peak_mb"] - ms["peak_mb"]) - (fl["peak_mb"] - fs["peak_mb"])
    dense = ml["dense_masks_mb"] - ms["dense_masks_mb"]
    return {
        "few": fs["masks"], "many": ml["masks"], "small_mp": small, "large_mp": large,
        "few_growth_mb": fl["peak_mb"] - fs["peak_mb"], "many_growth_mb": ml["peak_mb"] - ms["peak_mb"],
        "term_mb": term, "dense_mb": dense, "pixel_share": term / dense,
        "rle_growth_mb": ml["rle_response_mb"] - ms["rle_response_mb"],
        "mb_per_prompt": (ms["peak_mb"] - fs["peak_mb"]) / max(ms["masks"] - fs["masks"], 1),
    }  # fmt: skip


def render(results: dict) -> str:
    cells = results["cells"]
    rows = [
        [c["max_prompts"], c["masks"], f"{c['size'][1]}x{c['size'][0]}", fmt(c["megapixels"], 1),
         fmt(c["peak_mb"]), fmt(c["growth_mb"]), fmt(c["dense_masks_mb"]), fmt(c["rle_response_mb"], 1),
         fmt(c["request_s"], 1)]
        for c in cells
    ]  # fmt: skip
    header = ["max_prompts", "masks", "image", "MP", "peak RSS MB", "growth over warm idle MB",
              "prompts x pixels (dense masks) MB", "RLE response MB", "request s"]  # fmt: skip
    idle = table(
        ["server RSS", "MB"],
        [
            ["after start, idle", fmt(results["idle_mb"])],
            ["after a warm-up request", fmt(results["warm_idle_mb"])],
        ],
    )
    largest = [c for c in cells if "by_process_mb" in c]
    by_process = table(
        ["process group: peak RSS MB", *(f"{c['masks']} prompts, {c['megapixels']:.1f} MP" for c in largest)],
        [[g, *(fmt(c["by_process_mb"].get(g)) for c in largest)] for g in largest[-1]["by_process_mb"]],
    )
    s = scaling(results)
    growth = table(
        [f"growth of the peak from {s['small_mp']:.1f} to {s['large_mp']:.1f} MP", "MB"],
        [[f"at {s['few']} prompt(s)", fmt(s["few_growth_mb"])],
         [f"at {s['many']} prompts", fmt(s["many_growth_mb"])],
         ["prompts x pixels term (the difference)", fmt(s["term_mb"])],
         ["what dense masks would add", fmt(s["dense_mb"])], ["share", f"{s['pixel_share']:.1%}"],
         [f"RLE response growth at {s['many']} prompts", fmt(s["rle_growth_mb"])],
         [f"per extra prompt at {s['small_mp']:.1f} MP", fmt(s["mb_per_prompt"], 1)]],
    )  # fmt: skip
    return "\n\n".join([common.provenance(results), idle, table(header, rows), growth, by_process])


def values(results: dict) -> dict[str, str]:
    """The Targets table's cells."""
    s = scaling(results)
    return {
        "pixels": f"{fmt(s['term_mb'])} MB = {s['pixel_share']:.1%} of {fmt(s['dense_mb'])} MB",
        "pixels-status": common.verdict(s["pixel_share"] < PIXEL_SHARE_GOAL),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = common.argument_parser(NAME, __doc__)
    parser.add_argument("--prompts", default=",".join(map(str, PROMPTS)), help="max_prompts values")
    parser.add_argument("--sides", default=",".join(map(str, SIDES)), help="longest image sides")
    args = parser.parse_args(argv)
    if args.render:
        return common.rerender(NAME, render, values=values)
    prompts, sides = [int(p) for p in args.prompts.split(",")], [int(s) for s in args.sides.split(",")]
    results = common.new_results(repository=args.repository, conf=CONF, sample_interval_s=0.01)
    with serving.serve(args.repository, NAME) as (server, client):
        results["settings"]["allocator_env"] = serving.allocator_env(server.pid)
        results.update(measure(server.pid, client, prompts, sides, CONF))
    common.publish(NAME, results, render, values=values)
    return 0


if __name__ == "__main__":
    sys.exit(main())
