"""``benchmarks/encoder_graph.py``'s table: ratios against the upstream graph and the op breakdown."""

from __future__ import annotations

from benchmarks.encoder_graph import VARIANTS, render


def _variant(ms: float, ops: dict[str, int], opset: int, kernels: dict[str, float]) -> dict:
    return {
        "median_ms": ms,
        "ops": ops,
        "opset": opset,
        "threads": 2,
        "bus_scaled_max_diff": 1.5e-6,
        "kernel_ms_by_op": kernels,
    }


def test_render_gives_speedups_against_upstream_ops_and_every_top_op():
    results = {
        "finished": "2026-11-30 02:00 UTC",
        "rounds": 9,
        "machine": {"cpu": "Test CPU", "usable_cpus": 2},
        "versions": {"onnxruntime": "1.32.0"},
        "commit": "abc1234",
        "variants": {
            "upstream ops": _variant(1000.0, {"Resize": 2, "Tanh": 56}, 18, {"Conv": 500.0, "Resize": 190.0}),
            "TensorRT source": _variant(800.0, {"Tanh": 56}, 18, {"Conv": 510.0, "Mul": 150.0}),
            "served": _variant(625.0, {"Gelu": 56}, 20, {"Conv": 505.0, "Gelu": 55.0}),
        },
    }
    text = render(results)
    assert "| upstream ops | 18 | 2 / 0 / 56 | 1,000.0 | 1.00x | 1.5e-06 |" in text
    assert "| TensorRT source | 18 | 0 / 0 / 56 | 800.0 | 1.25x |" in text
    assert "| served | 20 | 0 / 56 / 0 | 625.0 | 1.60x |" in text
    assert "| op | " + " | ".join(VARIANTS) + " |" in text
    assert "| Resize | 190.0 | 0.0 | 0.0 |" in text and "| Gelu | 0.0 | 0.0 | 55.0 |" in text
    rows = [line.split(" |")[0] for line in text.splitlines() if line.startswith("| ") and "ms" not in line]
    assert rows.index("| Conv") < rows.index("| Resize")  # ordered by the upstream graph's time
