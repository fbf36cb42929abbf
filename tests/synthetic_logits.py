"""Synthetic low-resolution mask logits for the tests of the mask postprocess (host and device).

Random-weight decoders give noise logits, whose masks have outlines everywhere; real SAM logits are smooth.
These generators give both, seeded.
"""

from __future__ import annotations

import numpy as np


def smooth_logits(n: int, seed: int = 0) -> np.ndarray:
    """Masks with realistic outlines: sums of Gaussian blobs and clipped, scaled signed distance fields of
    ellipses and rectangles (some cut by the border), about -20..+20 like SAM's logits."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:256, 0:256].astype(np.float64) + 0.5
    out = np.empty((n, 256, 256), np.float32)
    for i in range(n):
        if i % 2 == 0:
            f = np.full((256, 256), -rng.uniform(1, 4))
            for _ in range(rng.integers(1, 5)):
                cy, cx = rng.uniform(-20, 276, 2)
                s, a = rng.uniform(6, 70), rng.uniform(2, 20)
                f += a * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
        else:
            cy, cx = rng.uniform(0, 256, 2)
            ry, rx = rng.uniform(5, 120, 2)
            if rng.random() < 0.5:
                d = (np.hypot((yy - cy) / ry, (xx - cx) / rx) - 1) * min(ry, rx)
            else:
                qy, qx = np.abs(yy - cy) - ry, np.abs(xx - cx) - rx
                d = np.hypot(np.maximum(qy, 0), np.maximum(qx, 0)) + np.minimum(np.maximum(qy, qx), 0)
            f = np.clip(-d * rng.uniform(0.3, 2.0), -20, 20)
        out[i] = f
    return out


def noise_logits(n: int, seed: int = 0) -> np.ndarray:
    """What random weights produce: independent N(0, 1) per low-res pixel (outlines everywhere)."""
    return np.random.default_rng(seed).standard_normal((n, 256, 256)).astype(np.float32)
