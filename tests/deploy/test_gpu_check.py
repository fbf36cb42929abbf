"""scripts/gpu_check.py without a GPU: arguments, dry run, the pure helpers, the report, and the whole check
in its ``--device cpu`` mode (small counts, about 40 s here) on the session's seeded random weights."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "gpu_check.py"


def official_files(folder: Path, gpu_check, encoder: str = "efficientvit_l2") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in (*gpu_check.MODEL_FILES, gpu_check.ENCODER_FILES[encoder]):
        (folder / name).write_bytes(b"")
    return folder


# --------------------------------------------------------------------------------------------- arguments


def test_dry_run_prints_the_plan(gpu_check, tmp_path, capsys):
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path / "r.md")]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["device"] == "cuda" and plan["prompts"] == [1, 50, 300] and plan["masks"] == [50, 300]
    assert plan["agreement"]["precisions"] == ["fp32", "tf32", "fp16", "bf16"]
    assert plan["weights"].startswith("seeded random weights")
    assert plan["out"] == [str(tmp_path / "r.md"), str(tmp_path / "r.json")]
    assert plan["device_command"] == gpu_check.DEVICE_COMMAND
    assert not list(tmp_path.iterdir())  # a dry run writes nothing


def test_dry_run_cpu_defaults_and_given_weights(gpu_check, tmp_path, capsys):
    weights = official_files(tmp_path / "w", gpu_check)
    assert gpu_check.main(["--device", "cpu", "--weights", str(weights), "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["prompts"] == [1, 4] and plan["masks"] == [4, 8] and plan["runs"] == 2
    assert plan["agreement"]["precisions"] == ["fp32", "bf16"] and plan["weights"] == str(weights)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--prompts", "1,x"], "--prompts"),
        (["--masks", "0,5"], "--masks"),
        (["--precisions", "fp16,bf16"], "must include fp32"),
        (["--precisions", "fp32,fp8"], "unknown fp8"),
        (["--device", "cpu", "--precisions", "fp32,tf32"], "CUDA only"),
        (["--runs", "0"], "--runs"),
        (["--image", "/nonexistent/bus.jpg"], "no such file"),
        (["--out", "/nonexistent/folder/r.md"], "does not exist"),
    ],
)
def test_bad_arguments_exit_2(gpu_check, capsys, extra, message):
    assert gpu_check.main(["--dry-run", *extra]) == 2
    assert message in capsys.readouterr().err


def test_missing_weight_files_exit_2(gpu_check, tmp_path, capsys):
    weights = official_files(tmp_path / "w", gpu_check)
    (weights / "l2.pt").unlink()
    assert gpu_check.main(["--weights", str(weights), "--dry-run"]) == 2
    assert "missing l2.pt" in capsys.readouterr().err


def test_file_names_follow_the_loaders(gpu_check):
    from mobilesamv2.fake_checkpoints import FILENAMES
    from mobilesamv2.modeling.checkpoints import ENCODERS

    assert {name: spec.filename for name, spec in ENCODERS.items()} == gpu_check.ENCODER_FILES
    assert set(gpu_check.MODEL_FILES) == {FILENAMES["detector"], FILENAMES["decoder"]}


def test_the_documented_device_command_is_the_one_printed(gpu_check):
    """The docstring shows DEVICE_COMMAND with shell continuations; joined, they are the same command."""
    doc = gpu_check.__doc__
    block = doc[doc.index("    python3 -m pip install") :].split("\n\n")[0]
    joined = re.sub(r"\s*\\\n\s*", " ", block.strip())
    assert joined == gpu_check.DEVICE_COMMAND
    assert "--device cuda --out $OUT/gpu_check.md" in gpu_check.DEVICE_COMMAND
    assert (
        "PYTHONUNBUFFERED=1" in gpu_check.DEVICE_COMMAND and "--target /tmp/site" in gpu_check.DEVICE_COMMAND
    )
    assert 'carry: [".whl"]' in doc and "ultralytics==8.4.190" in doc


# ----------------------------------------------------------------------------------------------- helpers


def test_parity_measures(gpu_check):
    expected = np.array([[10.0, -20.0]])
    assert gpu_check.scaled_max_diff(expected, expected + 0.02) == pytest.approx(0.001)
    assert gpu_check.scaled_max_diff(expected, expected[:, :1]) == float("inf")
    assert gpu_check.scaled_max_diff(expected, np.array([[np.nan, -20.0]])) == float("inf")
    a = np.full((2, 4, 4), -1.0)
    a[0, :2] = 1.0
    b = a.copy()
    b[0, 0] = -1.0  # prompt 0 loses half its mask, prompt 1 stays empty
    assert gpu_check.mask_agreement(a, b) == pytest.approx(0.5)
    assert gpu_check.mask_agreement(a, a) == 1.0
    np.testing.assert_allclose(gpu_check.mask_ious(a > 0, b > 0), [0.5, 1.0])  # booleans as they are
    assert gpu_check.nonfinite(np.array([1.0, np.nan, np.inf, -np.inf])) == 3


def test_timed_counts_warmups_runs_and_syncs(gpu_check):
    calls, syncs = [], []
    result = gpu_check.timed(lambda: calls.append(1), runs=3, sync=lambda: syncs.append(1), warmup=2)
    assert len(calls) == len(syncs) == 5 and result["runs"] == 3
    assert 0 <= result["min_ms"] <= result["median_ms"]


def test_statuses_and_verdict(gpu_check):
    status = gpu_check._status
    assert (status(True, parity=True), status(False, parity=True)) == ("ok", "FAIL")
    assert (status(True, parity=False), status(False, parity=False)) == ("info", "warn")
    assert status(False, parity=False, strict=True) == "FAIL"
    rows = [{"status": s} for s in ("ok", "info", "warn", "skipped", "FAIL", "error")]
    assert [r["status"] for r in gpu_check.parity_failures({"agreement": rows})] == ["FAIL", "error"]


def test_report_markdown(gpu_check):
    report = {
        "environment": {"gpu": "NVIDIA H200", "driver": "580.159.03"},
        "settings": {"runs": 20, "prompts": [1, 50, 300]},
        "latency": [
            {
                "stage": "decoder",
                "variant": "factorized",
                "precision": "fp16",
                "n": 300,
                "median_ms": 12.345,
                "min_ms": 12.0,
                "per_item_ms": 0.04115,
                "runs": 20,
            }
        ],
        "agreement": [
            {
                "check": "postprocess",
                "against": "host",
                "metric": "min mask IoU",
                "value": 0.9999951,
                "limit": ">= 0.999",
                "status": "ok",
            },
            {
                "check": "onnx",
                "against": "-",
                "metric": "skipped",
                "value": "x",
                "limit": None,
                "status": "skipped",
            },
        ],
        "errors": [],
        "verdict": "all parity checks ok",
    }
    text = gpu_check.format_report(report)
    assert text.startswith("# GPU check: NVIDIA H200")
    assert "**Result: all parity checks ok**" in text
    assert "| decoder | factorized | fp16 | 300 | 12.35 | 12.00 | 0.04115 | 20 |" in text
    assert "| postprocess | host | min mask IoU | 0.999995 | >= 0.999 | ok |" in text
    assert "| onnx | - | skipped | x | - | skipped |" in text
    assert json.loads(text.split("```json\n")[1].split("```")[0]) == report


# ------------------------------------------------------------------------------------ the whole check, CPU


def test_cpu_mode_end_to_end(fake_weights, tmp_path):
    """The real check on the CPU with the session's seeded weights: a complete report, every parity "ok",
    and nothing left behind outside tmp_path (temporary folders included)."""
    out, scratch = tmp_path / "report" / "gpu_check.md", tmp_path / "tmp"
    out.parent.mkdir()
    scratch.mkdir()
    env = {
        **os.environ,
        "TMPDIR": str(scratch),
        "YOLO_OFFLINE": "1",
        "YOLO_CONFIG_DIR": str(tmp_path / "yolo"),
        "PYTHONUNBUFFERED": "1",
    }
    command = [
        sys.executable,
        str(SCRIPT),
        "--device",
        "cpu",
        "--weights",
        str(fake_weights),
        "--out",
        str(out),
    ]
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(p.name for p in out.parent.iterdir()) == ["gpu_check.json", "gpu_check.md"]
    # The script's temporary folders (weights, ONNX export) are gone; torch's exporter keeps caches in TMPDIR,
    # which is inside tmp_path here.
    assert not [p.name for p in scratch.iterdir() if p.name.startswith("gpu-check-")]

    report = json.loads(out.with_suffix(".json").read_text())
    assert report["verdict"] == "all parity checks ok" and report["errors"] == []
    assert report["environment"]["cpu"] and report["environment"]["torch"]
    latency = {(r["stage"], r["variant"], r["precision"], r["n"]) for r in report["latency"]}
    assert ("discovery", "letterbox 1024x768", "fp32", 1) in latency
    assert {("encoder", "efficientvit_l2", p, 1) for p in ("fp32", "bf16")} <= latency
    for name in ("plain", "factorized"):
        assert {
            ("decoder", name, "fp32", 1),
            ("decoder", name, "fp32", 4),
            ("decoder", name, "bf16", 4),
        } <= latency
    for n in (4, 8):
        assert ("postprocess", "TorchPostprocessor rle 1080x810", "fp32", n) in latency
        assert ("postprocess", "HostPostprocessor rle 1080x810 (CPU)", "fp32", n) in latency
    assert all(r["median_ms"] > 0 for r in report["latency"])

    rows = {(r["check"], r["metric"]): r for r in report["agreement"]}
    parity = [r for r in report["agreement"] if r["status"] in ("ok", "FAIL", "error")]
    assert parity and all(r["status"] == "ok" for r in parity)
    identical = rows[("postprocess, 8 real masks", "identical RLE")]
    assert identical["value"] == "8/8" and identical["against"] == "host, OpenCV's own path"
    assert rows[("postprocess, 8 real masks", "min mask IoU")]["value"] >= 0.999
    assert rows[("decoder factorized N=4", "scaled max diff")]["value"] <= 1e-3
    assert ("encoder bf16", "scaled max diff") in rows and (
        "decoder factorized bf16 N=4",
        "min mask IoU",
    ) in rows
    onnx = [r for r in report["agreement"] if "ONNX Runtime" in r["check"]]
    assert onnx and all(r["status"] in ("ok", "skipped") for r in onnx)

    text = out.read_text()
    assert "**Result: all parity checks ok**" in text and "## Latency" in text and "## Agreement" in text
    assert "| postprocess, 8 real masks | host, OpenCV's own path | identical RLE | 8/8 | all | ok |" in text
