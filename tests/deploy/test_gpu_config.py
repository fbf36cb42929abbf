"""The GPU model repository differs from the committed CPU one only where a GPU needs it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as mc

import segment_everything_contract as contract
from mobilesamv2.export import gpu
from mobilesamv2.export.tensorrt import EngineBuild, config_string_parameters, parse_shapes
from mobilesamv2.processing.boxes import boxes_to_prompts, points_to_prompts

CPU_REPO = Path(__file__).resolve().parents[2] / "model_repository"
MODELS = sorted(p.parent.name for p in CPU_REPO.glob("*/config.pbtxt"))
BUILD_KEYS = {f"parameters.{k}" for k in EngineBuild().to_parameters()} | {
    "parameters.engine_build_min_shapes",
    "parameters.engine_build_opt_shapes",
    "parameters.engine_build_max_shapes",
}


def _parse(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


def _flatten(value, prefix="") -> dict:
    """Message -> {dotted path: leaf}; lists are leaves, maps (parameters, warm-up inputs) are walked."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else key))
        return out
    return {prefix: value}


def changed_fields(cpu_text: str, gpu_text: str) -> set[str]:
    a = _flatten(json_format.MessageToDict(_parse(cpu_text)))
    b = _flatten(json_format.MessageToDict(_parse(gpu_text)))
    return {key.removesuffix(".stringValue") for key in a.keys() | b.keys() if a.get(key) != b.get(key)}


def cpu_config(model: str) -> str:
    return (CPU_REPO / model / "config.pbtxt").read_text()


def test_the_committed_repository_has_the_models_this_test_knows():
    assert {"image_encoder", "prompt_decoder", "object_discovery", "segment_everything"} <= set(MODELS)


def test_image_encoder_becomes_a_batched_tensorrt_engine_and_nothing_else_changes():
    text = gpu.gpu_model_config(cpu_config("image_encoder"), instances_per_gpu=2)
    assert (
        changed_fields(cpu_config("image_encoder"), text)
        == {
            "backend",
            "platform",
            "instanceGroup",
            "dynamicBatching.preferredBatchSize",
            "parameters.allow_spinning",
        }
        | BUILD_KEYS
    )
    config = _parse(text)
    assert (config.backend, config.platform) == ("tensorrt", "tensorrt_plan")
    assert [(g.kind, g.count) for g in config.instance_group] == [(mc.ModelInstanceGroup.KIND_GPU, 2)]
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 4]
    build = EngineBuild.from_parameters(config_string_parameters(text))
    # FP32 tensors with TF32 math by default: FP16 is an explicit opt-in for the encoder
    assert (build.precision, build.fp16, build.fp32_layers) == ("TF32", False, "none")
    # optimised for what arrives (one image per pipeline request), batches of up to 4 admitted
    assert build.shapes["image"] == ((1, 1024, 1024, 3), (1, 1024, 1024, 3), (4, 1024, 1024, 3))
    assert build.shapes["image_size"] == ((1, 2), (1, 2), (4, 2))


def test_prompt_decoder_profile_covers_one_to_max_prompts_and_cpu_slicing_is_dropped():
    text = gpu.gpu_model_config(cpu_config("prompt_decoder"), max_prompts=320)
    assert (
        changed_fields(cpu_config("prompt_decoder"), text)
        == {"backend", "platform", "instanceGroup", "parameters.max_rows_per_run", "parameters.sliced_inputs"}
        | {
            "parameters.graph_optimization_level",
            "parameters.disabled_optimizers",
            "parameters.allow_spinning",
        }
        | BUILD_KEYS
    )
    params = config_string_parameters(text)
    low, high = (
        parse_shapes(params["engine_build_min_shapes"]),
        parse_shapes(params["engine_build_max_shapes"]),
    )
    assert low["point_coords"][0] == 1 and high["point_coords"][0] == 320
    assert low["point_labels"][0] == 1 and high["point_labels"][0] == 320
    assert low["image_embeddings"] == high["image_embeddings"] == (1, 256, 64, 64)
    # the warm-up (one box: 1 prompt x 2 points) lies inside the profile
    warmup = _parse(text).model_warmup[0].inputs["point_coords"]
    assert all(
        a <= d <= b for a, d, b in zip(low["point_coords"], warmup.dims, high["point_coords"], strict=True)
    )


def test_interactive_decoder_profile_covers_what_the_pipeline_sends_it():
    """TensorRT sizes an engine's activation memory for its profile's largest shape: the interactive decoder
    gets at most the prompts the pipeline sends it per call (64, not SegEvery's 320), optimised for a
    click."""
    build = _build("interactive_decoder", max_prompts=320)
    interactive = contract.INTERACTIVE_DECODER_MAX_PROMPTS
    assert build.shapes["point_coords"] == (
        (1, 1, 2),
        (1, 2, 2),
        (interactive, contract.DECODER_MAX_POINTS, 2),
    )
    assert build.shapes["mask_input"] == ((1, 1, 256, 256), (1, 1, 256, 256), (interactive, 1, 256, 256))
    assert build.shapes["has_mask_input"] == ((1,), (1,), (interactive,))
    assert _build("interactive_decoder", max_prompts=16).shapes["point_coords"][2][0] == 16
    assert _build("prompt_decoder", max_prompts=320).shapes["point_coords"][2][0] == 320  # SegEvery's


def test_object_discovery_moves_to_the_gpu_with_the_cuda_provider_and_a_warmup():
    text = gpu.gpu_model_config(cpu_config("object_discovery"))
    assert changed_fields(cpu_config("object_discovery"), text) == {
        "instanceGroup",
        "parameters.execution_provider",
        "parameters.allow_spinning",
        "modelWarmup",
    }
    config = _parse(text)
    assert config.parameters["execution_provider"].string_value == "cuda"
    assert list(config.model_warmup[0].inputs["images"].dims) == [1024, 1024, 3]


def test_bls_model_stays_on_cpu_overlaps_its_stages_and_follows_max_prompts():
    text = cpu_config("segment_everything")
    assert _parse(text).parameters["overlap_encoder_and_discovery"].string_value == "false"  # CPU: one by one
    assert _parse(text).parameters["mask_postprocess"].string_value == "host"
    assert _parse(text).parameters["embedding_cache_segevery"].string_value == "true"
    gpu_text = gpu.gpu_model_config(text, max_prompts=320)
    on_gpu = {
        "parameters.overlap_encoder_and_discovery",
        "parameters.mask_postprocess",
        "parameters.embedding_cache_segevery",
        "instanceGroup",
        "dynamicBatching.defaultQueuePolicy.maxQueueSize",
    }
    assert changed_fields(text, gpu_text) == on_gpu
    assert _parse(gpu_text).parameters["overlap_encoder_and_discovery"].string_value == "true"
    assert _parse(gpu_text).parameters["mask_postprocess"].string_value == "device"
    assert _parse(gpu_text).parameters["embedding_cache_segevery"].string_value == "false"
    cpu, gpu_config = _parse(text), _parse(gpu_text)
    assert cpu.dynamic_batching.default_queue_policy.max_queue_size == 2 * cpu.instance_group[0].count
    assert gpu_config.instance_group[0].count == gpu.BLS_INSTANCES
    assert gpu_config.instance_group[0].kind == cpu.instance_group[0].kind  # the BLS stays on CPU
    assert gpu_config.dynamic_batching.default_queue_policy.max_queue_size == 2 * gpu.BLS_INSTANCES
    assert changed_fields(text, gpu.gpu_model_config(text, max_prompts=256)) == {
        "parameters.decoder_max_prompts_per_call",
        *on_gpu,
    }


def test_onnxruntime_with_tensorrt_accelerator_variant():
    text = gpu.gpu_model_config(cpu_config("prompt_decoder"), backend="onnxruntime-trt", max_prompts=300)
    assert changed_fields(cpu_config("prompt_decoder"), text) == {
        "instanceGroup",
        "optimization.executionAccelerators.gpuExecutionAccelerator",
        "parameters.max_rows_per_run",
        "parameters.sliced_inputs",
        "parameters.disabled_optimizers",
        "parameters.allow_spinning",
    }
    accelerator = _parse(text).optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accelerator.name == "tensorrt"
    assert accelerator.parameters["precision_mode"] == "FP16"
    assert accelerator.parameters["trt_layer_norm_fp32_fallback"] == "1"
    assert parse_shapes(accelerator.parameters["trt_profile_max_shapes"])["point_coords"][0] == 300


def test_settings_are_applied():
    text = gpu.gpu_model_config(
        cpu_config("image_encoder"),
        preferred_batch_sizes=[4],
        max_queue_delay_us=500,
        gpus=[0, 1],
        encoder_precision="fp32",
    )
    config = _parse(text)
    assert list(config.dynamic_batching.preferred_batch_size) == [4]
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert list(config.instance_group[0].gpus) == [0, 1]
    assert EngineBuild.from_parameters(config_string_parameters(text)) == EngineBuild(
        precision="FP32",
        fp32_layers="none",
        shapes={
            "image": ((1, 1024, 1024, 3), (1, 1024, 1024, 3), (4, 1024, 1024, 3)),
            "image_size": ((1, 2), (1, 2), (4, 2)),
        },
    )


def _build(model: str, **kwargs) -> EngineBuild:
    return EngineBuild.from_parameters(
        config_string_parameters(gpu.gpu_model_config(cpu_config(model), **kwargs))
    )


def test_engine_precisions_default_to_tf32_encoder_and_fp16_decoder_and_fp16_encoder_is_opt_in():
    assert (_build("image_encoder").precision, _build("prompt_decoder").precision) == ("TF32", "FP16")
    assert _build("prompt_decoder").fp32_layers == "auto"  # LayerNorm stays FP32 in the FP16 decoder
    encoder = _build("image_encoder", encoder_precision="fp16")
    assert (encoder.precision, encoder.fp32_layers) == ("FP16", "auto")
    assert _build("image_encoder", decoder_precision="fp32").precision == "TF32"  # each setting is per model
    decoder = _build("prompt_decoder", decoder_precision="fp32")
    assert (decoder.precision, decoder.fp32_layers) == ("FP32", "none")
    ort = _parse(gpu.gpu_model_config(cpu_config("image_encoder"), backend="onnxruntime-trt"))
    assert (
        ort.optimization.execution_accelerators.gpu_execution_accelerator[0].parameters["precision_mode"]
        == "FP32"
    )


def test_precision_on_the_command_line(tmp_path, committed_repository):
    def built(*argv) -> tuple[str, str]:
        out = tmp_path / "gpu"
        gpu.main(["--cpu-repo", str(committed_repository), "--out", str(out), *argv])
        return tuple(
            EngineBuild.from_parameters(
                config_string_parameters((out / model / "config.pbtxt").read_text())
            ).precision
            for model in ("image_encoder", "prompt_decoder")
        )

    assert built() == ("TF32", "FP16")
    assert built("--encoder-precision", "fp16") == ("FP16", "FP16")
    assert built("--encoder-precision", "fp32", "--decoder-precision", "tf32") == ("FP32", "TF32")
    assert built("--fp32") == ("TF32", "TF32")
    with pytest.raises(SystemExit):
        built("--encoder-precision", "int8")


def test_decoder_profile_admits_the_largest_prompt_of_the_contract_with_its_padding_point():
    params = config_string_parameters(gpu.gpu_model_config(cpu_config("prompt_decoder")))
    low, high = (
        parse_shapes(params["engine_build_min_shapes"]),
        parse_shapes(params["engine_build_max_shapes"]),
    )
    opt = parse_shapes(params["engine_build_opt_shapes"])
    assert high["point_coords"][1] == high["point_labels"][1] == contract.DECODER_MAX_POINTS
    assert opt["point_coords"][1] == 2  # a box: the common case

    def admitted(coords: np.ndarray, labels: np.ndarray) -> bool:
        return all(
            a <= d <= b
            for name, shape in (("point_coords", coords.shape), ("point_labels", labels.shape))
            for a, d, b in zip(low[name], shape, high[name], strict=True)
        )

    largest = contract.HARD_LIMITS.max_points_per_prompt
    points = np.zeros((3, largest, 2), np.float32)
    coords, labels = points_to_prompts(points, np.ones((3, largest), np.int32))
    assert coords.shape == (3, contract.DECODER_MAX_POINTS, 2) and labels[0, -1] == -1  # the padding point
    assert admitted(coords, labels)
    assert admitted(*points_to_prompts(points[:, :1], np.ones((3, 1), np.int32)))  # one point + padding
    assert admitted(*boxes_to_prompts(np.array([[0, 0, 10, 10]] * 320, np.float32)))  # a full call of boxes
    too_many = points_to_prompts(
        np.zeros((1, largest + 1, 2), np.float32), np.ones((1, largest + 1), np.int32)
    )
    assert not admitted(*too_many)  # the contract refuses such a prompt before it reaches the decoder


@pytest.mark.parametrize(
    "kwargs",
    [
        {"backend": "openvino"},
        {"instances_per_gpu": 0},
        {"max_prompts": 0},
        {"decoder_precision": "int8"},
    ],
)
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        gpu.gpu_model_config(cpu_config("prompt_decoder"), **kwargs)


def test_write_gpu_repository_copies_everything_and_rewrites_only_configs(tmp_path):
    cpu = tmp_path / "cpu"
    for model in MODELS:
        (cpu / model / "1").mkdir(parents=True)
        (cpu / model / "config.pbtxt").write_text(cpu_config(model))
    (cpu / "image_encoder" / "1" / "model.onnx").write_bytes(b"onnx bytes")
    (cpu / "object_discovery" / "1" / "model.py").write_text("# python model\n")
    (cpu / "object_discovery" / "1" / "__pycache__").mkdir()
    (cpu / "BUILD_INFO.json").write_text("{}")
    out = tmp_path / "gpu"
    (out / "image_encoder" / "1").mkdir(parents=True)
    (out / "image_encoder" / "1" / "model.plan").write_bytes(b"stale")  # replaced with the model folder
    written = gpu.write_gpu_repository(cpu, out)
    assert sorted(p.parent.name for p in written) == MODELS
    assert (out / "image_encoder" / "1" / "model.onnx").read_bytes() == b"onnx bytes"
    assert not (out / "image_encoder" / "1" / "model.plan").exists()
    assert (out / "object_discovery" / "1" / "model.py").is_file()
    assert not (out / "object_discovery" / "1" / "__pycache__").exists()
    assert (out / "BUILD_INFO.json").is_file()
    assert _parse((out / "image_encoder" / "config.pbtxt").read_text()).platform == "tensorrt_plan"
    with pytest.raises(ValueError):
        gpu.write_gpu_repository(cpu, cpu)


def test_main_writes_the_repository(tmp_path, capsys, committed_repository):
    gpu.main(
        [
            "--cpu-repo",
            str(committed_repository),
            "--out",
            str(tmp_path / "gpu"),
            "--instances-per-gpu",
            "2",
            "--max-prompts",
            "256",
            "--preferred-batch-sizes",
            "2,4",
        ]
    )
    assert len(capsys.readouterr().out.splitlines()) == len(MODELS)
    config = _parse((tmp_path / "gpu" / "prompt_decoder" / "config.pbtxt").read_text())
    assert config.instance_group[0].count == 2


def test_the_gpu_repository_gives_tensorrt_opset_18_sources_without_gelu(built_repository, tmp_path):
    """From the real build: every ONNX file a TensorRT model is built from is at opset 18 without ``Gelu``
    (the served CPU graphs of the encoder and decoder are opset 20; their ``plain.onnx`` replace them)."""
    from mobilesamv2.export.onnx_export import op_counts

    gpu.write_gpu_repository(built_repository, tmp_path / "gpu")
    sources = sorted((tmp_path / "gpu").glob("*/1/model.onnx"))
    assert {p.parts[-3] for p in sources} >= {"image_encoder", "prompt_decoder", "interactive_decoder"}
    for path in sources:
        ops, opset = op_counts(path)
        assert opset <= 18 and "Gelu" not in ops, path
        assert _parse((path.parents[1] / "config.pbtxt").read_text()).platform == "tensorrt_plan"
    assert not list((tmp_path / "gpu").glob("*/1/plain.onnx"))
