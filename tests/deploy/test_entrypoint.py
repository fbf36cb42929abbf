"""The container entrypoint's decisions (engine cache hit / miss / rebuild) and the commands it runs, with the
GPU, trtexec and tritonserver replaced by test doubles."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from mobilesamv2.export.gpu import write_gpu_repository

CPU_REPO = Path(__file__).resolve().parents[2] / "model_repository"
A100 = "NVIDIA A100-SXM4-80GB, 8.0\n"
L4 = "NVIDIA L4, 8.9\n"
TRT_10_5 = "&&&& RUNNING TensorRT.trtexec [TensorRT v100500] # trtexec --help\n=== Model Options ===\n"
TRT_10_6 = TRT_10_5.replace("v100500", "v100600")


def tiny_onnx(path: Path, scale: float = 1.0) -> None:
    """A graph with a LayerNormalization (kept FP32) and a Relu (free to run in FP16)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    nodes = [
        helper.make_node("LayerNormalization", ["x", "g", "b"], ["n"], name="node_layer_norm"),
        helper.make_node("Relu", ["n"], ["y"], name="node_relu"),
    ]
    inits = [
        helper.make_tensor("g", TensorProto.FLOAT, [4], [scale] * 4),
        helper.make_tensor("b", TensorProto.FLOAT, [4], [0.0] * 4),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "tiny", [x], [y], inits), opset_imports=[helper.make_opsetid("", 18)]
    )
    path.parent.mkdir(parents=True, exist_ok=True)  # version folders hold only built files: absent in a clone
    onnx.save(model, path)


class FakeMachine:
    """nvidia-smi, trtexec and the exec of tritonserver, recording what the entrypoint asks for."""

    def __init__(self, gpus: str = A100, trt_banner: str = TRT_10_5, build_rc: int = 0) -> None:
        self.gpus, self.trt_banner, self.build_rc = gpus, trt_banner, build_rc
        self.queries: list[list[str]] = []
        self.builds: list[list[str]] = []
        self.exec_args: list[str] | None = None

    def run_query(self, command):
        self.queries.append(list(command))
        if command[0] == "nvidia-smi":
            if self.gpus is None:
                raise FileNotFoundError("nvidia-smi")
            return subprocess.CompletedProcess(command, 0, self.gpus, "")
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

    def execv(self, path, args):
        self.exec_args = list(args)


@pytest.fixture()
def layout(tmp_path):
    repo = tmp_path / "models"
    write_gpu_repository(CPU_REPO, repo)
    tiny_onnx(repo / "image_encoder" / "1" / "model.onnx")
    tiny_onnx(repo / "prompt_decoder" / "1" / "model.onnx")
    return {"repo": repo, "cache": tmp_path / "cache", "runtime": tmp_path / "runtime"}


def start(entrypoint, layout, machine, *extra, environ=None):
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
        execv=machine.execv,
        environ=environ or {},
    )


def dry_run(entrypoint, layout, machine, capsys, *extra) -> dict:
    capsys.readouterr()  # drop what earlier starts printed
    assert start(entrypoint, layout, machine, "--dry-run", *extra) == 0
    return json.loads(capsys.readouterr().out)


def test_dry_run_on_an_empty_cache_plans_a_build_per_tensorrt_model(entrypoint, layout, capsys):
    machine = FakeMachine()
    plan = dry_run(entrypoint, layout, machine, capsys, "--log-verbose=1")
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
    assert {"--fp16", "--precisionConstraints=obey", "--layerPrecisions=node_layer_norm:fp32"} <= set(decoder)
    assert "--maxShapes=image_embeddings:1x256x64x64,point_coords:320x33x2,point_labels:320x33" in decoder
    assert plan["tritonserver"] == [
        "tritonserver",
        f"--model-repository={layout['runtime']}",
        "--http-port=8000",
        "--grpc-port=8001",
        "--metrics-port=8002",
        "--allow-metrics=true",
        "--allow-gpu-metrics=true",
        "--exit-timeout-secs=30",
        "--log-verbose=1",
    ]
    assert machine.builds == [] and not layout["cache"].exists() and machine.exec_args is None


def test_first_start_builds_then_serves_a_runtime_repository(entrypoint, layout):
    machine = FakeMachine()
    assert start(entrypoint, layout, machine) == 0
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


def test_second_start_reuses_the_cache(entrypoint, layout, capsys):
    start(entrypoint, layout, FakeMachine())
    machine = FakeMachine()
    assert start(entrypoint, layout, machine) == 0
    assert machine.builds == [] and machine.exec_args is not None
    plan = dry_run(entrypoint, layout, FakeMachine(), capsys)
    assert [(e["state"], e["action"], e["command"]) for e in plan["engines"]] == [("hit", "reuse", [])] * 2


@pytest.mark.parametrize("change", ["gpu", "tensorrt", "onnx", "build settings"])
def test_a_different_gpu_tensorrt_onnx_or_build_is_a_miss(entrypoint, layout, capsys, change):
    start(entrypoint, layout, FakeMachine())
    machine = FakeMachine(
        gpus=L4 if change == "gpu" else A100, trt_banner=TRT_10_6 if change == "tensorrt" else TRT_10_5
    )
    if change == "onnx":
        tiny_onnx(layout["repo"] / "image_encoder" / "1" / "model.onnx", scale=2.0)
    if change == "build settings":
        config = layout["repo"] / "image_encoder" / "config.pbtxt"
        config.write_text(config.read_text().replace('string_value: "4096"', 'string_value: "2048"'))
    states = {e["model"]: e["state"] for e in dry_run(entrypoint, layout, machine, capsys)["engines"]}
    if change in ("gpu", "tensorrt"):
        assert states == {"image_encoder": "miss", "prompt_decoder": "miss"}
    else:
        assert states == {"image_encoder": "miss", "prompt_decoder": "hit"}
    assert start(entrypoint, layout, machine) == 0
    assert len(machine.builds) == sum(s == "miss" for s in states.values())
    assert len(list(layout["cache"].glob("image_encoder/*/engine.json"))) == 2  # the other entry is kept


@pytest.mark.parametrize(
    "damage", ["plan altered", "plan empty", "plan missing", "metadata missing", "metadata garbage"]
)
def test_a_damaged_cache_entry_is_rebuilt(entrypoint, layout, capsys, damage):
    start(entrypoint, layout, FakeMachine())
    entry = next(layout["cache"].glob("prompt_decoder/*/engine.json")).parent
    plan, meta = entry / "model.plan", entry / "engine.json"
    {
        "plan altered": lambda: plan.write_bytes(b"half an engine"),
        "plan empty": lambda: plan.write_bytes(b""),
        "plan missing": plan.unlink,
        "metadata missing": meta.unlink,
        "metadata garbage": lambda: meta.write_text("{not json"),
    }[damage]()
    states = {e["model"]: e["state"] for e in dry_run(entrypoint, layout, FakeMachine(), capsys)["engines"]}
    assert states == {"image_encoder": "hit", "prompt_decoder": "corrupt"}
    machine = FakeMachine()
    assert start(entrypoint, layout, machine) == 0
    assert len(machine.builds) == 1 and "prompt_decoder" in machine.builds[0][1]
    assert json.loads(meta.read_text())["plan_sha256"]  # a complete entry again


def test_a_failed_build_leaves_no_entry_and_does_not_start_the_server(entrypoint, layout, capsys):
    machine = FakeMachine(build_rc=1)
    assert start(entrypoint, layout, machine) == 2
    assert "engine build of image_encoder/1 failed" in capsys.readouterr().err
    assert not list(layout["cache"].glob("*/*/engine.json")) and not list(layout["cache"].glob("*/.tmp-*"))
    assert machine.exec_args is None


def test_build_only_fills_the_cache_and_exits(entrypoint, layout):
    machine = FakeMachine()
    assert start(entrypoint, layout, machine, "--build-only") == 0
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
def test_conditions_the_container_cannot_start_under(entrypoint, layout, capsys, machine, message):
    assert start(entrypoint, layout, machine) == 2
    assert message in capsys.readouterr().err and machine.exec_args is None


def test_missing_trtexec(entrypoint, layout, capsys):
    machine = FakeMachine()
    machine.which = lambda name: None
    assert start(entrypoint, layout, machine) == 2
    assert "trtexec not found" in capsys.readouterr().err


def test_tensorrt_version_from_the_environment_and_visible_devices(entrypoint, layout, capsys):
    machine = FakeMachine(trt_banner="")
    assert (
        start(
            entrypoint,
            layout,
            machine,
            "--dry-run",
            environ={"TRT_VERSION": "10.5.0.18", "CUDA_VISIBLE_DEVICES": "2,3"},
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["tensorrt"] == "10.5.0.18"
    assert machine.queries[0][-1] == "--id=2,3"


def test_server_options(entrypoint, tmp_path):
    command = entrypoint.tritonserver_command(tmp_path, ["--http-port=9000", "--log-verbose=1"])
    assert (
        "--http-port=9000" in command and "--http-port=8000" not in command and "--grpc-port=8001" in command
    )
    with pytest.raises(entrypoint.EntrypointError):
        entrypoint.tritonserver_command(tmp_path, ["--model-repository=/elsewhere"])


def test_runtime_repository_is_never_cleared_unless_the_entrypoint_made_it(entrypoint, layout, capsys):
    layout["runtime"].mkdir()
    (layout["runtime"] / "precious.txt").write_text("keep me")
    assert start(entrypoint, layout, FakeMachine()) == 2
    assert "refusing to clear" in capsys.readouterr().err
    assert (layout["runtime"] / "precious.txt").exists()


def test_a_repository_without_tensorrt_models_needs_no_trtexec(entrypoint, layout, capsys):
    write_gpu_repository(CPU_REPO, layout["repo"], backend="onnxruntime-trt")
    machine = FakeMachine()
    machine.which = lambda name: None
    plan = dry_run(entrypoint, layout, machine, capsys)
    assert (plan["tensorrt"], plan["engines"]) == (None, [])
    assert start(entrypoint, layout, machine) == 0
    assert machine.exec_args is not None and (layout["runtime"] / "image_encoder").is_symlink()


def test_a_prebuilt_plan_without_onnx_is_served_as_it_is(entrypoint, layout, capsys):
    (layout["repo"] / "prompt_decoder" / "1" / "model.onnx").unlink()
    (layout["repo"] / "prompt_decoder" / "1" / "model.plan").write_bytes(b"prebuilt")
    plan = dry_run(entrypoint, layout, FakeMachine(), capsys)
    assert [e["model"] for e in plan["engines"]] == ["image_encoder"]
    assert start(entrypoint, layout, FakeMachine()) == 0
    assert (layout["runtime"] / "prompt_decoder" / "1" / "model.plan").read_bytes() == b"prebuilt"
