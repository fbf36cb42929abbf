"""The main job: build the repository, start tritonserver, segment an image through the client, save results.

    python -m mobilesamv2.demo [--image PATH] [--out outputs] [--encoder efficientvit_l2]

Weights: the official checkpoints in ``weights/official`` if present, else downloaded; only if that fails
(e.g. offline) seeded random weights in the official formats, announced loudly: their masks are meaningless.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .assets import bus_jpg
from .export.cli import REPO_ROOT, TEMPLATE, build_repository, resolve_weights
from .modeling.checkpoints import DEFAULT_ENCODER, ENCODERS

BANNER = "!" * 78


def choose_weights(weights: Path, encoder: str, fake_dir: Path) -> tuple[Path, str]:
    """Official files if present or downloadable, else fake ones (with a loud warning)."""
    from .weights import DownloadError, ensure_weights, required_files

    names = required_files(encoder)
    if all((weights / n).is_file() for n in names):
        return weights, "official"
    try:
        print(f"[demo] official checkpoints not found in {weights}/: downloading them", file=sys.stderr)
        ensure_weights(weights, names, timeout=20)
        return weights, "official"
    except DownloadError as exc:
        print(f"\n{BANNER}\n!! Could not get the official weights: {exc}", file=sys.stderr)
        print("!! Falling back to SEEDED RANDOM WEIGHTS in the official file formats.", file=sys.stderr)
        print("!! The pipeline runs for real, but the masks it draws are MEANINGLESS.", file=sys.stderr)
        print(
            f"!! Put the official files into {weights}/ (see README) for real masks.\n{BANNER}\n",
            file=sys.stderr,
        )
        return resolve_weights(weights, encoder, fake=True, download=False, fake_dir=fake_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--image", type=Path, default=None, help="image to segment (default: ultralytics' bus.jpg)"
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "outputs")
    parser.add_argument("--encoder", default=DEFAULT_ENCODER, choices=sorted(ENCODERS))
    parser.add_argument("--weights", type=Path, default=REPO_ROOT / "weights/official")
    parser.add_argument("--repository", type=Path, default=TEMPLATE)
    args = parser.parse_args(argv)

    from segment_everything_client import SegmentEverythingClient

    from .runner.local import TritonServer

    image = args.image or bus_jpg()
    weights_dir, kind = choose_weights(args.weights, args.encoder, REPO_ROOT / "weights/fake")
    build_repository(weights_dir, kind, args.encoder, args.repository)
    args.out.mkdir(parents=True, exist_ok=True)
    with TritonServer(args.repository, log_path=REPO_ROOT / "work/logs/demo-tritonserver.log") as server:
        print(f"[demo] tritonserver ready: http {server.http_url}, grpc {server.grpc_url}", file=sys.stderr)
        with SegmentEverythingClient(server.grpc_url, timeout=1800) as client:
            started = time.perf_counter()
            result = client.segment_everything(image, timings=True)
            seconds = time.perf_counter() - started
    overlay = args.out / f"{image.stem}_overlay.png"
    coco = args.out / f"{image.stem}_coco.json"
    result.save_overlay(overlay, str(image))
    coco.write_text(
        json.dumps({"image": str(image), "weights": kind, "annotations": result.to_coco()}) + "\n"
    )
    stages = ", ".join(f"{k} {v / 1e3:.2f} s" for k, v in (result.timings or {}).items())
    print(f"[demo] {len(result)} masks on {image.name} in {seconds:.1f} s ({stages})")
    print(f"[demo] wrote {overlay} and {coco}")
    if kind == "fake":
        print(f"[demo] {BANNER[:20]} RANDOM WEIGHTS: these masks are meaningless (see README) {BANNER[:20]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
