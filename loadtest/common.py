"""What the locustfile and its wrapper share: the test images and the target address. Pure; no gevent, no
grpc, so importing it patches nothing (the locustfile itself switches grpcio to gevent on import)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
DEFAULT_PORTS = {"grpc": 8001, "http": 8000}


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


def split_host(host: str, protocol: str) -> tuple[str, bool]:
    """A ``--host`` value -> tritonclient's ``host:port`` (no scheme) and whether to use TLS.

    >>> split_host("https://triton.example:8000/", "http")
    ('triton.example:8000', True)
    >>> split_host("", "grpc")
    ('127.0.0.1:8001', False)
    """
    if not host:
        return f"127.0.0.1:{DEFAULT_PORTS[protocol]}", False
    for scheme, tls in (("https://", True), ("grpcs://", True), ("http://", False), ("grpc://", False)):
        if host.startswith(scheme):
            return host[len(scheme) :].rstrip("/"), tls
    return host.rstrip("/"), False
