"""The one percentile of the load tests and the benchmarks (standard library only: the GPU check imports it
through ``benchmarks.common`` on machines with nothing but PyTorch)."""

from __future__ import annotations

import math
from collections.abc import Iterable


def percentile(values: Iterable[float | None], q: float) -> float:
    """The ``q``-th percentile (0..100), linear between order statistics (numpy's default); NaN and None are
    skipped; NaN when nothing is left."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within [0, 100], got {q}")
    ordered = sorted(v for v in values if v is not None and not math.isnan(v))
    if not ordered:
        return math.nan
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
