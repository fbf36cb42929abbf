"""scripts/gpu_check.py without a GPU: its argument handling, dry run and pure helpers. The full check runs on
a GPU machine (``--device cpu`` also works here, but takes a minute: not part of the suite)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest


def fake_inputs(tmp_path: Path, gpu_check) -> tuple[Path, Path]:
    repo, weights = tmp_path / "repo", tmp_path / "weights"
    for rel in gpu_check.ONNX_FILES.values():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_bytes(b"")
    weights.mkdir()
    return repo, weights


def test_dry_run_prints_the_plan(gpu_check, tmp_path, capsys):
    repo, weights = fake_inputs(tmp_path, gpu_check)
    assert gpu_check.main(["--weights", str(weights), "--repo", str(repo), "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["prompts"] == [1, 32, 300] and plan["device"] == "cuda"
    assert plan["onnx"]["decoder"] == str(repo / "prompt_decoder/1/model.onnx")


def test_missing_inputs_exit_2(gpu_check, tmp_path, capsys):
    repo, weights = fake_inputs(tmp_path, gpu_check)
    (repo / gpu_check.ONNX_FILES["encoder"]).unlink()
    assert gpu_check.main(["--weights", str(weights), "--repo", str(repo), "--dry-run"]) == 2
    assert "image_encoder/1/model.onnx" in capsys.readouterr().err


def test_parity_measures(gpu_check):
    expected = np.array([[10.0, -20.0]])
    assert gpu_check.scaled_max_diff(expected, expected + 0.02) == pytest.approx(0.001)
    assert gpu_check.scaled_max_diff(expected, expected[:, :1]) == float("inf")
    a = np.full((2, 4, 4), -1.0)
    a[0, :2] = 1.0
    b = a.copy()
    b[0, 0] = -1.0  # prompt 0 loses half its mask, prompt 1 stays empty
    assert gpu_check.mask_agreement(a, b) == pytest.approx(0.5)
    assert gpu_check.mask_agreement(a, a) == 1.0


def test_table(gpu_check):
    rows = [
        {
            "stage": "decoder N=300",
            "max_diff": 1e-4,
            "mask_iou": 0.9991,
            "torch_ms": 12.3,
            "onnx_ms": 8.9,
            "ok": True,
        },
        {
            "stage": "encoder",
            "max_diff": 0.2,
            "mask_iou": None,
            "torch_ms": 20.0,
            "onnx_ms": 15.0,
            "ok": False,
        },
    ]
    table = gpu_check.format_table(rows).splitlines()
    assert table[0].split() == ["stage", "max", "diff", "mask", "IoU", "torch", "ms", "onnx", "ms", "ok"]
    assert table[2].split()[-1] == "yes" and table[3].split()[-1] == "NO"
