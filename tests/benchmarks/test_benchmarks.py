"""The benchmark suite's pure parts, no server: statistics and formatting, publishing into the marked parts
of hand-written Markdown, each script's tables and Targets cells from a summary, and that BENCHMARKS.md shows
what the committed summaries hold."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks import common, e2e, failure_recovery, interactive, memory, overload

SCRIPTS = {"e2e": e2e, "memory": memory, "overload": overload, "interactive": interactive,
           "failure_recovery": failure_recovery}  # fmt: skip
MACHINE = {"cpu": "Test CPU", "cpus": 2, "memory_gib": 8.0, "commit": "abc1234"}


def test_percentile_is_numpys_linear_and_skips_missing_values() -> None:
    assert common.percentile([1, 2, 3, 4], 50) == 2.5
    assert common.percentile(range(1, 11), 95) == pytest.approx(9.55)
    assert common.percentile([10, None, math.nan, 20], 100) == 20
    assert common.median([7]) == 7
    assert math.isnan(common.median([None]))
    with pytest.raises(ValueError, match="percentile"):
        common.percentile([1], 101)


def test_fmt_and_table() -> None:
    assert common.fmt(1234.56, 1) == "1,234.6"
    assert common.fmt(4, 2, " MiB") == "4.00 MiB"
    assert common.fmt(None) == common.fmt(math.nan) == "–"
    assert common.table(["a", "b"], [[1, "x"]]) == "| a | b |\n|---|---|\n| 1 | x |"


def test_provenance_names_what_is_known() -> None:
    line = common.provenance(
        {"finished": "2026-01-02 03:04 UTC", "machine": MACHINE, "command": "python -m x"}
    )
    assert (
        line
        == "Measured 2026-01-02 03:04 UTC on Test CPU (2 CPUs, 8.0 GiB), commit abc1234, by `python -m x`."
    )
    carried = common.provenance({"machine": {"cpu": "x86_64", "commit": "abc1234"}, "published": "def5678"})
    assert carried.startswith("Measured ? on x86_64, commit abc1234 (published in def5678), by")


DOCUMENT = """# Title

Goal: <!-- demo:goal -->old<!-- /demo:goal -->, again <!-- demo:goal -->older<!-- /demo:goal -->.

Hand-written text before.

<!-- demo:start -->
old table
<!-- demo:end -->

Hand-written text after.
"""


def test_publish_fills_the_section_and_values_keeps_the_rest_and_saves_the_summary(tmp_path: Path) -> None:
    out, saved = tmp_path / "BENCHMARKS.md", tmp_path / "demo.json"
    out.write_text(DOCUMENT)
    results = {"machine": MACHINE, "n": 3}
    common.publish("demo", results, lambda r: f"n = {r['n']}", out=out, json_path=saved,
                   values=lambda r: {"goal": f"{r['n']} ms"})  # fmt: skip
    expected = DOCUMENT.replace("old table", "n = 3").replace(">old<", ">3 ms<").replace(">older<", ">3 ms<")
    assert out.read_text() == expected
    summary = json.loads(saved.read_text())
    assert summary["n"] == 3 and summary["finished"]


@pytest.mark.parametrize(
    ("document", "values"),
    [(DOCUMENT.replace("<!-- demo:end -->", ""), None), (DOCUMENT, {"missing": "1"})],
    ids=["section", "value"],
)
def test_publish_refuses_a_missing_marker(tmp_path: Path, document: str, values: dict | None) -> None:
    out = tmp_path / "BENCHMARKS.md"
    out.write_text(document)
    with pytest.raises(KeyError, match="add them where"):
        common.publish("demo", {}, lambda r: "body", out=out, json_path=tmp_path / "demo.json",
                       values=(lambda r: values) if values else None)  # fmt: skip
    assert out.read_text() == document


@pytest.mark.parametrize("name", SCRIPTS)
def test_benchmarks_md_shows_the_committed_summaries(name: str, tmp_path: Path) -> None:
    """Re-rendering a committed summary (``--render``) changes nothing: its tables and cells are current."""
    out = tmp_path / "BENCHMARKS.md"
    out.write_text(common.BENCHMARKS_MD.read_text())
    common.rerender(name, SCRIPTS[name].render, out=out, values=SCRIPTS[name].values)
    section = out.read_text().split(f"<!-- {name}:start -->\n")[1].split(f"<!-- {name}:end -->")[0]
    assert section.startswith("Measured ")
    assert out.read_text() == common.BENCHMARKS_MD.read_text()


# --- each script's derived numbers, from small synthetic summaries ------------------------------------------


def e2e_summary(server_ms: float, reference_ms: float, decoder_peak_mb: float) -> dict:
    def side(ms: float) -> dict:
        return {"masks": 50, "wall_ms": ms, "stages": dict.fromkeys(e2e.SERVER_STAGES, ms / 10)}

    point = {
        "image": "bus.jpg",
        "conf": 0.85,
        "reps": 3,
        "server": side(server_ms),
        "reference": side(reference_ms),
    }
    return {
        "machine": MACHINE,
        "points": [point],
        "encoder": {"server_ms": 105.0, "standalone_ms": 100.0},
        "decoder": {"prompts": 50, "server_ms_per_prompt": 19.0, "standalone_ms_per_prompt": 20.0},
        "peak_rss": {
            "prompts": 300,
            "total_mb": 3000.0,
            "by_process_mb": {"prompt_decoder": decoder_peak_mb},
        },
    }


def test_e2e_targets() -> None:
    met = e2e.values(e2e_summary(100.0, 600.0, 900.0))
    assert met["speedup"] == "6.00x at 50 masks (100 vs 600 ms)"
    assert all(met[k] == "**met**" for k in met if k.endswith("-status"))
    missed = e2e.values(e2e_summary(100.0, 400.0, 2100.0))
    assert missed["speedup-status"] == missed["peak-rss-status"] == "**not met**"
    assert "| total (client wall) | 100.0 | 600.0 |" in e2e.render(e2e_summary(100.0, 600.0, 900.0))


def test_memory_scaling_separates_the_prompts_x_pixels_term() -> None:
    def cell(prompts: int, mp: float, peak: float) -> dict:
        dense = prompts * mp * 1e6 / 2**20
        return {"max_prompts": prompts, "masks": prompts, "megapixels": mp, "peak_mb": peak,
                "dense_masks_mb": dense, "rle_response_mb": prompts * mp / 10}  # fmt: skip

    results = {
        "cells": [cell(1, 1.0, 1000), cell(1, 16.0, 1100), cell(101, 1.0, 1500), cell(101, 16.0, 1630)]
    }
    s = memory.scaling(results)
    assert (s["few_growth_mb"], s["many_growth_mb"], s["term_mb"]) == (100, 130, 30)
    assert s["mb_per_prompt"] == 5.0
    assert s["pixel_share"] == pytest.approx(30 / (101 * 15e6 / 2**20))
    assert memory.values(results)["pixels-status"] == "**met**"


def test_overload_summary_counts_hung_rejected_and_goodput() -> None:
    records = [
        {"t": 0.0, "ms": 1000.0, "outcome": "ok", "masks": 4, "server_ms": 900.0},
        {"t": 1.0, "ms": 1000.0, "outcome": "ok", "masks": 6, "server_ms": 950.0},
        {"t": 1.5, "ms": 2.0, "outcome": "rejected"},
        {"t": 1.6, "ms": 40_000.0, "outcome": "deadline"},
        {"t": 1.7, "ms": 5.0, "outcome": "error", "error": "ServerError: boom"},
        {"outcome": "hung"},
    ]
    s = overload.summarize(records, timeout=30.0)
    assert (s["requests"], s["ok"], s["rejected"], s["deadline"], s["other_errors"]) == (6, 2, 1, 1, 1)
    assert s["hung"] == 2  # never answered, and answered after timeout + 5 s
    assert s["goodput_rps"] == pytest.approx(2 / 41.6)
    assert (s["masks_mean"], s["rejected_p95_ms"], s["errors"]) == (5.0, 2.0, {"ServerError: boom": 1})


def test_interactive_target_met_at_p50_only() -> None:
    row = {"image": "bus.jpg", "size": [1080, 810], "first_ms": 900.0, "first_max_ms": 1000.0,
           "later_p50_ms": 90.0, "later_max_ms": 150.0, "later_clicks": 27}  # fmt: skip
    cells = interactive.values({"rows": [row]})
    assert cells["bus-status"] == "**met at p50**, not at max"
    assert cells["bus"] == "p50 90.0 ms, max 150.0 ms over 27 clicks (first click 900 ms)"


def test_failure_recovery_summary_per_fault() -> None:
    def run(recovery: float, detect: float | None, errors: list[str]) -> failure_recovery.Run:
        return failure_recovery.Run("kill", recovery, detect, 5.0, "stub census", 10, 2, 4.0, errors)

    (row,) = failure_recovery.summarize([run(10.0, 1.0, ["ServerError"]), run(14.0, None, [])])
    assert row["recovery_s"] == {"median": 12.0, "max": 14.0}
    assert row["detect_s"] == {"median": 1.0, "max": 1.0}
    assert (row["failed"], row["sent"], row["errors"], row["runs"]) == (4, 20, ["ServerError"], 2)
    assert failure_recovery.values({"scenarios": [row]})["worst-status"] == "**met**"
