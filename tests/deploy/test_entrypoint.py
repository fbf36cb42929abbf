"""The container entrypoint's decisions (engine cache hit / miss / rebuild), the commands it runs and its
check of every engine against ONNX Runtime, with the GPU, trtexec and tritonserver replaced by test doubles
(the "engines" are small ONNX graphs run by ONNX Runtime behind a fake ``trtexec --loadEngine``)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from tiny_engines import FakeTrtexecInference, decoder_onnx, encoder_onnx

from mobilesamv2.export import tensorrt
from mobilesamv2.export.gpu import write_gpu_repository
from mobilesamv2.runner import entrypoint

A100 = "NVIDIA A100-SXM4-80GB, 8.0\n"
L4 = "NVIDIA L4, 8.9\n"
TRT_10_5 = "&&&& RUNNING TensorRT.trtexec [TensorRT v100500] # trtexec --help\n=== Model Options ===\n"
TRT_10_6 = TRT_10_5.replace("v100500", "v100600")


class FakeMachine:
    """nvidia-smi, trtexec (builds and inference) and the run of tritonserver, recording what the entrypoint
    asks for."""

    def __init__(
        self,
        gpus: str = A100,
        trt_banner: str = TRT_10_5,
        build_rc: int = 0,
        inference: FakeTrtexecInference | None = None,
    ) -> None:
        self.gpus, self.trt_banner, self.build_rc = gpus, trt_banner, build_rc
        self.inference = inference or FakeTrtexecInference()
        self.queries: list[list[str]] = []
        self.builds: list[list[str]] = []
        self.exec_args: list[str] | None = None

    def run_query(self, command):
        self.queries.append(list(command))
        if command[0] == "nvidia-smi":
            if self.gpus is None:
                raise FileNotFoundError("nvidia-smi")
            return subprocess.CompletedProcess(command, 0, self.gpus, "")
        if any(arg.startswith("--loadEngine=") for arg in command):
            return self.inference(command)
        if command[-1] == "--help":
            return subprocess.CompletedProcess(command, 1, self.trt_banner, "")
        return subprocess.CompletedProcess(command, 1, "", "ModuleNotFoundError: No module named 'tensorrt'")

    def run_build(self, command):
        self.builds.append(list(command))
        if self.build_rc == 0:
            plan = Path(next(a for a in command if a.startswith("--saveEngine=")).split("=", 1)[1])
            plan.write_bytes(b"engine for " + command[1].encode())
        return subprocess.CompletedProcess(command, self.build_rc)

    def which(self, name):
        return "/usr/src/tensorrt/bin/trtexec" if name.endswith("trtexec") else None

    def run_server(self, command):
        self.exec_args = list(command)
        return 0


@pytest.fixture()
def layout(tmp_path, committed_repository):
    repo = tmp_path / "models"
    write_gpu_repository(committed_repository, repo)
    encoder_onnx(repo / "image_encoder" / "1" / "model.onnx")
    decoder_onnx(repo / "prompt_decoder" / "1" / "model.onnx")
    return {"repo": repo, "cache": tmp_path / "cache", "runtime": tmp_path / "runtime"}


def start(layout, machine, *extra, environ=None, shm=8 * 2**30):
    argv = [
        "--model-repository",
        str(layout["repo"]),
        "--engine-cache",
        str(layout["cache"]),
        "--runtime-repository",
        str(layout["runtime"]),
        *extra,
    ]
    return entrypoint.main(
        argv,
        run_query=machine.run_query,
        run_build=machine.run_build,
        which=machine.which,
        start_server=machine.run_server,
        environ=environ or {},
        shm_available=lambda: shm,
    )


def dry_run(layout, machine, capsys, *extra) -> dict:
    capsys.readouterr()  # drop what earlier starts printed
    assert start(layout, machine, "--dry-run", *extra) == 0
    return json.loads(capsys.readouterr().out)


def test_dry_run_on_an_empty_cache_plans_a_build_per_tensorrt_model(layout, capsys):
    machine = FakeMachine()
    plan = dry_run(layout, machine, capsys, "--log-verbose=1")
    assert plan["gpu"] == {"name": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0"}
    assert plan["tensorrt"] == "10.5.0"
    assert [(e["model"], e["state"], e["action"]) for e in plan["engines"]] == [
        ("image_encoder", "miss", "build"),
        ("prompt_decoder", "miss", "build"),
    ]
    encoder = plan["engines"][0]
    assert encoder["key"].startswith("nvidia-a100-sxm4-80gb_sm80_trt10.5.0_")
    command = encoder["command"]
    assert command[:2] == [
        "/usr/src/tensorrt/bin/trtexec",
        f"--onnx={layout['repo']}/image_encoder/1/model.onnx",
    ]
    assert f"--saveEngine={layout['cache']}/image_encoder/{encoder['key']}/model.plan" in command
    # the encoder is FP32 with TF32 math by default: no FP16, no per-layer constraints
    assert not any(a.startswith(("--fp16", "--precisionConstraints", "--layerPrecisions")) for a in command)
    assert "--minShapes=image:1x1024x1024x3,image_size:1x2" in command
    assert "--maxShapes=image:4x1024x1024x3,image_size:4x2" in command
    assert any(a.startswith("--timingCacheFile=") for a in command)
    decoder = plan["engines"][1]["command"]
    # FP16 with its LayerNorm in FP32; up to 32 points per prompt plus SAM's padding point
    assert {"--fp16", "--precisionConstraints=prefer", "--layerPrecisions=node_layer_norm:fp32"} <= set(
        decoder
    )
    assert "--maxShapes=image_embeddings:1x256x64x64,point_coords:320x33x2,point_labels:320x33" in decoder
    assert plan["verification"]["tolerances"] == {
        "max_scaled_diff_fp32": 0.01,
        "max_scaled_diff_fp16": 0.05,
        "min_mask_iou": 0.95,
        "max_mask_disagreement": 0.005,
        "min_mask_area": 0.01,
    }
    pool = plan["memory"]["cuda_pool_bytes_per_gpu"]
    apis = "shared-memory,model-repository,model-config,logging,trace,statistics"
    assert plan["tritonserver"] == [
        "tritonserver",
        f"--model-repository={layout['runtime']}",
        "--http-port=8000",
        "--grpc-port=8001",
        "--metrics-port=8002",
        "--allow-metrics=true",
        "--allow-gpu-metrics=true",
        "--exit-timeout-secs=30",
        f"--cuda-memory-pool-byte-size=0:{pool}",
        f"--pinned-memory-pool-byte-size={pool}",
        # locked down by default: no model control, management APIs behind a (here random) key, never shown
        "--model-control-mode=none",
        f"--http-restricted-api={apis}:mobilesamv2-admin-key=***",
        f"--grpc-restricted-protocol={apis}:mobilesamv2-admin-key=***",
        "--log-verbose=1",
    ]
    assert "locked with a random key" in plan["security"][0]
    assert machine.builds == [] and not layout["cache"].exists() and machine.exec_args is None


def test_first_start_builds_then_serves_a_runtime_repository(layout):
    machine = FakeMachine()
    assert start(layout, machine) == 0
    assert len(machine.builds) == 2
    runtime = layout["runtime"]
    for model in ("image_encoder", "prompt_decoder"):
        plan_link = runtime / model / "1" / "model.plan"
        assert plan_link.is_symlink() and plan_link.read_bytes().startswith(b"engine for --onnx=")
        entry = plan_link.resolve().parent
        meta = json.loads((entry / "engine.json").read_text())
        assert (meta["gpu_name"], meta["compute_capability"], meta["tensorrt_version"]) == (
            "NVIDIA A100-SXM4-80GB",
            "8.0",
            "10.5.0",
        )
        config = (runtime / model / "config.pbtxt").read_text()
        assert 'platform: "tensorrt_plan"' in config and "engine_build_" not in config
        assert not (runtime / model / "1" / "model.onnx").exists()
    for model in ("object_discovery", "segment_everything"):  # served from the source repository as they are
        assert (runtime / model).is_symlink() and (runtime / model).resolve() == (
            layout["repo"] / model
        ).resolve()
    assert not list(layout["cache"].glob("*/.tmp-*"))  # no scratch left behind
    assert machine.exec_args[:2] == ["tritonserver", f"--model-repository={runtime}"]


def test_second_start_reuses_the_cache(layout, capsys):
    start(layout, FakeMachine())
    machine = FakeMachine()
    assert start(layout, machine) == 0
    assert machine.builds == [] and machine.exec_args is not None
    plan = dry_run(layout, FakeMachine(), capsys)
    assert [(e["state"], e["action"], e["command"]) for e in plan["engines"]] == [("hit", "reuse", [])] * 2


@pytest.mark.parametrize("change", ["gpu", "tensorrt", "onnx", "build settings"])
def test_a_different_gpu_tensorrt_onnx_or_build_is_a_miss(layout, capsys, change):
    start(layout, FakeMachine())
    machine = FakeMachine(
        gpus=L4 if change == "gpu" else A100, trt_banner=TRT_10_6 if change == "tensorrt" else TRT_10_5
    )
    if change == "onnx":
        encoder_onnx(layout["repo"] / "image_encoder" / "1" / "model.onnx", scale=2.0)
    if change == "build settings":
        config = layout["repo"] / "image_encoder" / "config.pbtxt"
        config.write_text(config.read_text().replace('string_value: "4096"', 'string_value: "2048"'))
    states = {e["model"]: e["state"] for e in dry_run(layout, machine, capsys)["engines"]}
    if change in ("gpu", "tensorrt"):
        assert states == {"image_encoder": "miss", "prompt_decoder": "miss"}
    else:
        assert states == {"image_encoder": "miss", "prompt_decoder": "hit"}
    assert start(layout, machine) == 0
    assert len(machine.builds) == sum(s == "miss" for s in states.values())
    assert len(list(layout["cache"].glob("image_encoder/*/engine.json"))) == 2  # the other entry is kept


@pytest.mark.parametrize(
    "damage", ["plan altered", "plan empty", "plan missing", "metadata missing", "metadata garbage"]
)
def test_a_damaged_cache_entry_is_rebuilt(layout, capsys, damage):
    start(layout, FakeMachine())
    entry = next(layout["cache"].glob("prompt_decoder/*/engine.json")).parent
    plan, meta = entry / "model.plan", entry / "engine.json"
    {
        "plan altered": lambda: plan.write_bytes(b"half an engine"),
        "plan empty": lambda: plan.write_bytes(b""),
        "plan missing": plan.unlink,
        "metadata missing": meta.unlink,
        "metadata garbage": lambda: meta.write_text("{not json"),
    }[damage]()
    states = {e["model"]: e["state"] for e in dry_run(layout, FakeMachine(), capsys)["engines"]}
    assert states == {"image_encoder": "hit", "prompt_decoder": "corrupt"}
    machine = FakeMachine()
    assert start(layout, machine) == 0
    assert len(machine.builds) == 1 and "prompt_decoder" in machine.builds[0][1]
    assert json.loads(meta.read_text())["plan_sha256"]  # a complete entry again


def test_a_failed_build_leaves_no_entry_and_does_not_start_the_server(layout, capsys):
    machine = FakeMachine(build_rc=1)
    assert start(layout, machine) == 2
    assert "engine build of image_encoder/1 failed" in capsys.readouterr().err
    assert not list(layout["cache"].glob("*/*/engine.json")) and not list(layout["cache"].glob("*/.tmp-*"))
    assert machine.exec_args is None


def test_build_only_fills_the_cache_and_exits(layout):
    machine = FakeMachine()
    assert start(layout, machine, "--build-only") == 0
    assert len(machine.builds) == 2 and machine.exec_args is None and not layout["runtime"].exists()


@pytest.mark.parametrize(
    "machine, message",
    [
        (FakeMachine(gpus=None), "nvidia-smi not found"),
        (FakeMachine(gpus=""), "lists no GPU"),
        (FakeMachine(gpus=A100 + L4), "GPUs of different types"),
        (FakeMachine(trt_banner="no banner"), "cannot tell the TensorRT version"),
    ],
)
def test_conditions_the_container_cannot_start_under(layout, capsys, machine, message):
    assert start(layout, machine) == 2
    assert message in capsys.readouterr().err and machine.exec_args is None


def test_missing_trtexec(layout, capsys):
    machine = FakeMachine()
    machine.which = lambda name: None
    assert start(layout, machine) == 2
    assert "trtexec not found" in capsys.readouterr().err


def test_tensorrt_version_from_the_environment_and_visible_devices(layout, capsys):
    machine = FakeMachine(trt_banner="")
    assert (
        start(
            layout,
            machine,
            "--dry-run",
            environ={"TRT_VERSION": "10.5.0.18", "CUDA_VISIBLE_DEVICES": "2,3"},
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["tensorrt"] == "10.5.0.18"
    assert machine.queries[0][-1] == "--id=2,3"


def test_server_options(tmp_path):
    command = entrypoint.tritonserver_command(tmp_path, ["--http-port=9000", "--log-verbose=1"])
    assert (
        "--http-port=9000" in command and "--http-port=8000" not in command and "--grpc-port=8001" in command
    )
    with pytest.raises(entrypoint.EntrypointError):
        entrypoint.tritonserver_command(tmp_path, ["--model-repository=/elsewhere"])


def test_runtime_repository_is_never_cleared_unless_the_entrypoint_made_it(layout, capsys):
    layout["runtime"].mkdir()
    (layout["runtime"] / "precious.txt").write_text("keep me")
    assert start(layout, FakeMachine()) == 2
    assert "refusing to clear" in capsys.readouterr().err
    assert (layout["runtime"] / "precious.txt").exists()


def test_a_repository_without_tensorrt_models_needs_no_trtexec(layout, capsys, committed_repository):
    write_gpu_repository(committed_repository, layout["repo"], backend="onnxruntime-trt")
    machine = FakeMachine()
    machine.which = lambda name: None
    plan = dry_run(layout, machine, capsys)
    assert (plan["tensorrt"], plan["engines"]) == (None, [])
    assert start(layout, machine) == 0
    assert machine.exec_args is not None and (layout["runtime"] / "image_encoder").is_symlink()


def test_a_prebuilt_plan_without_onnx_is_served_as_it_is(layout, capsys):
    (layout["repo"] / "prompt_decoder" / "1" / "model.onnx").unlink()
    (layout["repo"] / "prompt_decoder" / "1" / "model.plan").write_bytes(b"prebuilt")
    plan = dry_run(layout, FakeMachine(), capsys)
    assert [e["model"] for e in plan["engines"]] == ["image_encoder"]
    assert start(layout, FakeMachine()) == 0
    assert (layout["runtime"] / "prompt_decoder" / "1" / "model.plan").read_bytes() == b"prebuilt"


# --- every engine is checked against ONNX Runtime before it is served ---------------------------------------


def _verification(layout, model: str) -> dict:
    [meta] = [json.loads(p.read_text()) for p in layout["cache"].glob(f"{model}/*/engine.json")]
    return meta["verification"]


def test_every_engine_is_verified_against_onnxruntime_and_the_numbers_are_recorded(layout, capsys):
    machine = FakeMachine()
    assert start(layout, machine) == 0
    assert machine.exec_args is not None
    runs = machine.inference.commands
    # the encoder once (2 canvases in one batch), the decoder twice (boxes; points with padding)
    assert [c[1].split("/")[-3] for c in runs] == ["image_encoder", "prompt_decoder", "prompt_decoder"]
    assert any(a.startswith("--shapes=image:2x1024x1024x3,image_size:2x2") for a in runs[0])
    assert any(a.startswith("--shapes=image_embeddings:1x256x64x64,point_coords:3x33x2,") for a in runs[2])
    encoder, decoder = _verification(layout, "image_encoder"), _verification(layout, "prompt_decoder")
    assert encoder["passed"] and decoder["passed"]
    assert (encoder["precision"], decoder["precision"]) == ("TF32", "FP16")
    assert 0 <= encoder["max_scaled_diff"] <= 1e-5  # trtexec's 6 significant digits
    assert encoder["min_mask_iou"] is None and decoder["min_mask_iou"] == 1.0
    assert encoder["reference"].startswith("onnxruntime CPUExecutionProvider")
    assert {c["output"] for c in decoder["checks"]} == {"low_res_masks", "iou_predictions"}
    assert decoder["cases"]["3 point prompts of 33 points (with padding)"]["point_labels"] == [3, 33]
    out = capsys.readouterr().out
    assert "image_encoder/1 (TF32) vs ONNX Runtime FP32: max scaled difference" in out
    assert "prompt_decoder/1 (FP16) vs ONNX Runtime FP32" in out and "lowest mask IoU 1.0000" in out


def _checked_models(machine: FakeMachine) -> set[str]:
    return {command[1].split("/")[-3] for command in machine.inference.commands}


def test_a_reused_engine_that_passed_is_not_checked_again(layout, capsys):
    """A restart on a filled cache runs no probe: the record in engine.json covers this plan."""
    start(layout, FakeMachine())
    machine = FakeMachine()
    assert start(layout, machine) == 0
    assert machine.builds == [] and machine.inference.commands == [] and machine.exec_args is not None
    out = capsys.readouterr().out
    assert "image_encoder/1: checked against ONNX Runtime on " in out and "not run again" in out


@pytest.mark.parametrize("change", ["tolerances", "no record", "failed record", "other probe"])
def test_a_reused_engine_is_checked_again_when_its_record_does_not_cover_it(layout, change):
    start(layout, FakeMachine())
    meta_path = next(layout["cache"].glob("image_encoder/*/engine.json"))
    meta = json.loads(meta_path.read_text())
    if change == "no record":
        del meta["verification"]
    elif change == "failed record":
        meta["verification"]["passed"] = False
    elif change == "other probe":
        meta["verification"]["probe"] = "the probe of another version of the check"
    meta_path.write_text(json.dumps(meta))
    machine = FakeMachine()
    extra = ["--verify-max-diff-fp32=0.02"] if change == "tolerances" else []
    assert start(layout, machine, *extra) == 0
    assert machine.builds == []
    assert _checked_models(machine) == (
        {"image_encoder", "prompt_decoder"} if change == "tolerances" else {"image_encoder"}
    )
    assert _verification(layout, "image_encoder")["passed"] is True  # recorded again


def test_an_engine_with_nan_outputs_is_refused(layout, capsys):
    def nan_embeddings(model, output, array):
        if model == "image_encoder":
            array[0, :2] = np.nan
        return array

    machine = FakeMachine(inference=FakeTrtexecInference(nan_embeddings))
    assert start(layout, machine) == 3
    assert machine.exec_args is None and not layout["runtime"].exists()
    err = capsys.readouterr().err
    assert "engine image_encoder/1 (TF32) refused" in err
    assert "image_embeddings, max scaled difference nan > tolerance 0.01" in err
    assert "128 of 512 values are NaN or infinite" in err
    assert "prompt_decoder" not in err  # the decoder agreed
    verification = _verification(layout, "image_encoder")
    assert verification["passed"] is False and verification["max_scaled_diff"] == "nan"
    assert _verification(layout, "prompt_decoder")["passed"] is True  # both were checked


def test_an_engine_that_disagrees_is_refused_with_its_numbers(layout, capsys):
    def flipped_masks(model, output, array):
        return -array if output == "low_res_masks" else array

    assert start(layout, FakeMachine(inference=FakeTrtexecInference(flipped_masks))) == 3
    err = capsys.readouterr().err
    assert "engine prompt_decoder/1 (FP16) refused" in err
    assert "5 box prompts: low_res_masks, max scaled difference" in err and "> tolerance 0.05" in err
    assert "mask pixels differing (logits > 0) 100.0000% > 0.5000%" in err
    assert "--decoder-precision" in err  # what to do about it
    checks = _verification(layout, "prompt_decoder")["checks"]
    assert {c["output"]: c["ok"] for c in checks} == {"low_res_masks": False, "iou_predictions": True}


def test_small_differences_pass_and_tolerances_are_settings(layout, capsys):
    def shifted(model, output, array):
        return array + np.float32(0.1) if model == "image_encoder" else array

    machine = FakeMachine(inference=FakeTrtexecInference(shifted))
    assert start(layout, machine) == 3  # 0.1 / max|embedding| ~ 0.04 > the FP32/TF32 default
    assert "> tolerance 0.01" in capsys.readouterr().err
    layout["runtime"] = layout["runtime"].with_name("runtime-2")
    assert start(layout, machine, "--verify-max-diff-fp32=0.05") == 0
    assert _verification(layout, "image_encoder")["tolerances"]["max_scaled_diff_fp32"] == 0.05
    environ = {"ENGINE_VERIFY_MAX_DIFF_FP32": "0.05"}
    assert start(layout, machine, environ=environ) == 0  # the variable the chart can set
    assert "--verify-max-diff-fp32=0.05" not in machine.exec_args  # not a tritonserver option


def test_an_engine_trtexec_cannot_run_is_refused(layout, capsys):
    machine = FakeMachine(inference=FakeTrtexecInference(returncode=1))
    assert start(layout, machine) == 3
    err = capsys.readouterr().err
    assert "trtexec could not run" in err and "engine mismatch" in err and machine.exec_args is None


def test_build_only_verifies_too(layout):
    machine = FakeMachine(inference=FakeTrtexecInference(lambda model, output, array: array * 2))
    assert start(layout, machine, "--build-only") == 3


def test_bad_tolerances_are_refused(layout, capsys):
    assert start(layout, FakeMachine(), "--verify-min-mask-iou=1.5") == 2
    assert "min_mask_iou must be in [0, 1]" in capsys.readouterr().err


# --- conditions it cannot start under: one line and status 2, never a traceback ----------------------------


@pytest.mark.parametrize(
    "problem, message",
    [
        ("nvidia-smi answer", "cannot read nvidia-smi's answer: unexpected nvidia-smi line 'NVIDIA A100'"),
        ("build parameter", "bad engine build parameters: engine_build_precision must be one of"),
        ("unnamed FP32 layer", "cannot make the engine build command of prompt_decoder/1: an unnamed"),
    ],
)
def test_what_the_entrypoint_cannot_use_is_one_line_and_status_2(layout, capsys, problem, message):
    machine = FakeMachine(gpus="NVIDIA A100\n" if problem == "nvidia-smi answer" else A100)
    if problem == "build parameter":
        config = layout["repo"] / "prompt_decoder" / "config.pbtxt"
        config.write_text(config.read_text().replace('string_value: "FP16"', 'string_value: "FP8"'))
    if problem == "unnamed FP32 layer":  # the FP16 decoder's LayerNorm must stay FP32, and has no name
        decoder_onnx(layout["repo"] / "prompt_decoder" / "1" / "model.onnx", layer_norm_name="")
    capsys.readouterr()
    assert start(layout, machine) == 2
    err = capsys.readouterr().err
    assert err.startswith("[entrypoint] error: ") and message in err
    assert len(err.strip().splitlines()) == 1 and machine.exec_args is None


def test_fp32_layers_are_preferred_so_a_constraint_trtexec_cannot_meet_does_not_fail_the_build(
    layout, capsys
):
    [_, decoder] = dry_run(layout, FakeMachine(), capsys)["engines"]
    assert "--precisionConstraints=prefer" in decoder["command"]
    assert not any(a == "--precisionConstraints=obey" for a in decoder["command"])


# --- the engine cache key ----------------------------------------------------------------------------------


def _states(layout, machine, capsys) -> dict[str, str]:
    return {e["model"]: e["state"] for e in dry_run(layout, machine, capsys)["engines"]}


def test_the_cache_key_follows_the_build_command_but_not_where_the_files_are(layout, capsys, tmp_path):
    start(layout, FakeMachine())
    keys = {e["model"]: e["key"] for e in dry_run(layout, FakeMachine(), capsys)["engines"]}
    moved = {name: tmp_path / "elsewhere" / name for name in ("repo", "cache", "runtime")}
    shutil.copytree(layout["repo"], moved["repo"], symlinks=True)
    machine = FakeMachine()
    machine.which = lambda name: "/opt/tensorrt-10.5/bin/trtexec"
    assert {e["model"]: e["key"] for e in dry_run(moved, machine, capsys)["engines"]} == keys


def test_another_fp32_layer_list_is_another_engine(layout, capsys, monkeypatch):
    """The same ONNX file and build parameters, but a later version of the FP32 layer rules: the FP16
    decoder's cached engine is not reused (the TF32 encoder has no layer list and is)."""
    start(layout, FakeMachine())
    monkeypatch.setattr(tensorrt, "fp32_layer_names", lambda path, **kwargs: ["node_layer_norm", "node_mean"])
    assert _states(layout, FakeMachine(), capsys) == {"image_encoder": "hit", "prompt_decoder": "miss"}
    machine = FakeMachine()
    assert start(layout, machine) == 0
    assert [c[1].split("/")[-3] for c in machine.builds] == ["prompt_decoder"]
    assert "--layerPrecisions=node_layer_norm:fp32,node_mean:fp32" in machine.builds[0]


def test_another_trtexec_flag_is_another_engine(layout, capsys, monkeypatch):
    start(layout, FakeMachine())
    command = tensorrt.trtexec_command
    monkeypatch.setattr(
        tensorrt, "trtexec_command", lambda *a, **k: [*command(*a, **k), "--builderOptimizationLevel=5"]
    )
    assert _states(layout, FakeMachine(), capsys) == {"image_encoder": "miss", "prompt_decoder": "miss"}


# --- what the server gets besides the engines ---------------------------------------------------------------


def test_memory_pools_hold_every_pipeline_instance_s_largest_decoder_answer(layout):
    """Triton's CUDA pool defaults to 64 MB per GPU, less than one 320-prompt answer of the decoder (84 MB):
    each GPU gets a pool for every pipeline instance holding one, and so does the pinned pool."""
    from mobilesamv2.runner.memory import PipelineMemory

    pipeline = (layout["repo"] / "segment_everything" / "config.pbtxt").read_text()
    instances = PipelineMemory.from_config(pipeline).instances
    machine = FakeMachine(gpus=A100 * 2)
    assert start(layout, machine) == 0
    pools = [a.split("=", 1)[1] for a in machine.exec_args if a.startswith("--cuda-memory-pool-byte-size=")]
    assert [p.split(":")[0] for p in pools] == ["0", "1"]  # one per GPU the server sees
    size = int(pools[0].split(":")[1])
    answer = 320 * 256 * 256 * 4
    assert instances == 4 and size >= instances * answer and size > 64 * 2**20
    assert f"--pinned-memory-pool-byte-size={size}" in machine.exec_args

    machine = FakeMachine()
    assert start(layout, machine, "--cuda-memory-pool-byte-size=0:1000") == 0  # an operator's choice wins
    assert [a for a in machine.exec_args if a.startswith("--cuda-memory-pool")] == [
        "--cuda-memory-pool-byte-size=0:1000"
    ]


def test_a_dev_shm_smaller_than_the_configuration_needs_is_reported(layout, capsys):
    assert start(layout, FakeMachine(), shm=64 * 2**20) == 0  # Docker's default
    out = capsys.readouterr().out
    assert "warning: /dev/shm is 0.1 GiB, the pipeline may hold up to " in out and "server.shmSize" in out
    assert start(layout, FakeMachine(), shm=64 * 2**30) == 0
    assert "/dev/shm is" not in capsys.readouterr().out


def test_build_info_is_served_beside_the_models(layout):
    """The pipeline reads BUILD_INFO.json next to its model folder: the random-weights warning and the
    build's fingerprint (its embedding cache's identity)."""
    (layout["repo"] / "BUILD_INFO.json").write_text('{"weights": "fake", "fingerprint": "abc"}')
    assert start(layout, FakeMachine()) == 0
    served = layout["runtime"] / "segment_everything"
    assert json.loads((served.parent / "BUILD_INFO.json").read_text()) == {
        "weights": "fake",
        "fingerprint": "abc",
    }


# --- locked-down serving ------------------------------------------------------------------------------------

APIS = "shared-memory,model-repository,model-config,logging,trace,statistics"
KEY = "k3y-from-a-mounted-Secret_0123456789"
PEM_CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
PEM_KEY = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n"


def _options(command: list[str], prefix: str) -> list[str]:
    return [a for a in command if a.startswith(prefix)]


def test_admin_key_from_a_file_or_the_environment_is_used_and_never_printed(layout, capsys, tmp_path):
    key_file = tmp_path / "admin-key"
    key_file.write_text(KEY + "\n")
    machine = FakeMachine()
    assert start(layout, machine, "--admin-key-file", str(key_file), "--admin-header", "x-admin") == 0
    assert _options(machine.exec_args, "--http-restricted-api") == [
        f"--http-restricted-api={APIS}:x-admin={KEY}"
    ]
    assert _options(machine.exec_args, "--grpc-restricted-protocol") == [
        f"--grpc-restricted-protocol={APIS}:x-admin={KEY}"
    ]
    out = capsys.readouterr().out
    assert KEY not in out and "x-admin=***" in out
    assert "HTTP header 'x-admin', gRPC metadata 'triton-grpc-protocol-x-admin'" in out

    machine = FakeMachine()
    environ = {"ADMIN_KEY": KEY, "ADMIN_HEADER": "x-ops"}
    assert start(layout, machine, environ=environ) == 0
    assert f"--http-restricted-api={APIS}:x-ops={KEY}" in machine.exec_args
    machine = FakeMachine()
    assert start(layout, machine, environ={"ADMIN_KEY_FILE": str(key_file)}) == 0
    assert f"--http-restricted-api={APIS}:mobilesamv2-admin-key={KEY}" in machine.exec_args


def test_without_a_key_the_management_apis_get_a_random_one(layout, capsys):
    keys = []
    for _ in range(2):
        machine = FakeMachine()
        assert start(layout, machine) == 0
        [option] = _options(machine.exec_args, "--http-restricted-api")
        keys.append(option.rsplit("=", 1)[1])
    assert keys[0] != keys[1] and all(len(k) >= 32 for k in keys)
    assert "locked with a random key" in capsys.readouterr().out
    assert "--model-control-mode=none" in machine.exec_args


def test_restriction_can_be_turned_off_but_model_control_stays_none(layout, capsys):
    for extra, environ in (
        (["--no-restrict-management-apis"], {}),
        ([], {"RESTRICT_MANAGEMENT_APIS": "false"}),
    ):
        machine = FakeMachine()
        assert start(layout, machine, *extra, environ=environ) == 0
        assert not _options(machine.exec_args, "--http-restricted-api")
        assert not _options(machine.exec_args, "--grpc-restricted-protocol")
        assert "--model-control-mode=none" in machine.exec_args
        assert "management APIs open" in capsys.readouterr().out


@pytest.mark.parametrize(
    "server_args",
    [
        ["--model-control-mode=explicit"],
        ["--model-control-mode", "poll"],
        ["--load-model=image_encoder"],
        ["--http-restricted-api=statistics:h=v"],
        ["--grpc-use-ssl=false"],
    ],
)
def test_server_options_that_would_loosen_it_are_refused(layout, capsys, server_args):
    machine = FakeMachine()
    assert start(layout, machine, *server_args) == 2
    assert "the locked-down server sets" in capsys.readouterr().err and machine.exec_args is None


def test_grpc_tls_and_mutual_tls_from_files(layout, capsys, tmp_path):
    cert, key, ca = tmp_path / "tls.crt", tmp_path / "tls.key", tmp_path / "ca.crt"
    cert.write_text(PEM_CERT)
    key.write_text(PEM_KEY)
    ca.write_text(PEM_CERT)
    machine = FakeMachine()
    assert start(layout, machine, "--grpc-tls-cert", str(cert), "--grpc-tls-key", str(key)) == 0
    assert ["--grpc-use-ssl=true", f"--grpc-server-cert={cert}", f"--grpc-server-key={key}"] == [
        a for a in machine.exec_args if a.startswith(("--grpc-use-ssl", "--grpc-server-"))
    ]
    assert not _options(machine.exec_args, "--grpc-use-ssl-mutual")
    assert "gRPC: TLS" in capsys.readouterr().out

    machine = FakeMachine()
    environ = {"GRPC_TLS_CERT": str(cert), "GRPC_TLS_KEY": str(key), "GRPC_TLS_CLIENT_CA": str(ca)}
    assert start(layout, machine, environ=environ) == 0
    assert {"--grpc-use-ssl-mutual=true", f"--grpc-root-cert={ca}"} <= set(machine.exec_args)
    assert "mutual TLS" in capsys.readouterr().out


@pytest.mark.parametrize(
    "problem, message",
    [
        ("missing key file", "cannot read the admin key file"),
        ("short key", "at least 16 characters"),
        ("cert without key", "needs both --grpc-tls-cert and --grpc-tls-key"),
        ("key is not PEM", "is not PEM"),
    ],
)
def test_bad_security_settings_stop_the_start(layout, capsys, tmp_path, problem, message):
    cert = tmp_path / "tls.crt"
    cert.write_text(PEM_CERT)
    extra = {
        "missing key file": ["--admin-key-file", str(tmp_path / "absent")],
        "short key": [],
        "cert without key": ["--grpc-tls-cert", str(cert)],
        "key is not PEM": ["--grpc-tls-cert", str(cert), "--grpc-tls-key", str(cert)],
    }[problem]
    environ = {"ADMIN_KEY": "short"} if problem == "short key" else {}
    machine = FakeMachine()
    assert start(layout, machine, *extra, environ=environ) == 2
    assert message in capsys.readouterr().err and machine.exec_args is None
