"""The benchmark report from a synthetic results file: target verdicts, every section's table, the GPU section
that docs/deploy.md points to, the plot, and ``--render`` (no measuring, no server)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # `benchmarks` is not installed; it lives at the repository root
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import report
from benchmarks.run import main


def stages(**kw: float) -> dict[str, float]:
    return {
        "decode_image": 5.0,
        "encoder": 1300.0,
        "discovery": 500.0,
        "nms": 1.0,
        "decoder": 600.0,
        "postprocess": 100.0,
        "total": 2100.0,
        **kw,
    }


def e2e_row(
    conf: float, masks: int, server: list[float], reference: list[float], decoder: float = 600.0, peak=None
) -> dict:
    return {
        "image": "bus.jpg",
        "conf": conf,
        "server_wall_ms": server,
        "server_stages": [stages(decoder=decoder) for _ in server],
        "server_masks": masks,
        "reference_wall_ms": reference,
        "reference_stages": [stages(total=r) for r in reference],
        "reference_masks": masks,
        "peak_rss_mb": peak,
        "peak_rss_by_process_mb": {"prompt_decoder": 900.0, "tritonserver": 700.0} if peak else None,
    }


def attached() -> dict:
    def phase(ok: int, rejected: int, hung: int = 0) -> dict:
        return {
            "summary": {
                "requests": ok + rejected + hung,
                "ok": ok,
                "rejected": rejected,
                "deadline": 0,
                "other_errors": 0,
                "errors": {},
                "hung": hung,
                "goodput_rps": 0.6,
                "ok_p50_ms": 5000.0,
                "ok_p95_ms": 9000.0,
                "rejected_p50_ms": 3.0,
                "rejected_p95_ms": 8.0,
            },
            "seconds": 300.0,
            "rate": 1.2,
        }

    clicks = [{"ms": 2500.0}] + [{"ms": 60.0 + i} for i in range(9)]
    return {
        "overload": {
            "overload": phase(180, 180),
            "soak": {**phase(360, 0), "seconds": 600.0, "rss": {"start_mb": 3000.0, "end_mb": 3100.0}},
        },
        "interactive": {
            "images": {
                "zidane.jpg": [{"clicks": clicks}],
                "bus.jpg": [{"clicks": [*clicks[:-1], {"ms": 150.0}]}],
            }
        },
    }


def results() -> dict:
    memory_cells = []
    for prompts in (1, 300):
        for side, mp in ((640, 0.3), (5120, 19.7)):
            memory_cells.append(
                {
                    "max_prompts": prompts,
                    "masks": prompts,
                    "side": side,
                    "size": [side, side * 3 // 4],
                    "megapixels": mp,
                    "before_mb": 3000.0,
                    "peak_mb": 3000.0 + 2 * prompts + (40.0 if side == 5120 else 0.0),
                    "growth_mb": 2 * prompts,
                    "request_growth_mb": 1.0,
                    "dense_equivalent_mb": prompts * mp * 1e6 / 2**20,
                    "wall_ms": 1000.0,
                    "server_ms": {},
                    "by_process_peak_mb": {},
                }
            )
    level = {
        "requests": 10,
        "failures": 0,
        "throughput_rps": 0.5,
        "p50_ms": 2000.0,
        "p95_ms": 2500.0,
        "p99_ms": 2600.0,
        "mean_ms": 2100.0,
        "masks_mean": 13.0,
        "server_total_ms_p50": 1900.0,
        "passes": [],
    }
    return {
        "meta": {
            "command": ".venv/bin/python -m benchmarks.run --quick",
            "quick": True,
            "finished": "2026-11-26 20:00 UTC",
            "duration_s": 600.0,
            "machine": {
                "cpu": "AMD EPYC",
                "logical_cpus": 2,
                "usable_cpus": 2,
                "memory_gib": 23.5,
                "os": "Linux",
                "accelerator": "none (CPU only)",
            },
            "versions": {"python": "3.11.7", "torch": "2.x"},
            "commit": "abc1234",
            "model_repository": "repo",
            "weights_dir": "w",
            "weights": "fake",
            "encoder": "efficientvit_l2",
            "results_json": "r.json",
            "section_seconds": {"decoder": 120.0},
        },
        "decoder": {
            "rows": [
                {
                    "image": "bus.jpg",
                    "size": [1080, 810],
                    "box_prompts": 300,
                    "box_masks": 300,
                    "box_ms": [24000.0, 26000.0],
                    "grid_ms": [90000.0],
                    "grid_total_ms": [95000.0],
                    "grid_points": 1024,
                    "grid_masks": 3072,
                    "grid_kept": 5,
                },
                {
                    "image": "zidane.jpg",
                    "size": [720, 1280],
                    "box_prompts": 10,
                    "box_masks": 10,
                    "box_ms": [800.0],
                    "grid_ms": [],
                    "grid_total_ms": [],
                },
            ]
        },
        "e2e": {
            "rows": [
                e2e_row(0.955, 11, [1500.0, 1700.0], [3000.0, 3100.0]),
                e2e_row(0.85, 49, [2000.0, 2200.0], [11000.0, 10000.0], decoder=600.0),
                e2e_row(0.4, 300, [10000.0, 12000.0], [20000.0, 22000.0], peak=3000.0),
            ],
            "encoder_standalone": {"ms": [1240.0, 1250.0, 1260.0], "median_ms": 1250.0, "threads": 2},
            "decoder_standalone": {
                "prompts": 49,
                "ms_per_prompt": 11.0,
                "slice_rows": 16,
                "peak_rss_gib": 1.2,
            },
        },
        "concurrency": {
            "max_prompts": 16,
            "run_time": "30s",
            "passes": 1,
            "levels": [{"users": u, **level} for u in (1, 2, 4, 8)],
        },
        "soak": {
            "users": 4,
            "run_time": "60s",
            "max_prompts": 16,
            "report": "x.html",
            "command": [],
            "summary": {
                "requests": 30,
                "failures": 0,
                "throughput_rps": 0.5,
                "p50_ms": 2000.0,
                "p95_ms": 3000.0,
                "p99_ms": 3100.0,
            },
        },
        "memory": {
            "idle_fresh_mb": 2500.0,
            "idle_warm_mb": 3000.0,
            "conf": 0.05,
            "processes": ["tritonserver"],
            "cells": memory_cells,
        },
    }


def test_targets_are_judged_from_medians():
    rows = {row[0].split(" (")[0]: row for row in report.target_rows(results())}
    e2e = rows["SegEvery through Triton vs in-process reference"]
    assert "49 masks" in report.target_rows(results())[0][0]  # the point nearest 50 boxes
    assert e2e[2].startswith("5.00x") and e2e[3] == "**met**"  # 10500 / 2100
    encoder = rows["Encoder in the server vs standalone ONNX Runtime"]
    assert "+4.0%" in encoder[2] and encoder[3] == "**met**"  # 1300 vs 1250
    decoder_call = rows["Decoder in the server, ms per prompt"]
    assert decoder_call[2].startswith("12.2 ms/prompt") and decoder_call[3] == "**met**"  # 600 / 49
    peak = rows["Server peak RSS during a 300-prompt call"]
    assert "prompt_decoder process 900 MB" in peak[2] and peak[3] == "**met**"
    decoder = rows["Decoder work, box prompts vs 32x32 grid"]
    assert (
        decoder[2].startswith("3.6x less time") and "10.2x fewer masks" in decoder[2]
    )  # 90000 / 25000, 3072/300
    assert decoder[3] == "**not met** (45% of target)"
    memory = rows["Server RSS grows with prompts, not prompts x pixels"]
    assert memory[3] == "**met**" and "adds 40 MB at 1 prompt(s), 40 MB at 300" in memory[2]
    soak = rows["Locust soak, 4 users, max_prompts 16"]
    assert soak[3] == "**met** (only 60s: quick run)"


def test_slow_points_are_not_met_with_their_fraction():
    data = results()
    data["e2e"]["rows"][1]["reference_wall_ms"] = [4200.0, 4200.0]  # 2x at 49 masks
    row = next(r for r in report.target_rows(data) if r[0].startswith("SegEvery"))
    assert row[3] == "**not met** (40% of target)"
    data["e2e"]["rows"][1]["server_stages"] = [stages(decoder=1470.0)]  # 30 ms per prompt
    row = next(r for r in report.target_rows(data) if r[0].startswith("Decoder in the server"))
    assert row[3] == "**not met** (67% of target)"


def test_attached_overload_and_interactive_targets():
    data = {**results(), "attached": attached()}
    rows = {row[0].split(" (")[0]: row for row in report.target_rows(data)}
    assert rows["No hung request at 2x capacity"][3] == "**met**"
    assert rows["Overload refused fast"][3] == "**met**" and "p95 8.0 ms" in rows["Overload refused fast"][2]
    assert rows["Soak at capacity, 10 min"][3] == "**met**" and "+3.3%" in rows["Soak at capacity, 10 min"][2]
    clicks = [r for r in report.target_rows(data) if r[0].startswith("Interactive")]
    assert clicks[0][3] == "**met**" and "max 68.0 ms" in clicks[0][2]
    assert clicks[1][3] == "**met at p50**, not at max"
    hung = attached()
    hung["overload"]["overload"] = {**hung["overload"]["overload"]}
    hung["overload"]["overload"]["summary"] = {**hung["overload"]["overload"]["summary"], "hung": 1}
    row = next(r for r in report.target_rows({**results(), "attached": hung}) if r[0].startswith("No hung"))
    assert row[3] == "**not met**"


def test_before_after_pairs_points_by_mask_count():
    data = results()
    old = {"rows": [e2e_row(0.955, 10, [4000.0], [3000.0]), e2e_row(0.85, 50, [6000.0], [11000.0])]}
    data["baseline"] = {"e2e": old, "run": None, "commands": ["cd work/baseline && ..."]}
    text = report.render_markdown(data, None)
    assert "### 2b. Before / after" in text and "cd work/baseline && ..." in text
    assert "| bus.jpg, conf 0.85 | 50 / 49 | 6,000 / 2,100 | 2.86x |" in text


def test_grid_less_rows_have_no_decoder_verdict():
    assert all(
        "zidane" not in row[0] for row in report.target_rows(results()) if row[0].startswith("Decoder")
    )
    assert math.isnan(report.decoder_ratios(results()["decoder"]["rows"][1])["time_ratio"])


def test_memory_verdict_fails_when_memory_tracks_prompts_times_pixels():
    data = results()
    for cell in data["memory"]["cells"]:
        cell["peak_mb"] = 3000.0 + cell["dense_equivalent_mb"]
    assert report.memory_verdict(data["memory"])["pixel_share"] == pytest.approx(1.0, rel=0.01)


def test_markdown_has_every_section_and_the_gpu_placeholder():
    text = report.merge_into("", report.render_markdown(results(), "docs/benchmarks.png"))
    assert text.startswith("# Benchmarks\n")
    for heading in (
        "### Targets",
        "### 1. Decoder cost",
        "### 2. End to end",
        "### 3. Throughput and latency",
        "#### Soak",
        "### 4. Peak memory",
        "## GPU (NVIDIA, TensorRT)",
        "### Machine and versions",
    ):
        assert heading in text, heading
    assert "Not yet measured" in text.split("## GPU (NVIDIA, TensorRT)")[1]
    assert "![benchmarks](docs/benchmarks.png)" in text
    assert ".venv/bin/python -m benchmarks.run --quick" in text
    assert "transport + client" in text  # the per-stage breakdown
    assert "| encoder (EfficientViT-L2, batch 1), ms | 1,300.0 | 1,250.0 | +4.0% |" in text


def test_merge_keeps_other_sections_and_replaces_its_own():
    other = "<!-- ort-tuning:start -->\n## ONNX Runtime session options\n| a |\n<!-- ort-tuning:end -->\n"
    first = report.merge_into("# Benchmarks\n\n" + other, report.START + "\nold numbers\n" + report.END)
    assert first.startswith("# Benchmarks\n\n" + report.START) and other in first
    assert first.count("## GPU (NVIDIA, TensorRT)") == 1
    second = report.merge_into(first, report.START + "\nnew numbers\n" + report.END)
    assert "new numbers" in second and "old numbers" not in second and other in second
    assert second.count("## GPU (NVIDIA, TensorRT)") == 1 and second.count("# Benchmarks") == 1
    measured = second.replace("Not yet measured.", "H100: 40 ms.")
    assert "Not yet measured" not in report.merge_into(measured, report.START + "\nx\n" + report.END)


def test_render_from_json_writes_markdown_and_png(tmp_path):
    data = results()
    data["decoder"]["rows"][1]["grid_ms"] = []
    path = tmp_path / "results.json"
    path.write_text(json.dumps(data))
    out, png = tmp_path / "B.md", tmp_path / "docs" / "plot.png"
    assert main(["--render", str(path), "--out", str(out), "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![benchmarks](docs/plot.png)" in out.read_text()


def test_unknown_section_is_refused(capsys):
    assert main(["--sections", "decoder,gpu"]) == 2
    assert "unknown sections" in capsys.readouterr().err
