"""A simulated interactive labelling session: one image, ten successive clicks, per-click latency.

Each click adds a point to the object being labelled (SAM's interactive loop): the first call encodes the
image; every later call with the same image is answered from the server's embedding cache, so it costs one
decoder call. Clicks ask for SAM's three candidate masks (``multimask``) and keep the best; from the second
click on, the previous answer's low-res logits are sent back as ``mask_input`` to refine it.

    python client/examples/labelling_session.py bus.jpg --url 127.0.0.1:8001
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from segment_everything_client import SegmentEverythingClient
from segment_everything_client.images import load_image


def clicks(height: int, width: int, count: int, seed: int = 0) -> list[tuple[float, float, int]]:
    """``count`` clicks around the image centre: mostly foreground, every fourth one background."""
    rng = np.random.default_rng(seed)
    centre = np.array([width / 2, height / 2])
    spread = np.array([width, height]) / 8
    return [
        (*(centre + rng.normal(0, 1, 2) * spread).clip(0, [width - 1, height - 1]), int(i % 4 != 3))
        for i in range(count)
    ]


def session(client: SegmentEverythingClient, image: np.ndarray, count: int = 10) -> list[dict]:
    """Run ``count`` clicks; returns one record per click (latency, mask area, predicted IoU)."""
    points: list[tuple[float, float]] = []
    labels: list[int] = []
    previous = None
    records = []
    for x, y, label in clicks(*image.shape[:2], count):
        points.append((x, y))
        labels.append(label)
        start = time.perf_counter()
        result = client.segment_anything(
            image,
            points=[points],
            point_labels=[labels],
            multimask=previous is None,  # ambiguous first click: three candidates, keep the best
            mask_input=previous,
            output="logits",
        )
        best = result.best_per_prompt()
        latency_ms = (time.perf_counter() - start) * 1e3
        previous = best.low_res_logits  # refine this mask with the next click
        records.append(
            {
                "click": len(points),
                "ms": latency_ms,
                "area": int(best.areas[0]),
                "iou": float(best.iou_predictions[0]),
            }
        )
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("image")
    parser.add_argument("--url", default="127.0.0.1:8001")
    parser.add_argument("--protocol", default="grpc", choices=("grpc", "http"))
    parser.add_argument("--clicks", type=int, default=10)
    args = parser.parse_args(argv)
    image = load_image(args.image)
    with SegmentEverythingClient(args.url, protocol=args.protocol, timeout=120) as client:
        records = session(client, image, args.clicks)
    for r in records:
        print(
            f"click {r['click']:2d}: {r['ms']:8.1f} ms  mask {r['area']:8d} px  predicted IoU {r['iou']:.3f}"
        )
    later = [r["ms"] for r in records[1:]]
    if later:
        print(f"first click {records[0]['ms']:.0f} ms, later clicks median {statistics.median(later):.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
