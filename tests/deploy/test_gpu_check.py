"""scripts/gpu_check.py without a GPU: arguments, the report, its test image, what it does without a package,
and the whole check in its ``--device cpu`` mode (small counts) on the suite's seeded random weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "gpu_check.py"


def run_check(tmp_path: Path, *args: str, without: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """The script in a fresh interpreter, its temporary folders in ``tmp_path/tmp``; ``without``: modules
    that cannot be imported there (as if not installed)."""
    scratch = tmp_path / "tmp"
    scratch.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "TMPDIR": str(scratch),
        "YOLO_CONFIG_DIR": str(tmp_path / "yolo"),
        "PYTHONUNBUFFERED": "1",
    }
    code = (
        "import runpy, sys\n"
        f"sys.modules.update(dict.fromkeys({list(without)!r}))\n"  # None in sys.modules: ImportError
        f"sys.argv = {[str(SCRIPT), *args]!r}\n"
        f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def leftovers(tmp_path: Path) -> list[str]:
    """The script's temporary folders still there (torch's exporter keeps caches in TMPDIR: not ours)."""
    return [p.name for p in (tmp_path / "tmp").iterdir() if p.name.startswith("gpu-check-")]


# --------------------------------------------------------------------------------------------- arguments


def test_dry_run_prints_the_plan(gpu_check, tmp_path, capsys):
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path / "r.md")]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert (
        plan["device"] == "cuda"
        and plan["prompt_counts"] == [1, 50, 300]
        and plan["mask_counts"] == [50, 300]
    )
    assert plan["precision_list"] == ["fp32", "tf32", "fp16", "bf16"] and plan["weights"] is None
    assert Path(plan["image"]) == REPO_ROOT / "assets" / "synthetic_scene.png"
    assert not list(tmp_path.iterdir())  # a dry run writes nothing


def test_dry_run_cpu_defaults_and_given_weights(gpu_check, tmp_path, capsys):
    (tmp_path / "l2.pt").write_bytes(b"")
    assert gpu_check.main(["--device", "cpu", "--weights", str(tmp_path), "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["prompt_counts"] == [1, 4] and plan["mask_counts"] == [4, 8] and plan["runs"] == 2
    assert plan["precision_list"] == ["fp32", "bf16"] and plan["weights"] == str(tmp_path)


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
        (["--weights", "/nonexistent"], "missing l2.pt"),
    ],
)
def test_bad_arguments_exit_2(gpu_check, capsys, extra, message):
    assert gpu_check.main(["--dry-run", *extra]) == 2
    assert message in capsys.readouterr().err


def test_file_names_follow_the_loaders(gpu_check):
    from mobilesamv2.fake_checkpoints import FILENAMES
    from mobilesamv2.modeling.checkpoints import ENCODERS

    assert {name: spec.filename for name, spec in ENCODERS.items()} == gpu_check.ENCODER_FILES
    assert set(gpu_check.MODEL_FILES) == {FILENAMES["detector"], FILENAMES["decoder"]}


def test_the_test_image_is_the_projects_synthetic_scene():
    """Shipped, small, and exactly what ``mobilesamv2.assets.synthetic_scene`` draws (no licence question, no
    ultralytics needed to find it)."""
    from mobilesamv2.assets import SCENE_SIZE, synthetic_scene

    path = REPO_ROOT / "assets" / "synthetic_scene.png"
    assert path.stat().st_size < 32 * 2**10
    shipped = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    drawn = synthetic_scene()
    assert drawn.shape == (*SCENE_SIZE, 3) and np.array_equal(shipped, drawn)
    assert len(np.unique(drawn.reshape(-1, 3), axis=0)) > 100  # graded sky and road, not a flat picture


# ---------------------------------------------------------------------------------------------- the report


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
                "check": "discovery",
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
    assert "| discovery | - | skipped | x | - | skipped |" in text
    assert json.loads(text.split("```json\n")[1].split("```")[0]) == report


# --------------------------------------------------------------------------------- what it cannot run


def test_a_missing_required_package_is_one_line_and_exit_2(tmp_path):
    done = run_check(tmp_path, "--device", "cpu", "--out", str(tmp_path / "r.md"), without=("torch", "cv2"))
    assert done.returncode == 2, done.stderr[-2000:]
    assert (
        done.stderr.strip()
        == "gpu_check: missing torch, opencv-python-headless: pip install torch opencv-python-headless"
    )
    assert not (tmp_path / "r.md").exists()


def test_without_ultralytics_it_builds_the_encoder_skips_what_needs_ultralytics_and_finishes(tmp_path):
    """No ultralytics: the EfficientViT checkpoint is built without it, discovery and the decoders are
    skipped with the reason in the report, the encoder and the postprocess (on the embedding's logits) run."""
    out = tmp_path / "report.md"
    done = run_check(
        tmp_path,
        "--device",
        "cpu",
        "--precisions",
        "fp32",
        "--runs",
        "1",
        "--out",
        str(out),
        without=("ultralytics",),
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["verdict"] == "all parity checks ok" and report["errors"] == []
    assert report["settings"]["weights"].startswith("seeded random (seed 0), built in ")
    assert report["environment"]["ultralytics"] == "not installed"
    skipped = {r["check"]: r["value"] for r in report["agreement"] if r["status"] == "skipped"}
    needs = "needs ultralytics (pip install ultralytics)"
    assert skipped == {"discovery": needs, "decoders": needs, "decoder precisions": needs}
    stages = {(r["stage"], r["variant"]) for r in report["latency"]}
    assert ("encoder", "efficientvit_l2") in stages and (
        "postprocess",
        "TorchPostprocessor rle 1080x810",
    ) in stages
    assert not any(stage in ("discovery", "decoder") for stage, _ in stages)
    assert report["settings"]["postprocess_logits"].startswith("the FP32 embedding's first 8 channels")
    identical = next(r for r in report["agreement"] if r["metric"] == "identical RLE")
    assert identical["value"] == "8/8" and identical["status"] == "ok"
    assert not leftovers(tmp_path)


def test_a_failure_midway_still_leaves_a_report(tmp_path):
    """Weights that cannot be loaded: the report exists, with the machine and the error, and the exit status
    says it failed."""
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "l2.pt").write_bytes(b"not a checkpoint")
    out = tmp_path / "report.md"
    done = run_check(
        tmp_path, "--device", "cpu", "--weights", str(weights), "--out", str(out), without=("ultralytics",)
    )
    assert done.returncode == 1
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["environment"]["torch"] and report["errors"][0].startswith("load: ")
    assert "**Result: " in out.read_text() and "parity check(s) failed" in report["verdict"]


# ------------------------------------------------------------------------------------ the whole check, CPU


def test_cpu_mode_end_to_end(fake_weights, tmp_path):
    """The real check on the CPU with the suite's seeded weights: a complete report, every parity "ok",
    and nothing left behind outside tmp_path (temporary folders included)."""
    out = tmp_path / "report" / "gpu_check.md"
    out.parent.mkdir()
    done = run_check(tmp_path, "--device", "cpu", "--weights", str(fake_weights), "--out", str(out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(p.name for p in out.parent.iterdir()) == ["gpu_check.json", "gpu_check.md"]
    assert not leftovers(tmp_path)

    report = json.loads(out.with_suffix(".json").read_text())
    assert report["verdict"] == "all parity checks ok" and report["errors"] == []
    assert (
        report["environment"]["cpu"]
        and report["environment"]["torch"]
        and report["environment"]["ultralytics"]
    )
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
    assert not [r for r in report["agreement"] if r["status"] == "skipped"]
    identical = rows[("postprocess, 8 masks", "identical RLE")]
    assert identical["value"] == "8/8" and identical["against"] == "host, OpenCV's own path"
    assert report["settings"]["postprocess_logits"].startswith("factorized decoder fp32 on ")
    assert rows[("postprocess, 8 masks", "min mask IoU")]["value"] >= 0.999
    assert rows[("decoder factorized N=4", "scaled max diff")]["value"] <= 1e-3
    assert ("encoder bf16", "scaled max diff") in rows and (
        "decoder factorized bf16 N=4",
        "min mask IoU",
    ) in rows

    text = out.read_text()
    assert "**Result: all parity checks ok**" in text and "## Latency" in text and "## Agreement" in text
    assert "| postprocess, 8 masks | host, OpenCV's own path | identical RLE | 8/8 | all | ok |" in text
