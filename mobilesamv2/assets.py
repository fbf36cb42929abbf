"""Test images: the real ones that ship inside the ultralytics wheel (no download needed), and a synthetic
street scene the project draws itself (no file, no licence, no ultralytics).

``assets/synthetic_scene.png`` in the repository is :func:`synthetic_scene` saved as PNG (lossless, 8 KB):
``cv2.imwrite("assets/synthetic_scene.png", synthetic_scene()[..., ::-1])``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


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


#: The synthetic scene's size (height, width): bus.jpg's, portrait.
SCENE_SIZE = (1080, 810)


def synthetic_scene() -> np.ndarray:
    """An RGB uint8 street scene of flat shapes on graded sky and road: buildings with windows, a bus with its
    windows and wheels, a person, a bush, the sun. Integer arithmetic only: the same pixels everywhere."""
    height, width = SCENE_SIZE
    y, x = np.mgrid[0:height, 0:width].astype(np.int64)
    horizon, ground = 594, height - 594
    sky = y < horizon
    image = np.stack(
        [
            np.where(sky, 120 + 80 * y // horizon, 90 - 20 * (y - horizon) // ground),
            np.where(sky, 170 + 50 * y // horizon, 88 - 10 * (y - horizon) // ground),
            np.where(sky, 235 - 10 * y // horizon, 92),
        ],
        axis=-1,
    )

    def box(x0: int, y0: int, x1: int, y1: int, rgb: tuple[int, int, int]) -> None:
        image[y0:y1, x0:x1] = rgb

    def ellipse(cx: int, cy: int, rx: int, ry: int, rgb: tuple[int, int, int]) -> None:
        image[((x - cx) * ry) ** 2 + ((y - cy) * rx) ** 2 < (rx * ry) ** 2] = rgb

    box(0, 194, 178, 594, (150, 120, 100))  # buildings
    box(194, 302, 364, 594, (190, 180, 160))
    box(631, 129, 810, 594, (110, 110, 130))
    for column in range(3):
        for row in range(4):
            left, top = 24 + 49 * column, 237 + 76 * row
            box(left, top, left + 32, top + 54, (60, 70, 90))  # windows
    box(40, 453, 769, 842, (200, 40, 35))  # the bus
    box(72, 507, 737, 626, (40, 60, 80))  # its windows
    for cx in (202, 607):
        ellipse(cx, 842, 65, 65, (25, 25, 25))  # wheels
        ellipse(cx, 842, 28, 28, (160, 160, 160))
    ellipse(121, 756, 40, 130, (40, 50, 120))  # a person
    ellipse(121, 605, 28, 28, (210, 170, 140))
    ellipse(502, 972, 113, 43, (70, 130, 60))  # a bush
    ellipse(713, 86, 49, 49, (250, 240, 200))  # the sun
    return image.astype(np.uint8)
