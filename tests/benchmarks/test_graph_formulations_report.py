"""``benchmarks/graph_formulations.py``'s tables: ratios against upstream's ops and the op breakdown."""

from __future__ import annotations

from benchmarks.graph_formulations import MODELS, render


def _variant(ms: float, ops: dict[str, int], opset: int, kernels: dict[str, float], file: str) -> dict:
    return {
        "file": file,
        "median_ms": ms,
        "ops": ops,
        "opset": opset,
        "threads": 2,
        "scaled_max_diff": 1.5e-6,
        "kernel_ms_by_op": kernels,
    }


def test_render_gives_speedups_against_upstream_ops_and_every_top_op_per_model():
    results = {
        "finished": "2026-11-30 02:00 UTC",
        "rounds": 9,
        "machine": {"cpu": "Test CPU", "usable_cpus": 2},
        "versions": {"onnxruntime": "1.32.0"},
        "commit": "abc1234",
        "models": {
            "image encoder": {
                "upstream ops": _variant(
                    1000.0, {"Resize": 2, "Tanh": 56}, 18, {"Conv": 500.0, "Resize": 190.0}, "a"
                ),
                "TensorRT source": _variant(800.0, {"Tanh": 56}, 18, {"Conv": 510.0, "Mul": 150.0}, "b"),
                "served": _variant(625.0, {"Gelu": 56}, 20, {"Conv": 505.0, "Gelu": 55.0}, "c"),
            },
            "detector": {
                "upstream ops": _variant(
                    150.0, {"Softmax": 1, "Conv": 60}, 18, {"Conv": 80.0, "Softmax": 35.0}, "d"
                ),
                "served": _variant(
                    120.0, {"Softmax": 1, "Conv": 60}, 18, {"Conv": 80.0, "Softmax": 5.0}, "e"
                ),
            },
        },
    }
    text = render(results)
    assert "| upstream ops | `a` | 18 | 2 / 0 / 56 | 1,000.0 | 1.00x | 1.5e-06 |" in text
    assert "| TensorRT source | `b` | 18 | 0 / 0 / 56 | 800.0 | 1.25x |" in text
    assert "| served | `c` | 20 | 0 / 56 / 0 | 625.0 | 1.60x |" in text
    assert "| served | `e` | 18 | 1 / 0 / 60 | 120.0 | 1.25x |" in text
    for _, variants in MODELS.values():
        assert "| kernel ms per run, by op type | " + " | ".join(variants) + " |" in text
    assert "| Resize | 190.0 | 0.0 | 0.0 |" in text and "| Softmax | 35.0 | 5.0 |" in text
    encoder = text[text.index("**Image encoder**") : text.index("**Detector**")]
    rows = [line.split(" |")[0] for line in encoder.splitlines() if line.startswith("| ")]
    assert rows.index("| Conv") < rows.index("| Resize")  # ordered by the upstream graph's time
