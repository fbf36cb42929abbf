"""Real test images that ship inside the ultralytics wheel (no download needed)."""

from __future__ import annotations

from pathlib import Path


def ultralytics_assets_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("ultralytics")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("ultralytics is not installed: its wheel ships the sample images (bus.jpg)")
    return Path(spec.origin).parent / "assets"


def sample_images() -> list[Path]:
    """``bus.jpg`` and ``zidane.jpg`` (sorted), found without importing ultralytics."""
    images = sorted(ultralytics_assets_dir().glob("*.jpg"))
    if not images:
        raise FileNotFoundError(f"no sample images in {ultralytics_assets_dir()}")
    return images


def bus_jpg() -> Path:
    return ultralytics_assets_dir() / "bus.jpg"
