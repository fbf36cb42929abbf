"""What the locustfile and its wrapper share: the test images and the target address. Pure; no gevent, no
grpc, so importing it patches nothing (the locustfile itself switches grpcio to gevent on import)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from segment_everything_client.images import IMAGE_SUFFIXES
from segment_everything_client.types import SegmentSettings


def ultralytics_images() -> Path:
    """The sample images inside the ultralytics wheel (bus.jpg, zidane.jpg), found without importing it."""
    spec = importlib.util.find_spec("ultralytics")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "no image folder given and ultralytics (which ships sample images) is not installed"
        )
    return Path(spec.origin).parent / "assets"


def load_images(folder: str | os.PathLike[str] | None = None) -> list[tuple[str, bytes]]:
    """``(file name, encoded bytes)`` for every image file directly in ``folder``, sorted by name."""
    root = Path(folder) if folder else ultralytics_images()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    paths = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {root}")
    return [(p.name, p.read_bytes()) for p in paths]


def request_settings(
    max_prompts: int = 0, conf: float = 0.0, iou: float = 0.0, output: str = "rle", timings: bool = False
) -> SegmentSettings:
    """The contract's settings from the load test's options, where 0 means "the default"."""
    given = {"max_prompts": max_prompts, "conf": conf, "iou": iou}
    return SegmentSettings(output=output, timings=timings, **{k: v for k, v in given.items() if v})
