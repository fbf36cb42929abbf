"""FP32-layer selection from an ONNX graph, the trtexec command line, and the engine-cache helpers."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from mobilesamv2.export import tensorrt as trt

FLOAT, INT64 = TensorProto.FLOAT, TensorProto.INT64


def _node(op, inputs, outputs, name, scope=None, **attrs):
    node = helper.make_node(op, inputs, outputs, name=name, **attrs)
    if scope is not None:  # what torch's dynamo exporter records per node
        for key, value in scope.items():
            entry = node.metadata_props.add()
            entry.key, entry.value = key, value
    return node


SCOPE = "backbone.stages.4.op_list.1.context_module.main"
LITEMLA = {
    "namespace": f": Encoder/{SCOPE}: mobilesamv2.modeling.efficientvit.LiteMLA",
    "pkg.torch.onnx.name_scopes": f"['', 'backbone', '{SCOPE}', 'matmul']",
}
NECK = {"pkg.torch.onnx.name_scopes": "['', 'neck', 'conv']"}


def small_encoder_graph() -> onnx.ModelProto:
    """conv -> LiteMLA-like attention (scoped by metadata) -> LayerNorm2d as ReduceMean ops -> LayerNorm."""
    nodes = [
        _node("Conv", ["x", "w"], ["c"], "node_conv_stem", NECK),
        # LiteMLA: its qkv conv may stay FP16; the attention arithmetic and its shape arithmetic are scoped
        _node("Conv", ["c", "w"], ["qkv"], "node_Conv_qkv", LITEMLA),
        _node("Relu", ["qkv"], ["q"], "node_relu", LITEMLA),
        _node("Shape", ["qkv"], ["qkv_shape"], "node_shape", LITEMLA),
        _node("Gather", ["qkv_shape", "zero"], ["batch"], "node_gather_batch", LITEMLA),
        _node("MatMul", ["q", "qkv"], ["vk"], "node_matmul", LITEMLA),
        _node("Div", ["vk", "qkv"], ["att"], "node_div", LITEMLA),
        # an unrelated block
        _node("Relu", ["att"], ["r"], "node_relu_neck", NECK),
        # LayerNorm2d: d = x - mean(x); d / sqrt(mean(d^2) + eps)
        _node("ReduceMean", ["r", "axes"], ["m"], "node_mean", keepdims=1),
        _node("Sub", ["r", "m"], ["d"], "node_sub"),
        _node("Pow", ["d", "two"], ["d2"], "node_pow"),
        _node("ReduceMean", ["d2", "axes"], ["v"], "node_mean_1", keepdims=1),
        _node("Add", ["v", "eps"], ["ve"], "node_add_eps"),
        _node("Sqrt", ["ve"], ["s"], "node_sqrt"),
        _node("Div", ["d", "s"], ["n"], "node_div_norm"),
        _node("Mul", ["n", "gamma"], ["scaled"], "node_mul_affine"),
        # an nn.LayerNorm as the dynamo exporter writes it
        _node("LayerNormalization", ["scaled", "gamma", "beta"], ["y"], "node_layer_norm", axis=1),
        _node("Relu", ["y"], ["out"], "node_relu_out"),
    ]
    inits = [
        helper.make_tensor("w", FLOAT, [4, 4, 1, 1], [0.1] * 16),
        helper.make_tensor("zero", INT64, [], [0]),
        helper.make_tensor("axes", INT64, [1], [1]),
        helper.make_tensor("two", FLOAT, [], [2.0]),
        helper.make_tensor("eps", FLOAT, [], [1e-6]),
        helper.make_tensor("gamma", FLOAT, [4, 1, 1], [1.0] * 4),
        helper.make_tensor("beta", FLOAT, [4, 1, 1], [0.0] * 4),
    ]
    graph = helper.make_graph(
        nodes,
        "small_encoder",
        [helper.make_tensor_value_info("x", FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("out", FLOAT, [1, 4, 8, 8])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    return model


EXPECTED_FP32 = [
    "node_relu",
    "node_matmul",
    "node_div",  # LiteMLA attention (not its conv, not its int64 shape ops)
    "node_mean",
    "node_sub",
    "node_pow",
    "node_mean_1",
    "node_add_eps",
    "node_sqrt",
    "node_div_norm",
    "node_layer_norm",
]


def test_fp32_layers_of_a_small_graph_without_value_info_uses_shape_inference():
    assert trt.fp32_layer_names(small_encoder_graph()) == EXPECTED_FP32


def test_fp32_layers_from_a_file_with_value_info(tmp_path):
    model = onnx.shape_inference.infer_shapes(small_encoder_graph())
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    assert trt.fp32_layer_names(path) == EXPECTED_FP32


def test_fp32_layers_scope_markers_are_configurable():
    names = trt.fp32_layer_names(small_encoder_graph(), scope_markers=(), fp16_safe_ops_in_scope=())
    assert "node_matmul" not in names and "node_layer_norm" in names
    names = trt.fp32_layer_names(small_encoder_graph(), fp16_safe_ops_in_scope=())
    assert "node_Conv_qkv" in names


def test_fp32_layer_names_that_trtexec_cannot_express_are_refused():
    model = small_encoder_graph()
    next(n for n in model.graph.node if n.name == "node_matmul").name = "attention,matmul"
    with pytest.raises(ValueError, match="cannot be passed"):
        trt.fp32_layer_names(model)


def test_trtexec_command_fp16_with_fp32_layers_and_profile():
    command = trt.trtexec_command(
        "/m/model.onnx",
        "/c/model.plan",
        fp32_layers=["a", "b:c"],
        workspace_mb=2048,
        timing_cache="/c/t.cache",
        shapes={
            "point_coords": ((1, 1, 2), (64, 2, 2), (320, 4, 2)),
            "point_labels": ((1, 1), (64, 2), (320, 4)),
        },
        trtexec="/usr/src/tensorrt/bin/trtexec",
    )
    assert command == [
        "/usr/src/tensorrt/bin/trtexec",
        "--onnx=/m/model.onnx",
        "--saveEngine=/c/model.plan",
        "--skipInference",
        "--memPoolSize=workspace:2048M",
        "--fp16",
        # prefer: a constraint TensorRT cannot meet leaves the layer in FP16 (the engine check judges the
        # result) instead of failing the build, which would stop the container
        "--precisionConstraints=prefer",
        "--layerPrecisions=a:fp32,b:c:fp32",  # trtexec splits name and precision on the last ':'
        "--minShapes=point_coords:1x1x2,point_labels:1x1",
        "--optShapes=point_coords:64x2x2,point_labels:64x2",
        "--maxShapes=point_coords:320x4x2,point_labels:320x4",
        "--timingCacheFile=/c/t.cache",
    ]


def test_trtexec_command_fp32_engine_has_no_precision_flags():
    command = trt.trtexec_command("m.onnx", "m.plan", fp16=False, fp32_layers=["a"])
    assert not any(a.startswith(("--fp16", "--precisionConstraints", "--layerPrecisions")) for a in command)


def test_trtexec_command_strict_fp32_forbids_tf32():
    assert "--noTF32" in trt.trtexec_command("m.onnx", "m.plan", fp16=False, tf32=False)
    assert "--noTF32" not in trt.trtexec_command(
        "m.onnx", "m.plan", fp16=False
    )  # TensorRT's default: TF32 on


@pytest.mark.parametrize(
    "precision, flags",
    [
        ("FP16", {"--fp16", "--precisionConstraints=prefer", "--layerPrecisions"}),
        ("TF32", set()),
        ("FP32", {"--noTF32"}),
    ],
)
def test_engine_build_precisions(tmp_path, precision, flags):
    path = tmp_path / "model.onnx"
    onnx.save(small_encoder_graph(), path)
    build = trt.EngineBuild(precision=precision)
    assert build.fp16 is (precision == "FP16")
    command = build.command(path, tmp_path / "model.plan")
    assert {a.split("=")[0] if a.startswith("--layer") else a for a in command[5:]} == flags
    assert trt.EngineBuild.from_parameters(build.to_parameters()) == build
    assert build.to_parameters()[trt.PARAM_PRECISION] == precision
    assert (
        len({trt.EngineBuild(precision=p).fingerprint() for p in trt.PRECISIONS}) == 3
    )  # distinct cache keys
    with pytest.raises(ValueError, match="precision must be one of"):
        trt.EngineBuild(precision="BF16")


def test_trtexec_command_refuses_a_layer_list_longer_than_one_argument():
    names = [f"node_{i:06d}_with_a_long_exporter_name" for i in range(5000)]
    with pytest.raises(trt.LayerListTooLong):
        trt.trtexec_command("m.onnx", "m.plan", fp32_layers=names)


@pytest.mark.parametrize(
    "shapes",
    [
        {"x": ((2, 3), (1, 3), (4, 3))},  # min > opt
        {"x": ((1, 3), (2,), (4, 3))},  # ranks differ
        {"x": ((0, 3), (1, 3), (4, 3))},  # zero dim
    ],
)
def test_bad_profiles_are_refused(shapes):
    with pytest.raises(ValueError):
        trt.trtexec_command("m.onnx", "m.plan", shapes=shapes)


def test_engine_build_parameters_round_trip():
    build = trt.EngineBuild(workspace_mb=1024, shapes={"image": ((1, 8, 8, 3), (4, 8, 8, 3), (4, 8, 8, 3))})
    params = build.to_parameters()
    assert params[trt.PARAM_MIN_SHAPES] == "image:1x8x8x3"
    assert trt.EngineBuild.from_parameters(params) == build
    with pytest.raises(ValueError):
        trt.EngineBuild.from_parameters({trt.PARAM_PRECISION: "INT8"})


def test_engine_cache_key_changes_with_every_input():
    base = ("NVIDIA A100-SXM4-80GB", "8.0", "10.5.0", "ab" * 32, "{}", '["--fp16"]')
    key = trt.engine_cache_key(*base)
    assert key.startswith("nvidia-a100-sxm4-80gb_sm80_trt10.5.0_")
    others = {trt.engine_cache_key(*base[:i], "other", *base[i + 1 :]) for i in range(len(base))}
    assert key not in others and len(others) == len(base)
    assert trt.engine_cache_key(*base) == key  # deterministic


def test_command_fingerprint_keeps_every_flag_and_drops_the_paths():
    def command(trtexec="/usr/src/tensorrt/bin/trtexec", root="/cache", layers=("a",), extra=()):
        return trt.trtexec_command(
            f"{root}/repo/m/1/model.onnx",
            f"{root}/engines/m/key/model.plan",
            fp32_layers=list(layers),
            timing_cache=f"{root}/timing/t.cache",
            trtexec=trtexec,
            extra_args=extra,
        )

    fingerprint = trt.command_fingerprint(command())
    assert "/cache" not in fingerprint and "--layerPrecisions=a:fp32" in fingerprint
    assert trt.command_fingerprint(command(trtexec="trtexec", root="/elsewhere")) == fingerprint
    assert trt.command_fingerprint(command(layers=("a", "b"))) != fingerprint
    assert trt.command_fingerprint(command(extra=["--builderOptimizationLevel=5"])) != fingerprint


def test_parse_nvidia_smi():
    out = "NVIDIA A100-SXM4-80GB, 8.0\nNVIDIA H100 80GB HBM3, 9.0\n\n"
    assert trt.parse_nvidia_smi(out) == [
        trt.GpuInfo("NVIDIA A100-SXM4-80GB", "8.0"),
        trt.GpuInfo("NVIDIA H100 80GB HBM3", "9.0"),
    ]
    with pytest.raises(ValueError):
        trt.parse_nvidia_smi("No devices were found")


@pytest.mark.parametrize(
    "text, version",
    [
        ("&&&& RUNNING TensorRT.trtexec [TensorRT v100500] # trtexec --help", "10.5.0"),
        ("&&&& RUNNING TensorRT.trtexec [TensorRT v8601] # trtexec", "8.6.1"),
        ("10.5.0.18\n", "10.5.0.18"),
        ("usage: nothing here", None),
    ],
)
def test_parse_tensorrt_version(text, version):
    assert trt.parse_tensorrt_version(text) == version


def test_config_parameters_are_read_from_both_pbtxt_styles():
    hand_written = (
        'parameters [\n  { key: "a", value: { string_value: "1" } },\n'
        '  { key: "b", value: { string_value: "x,y" } }\n]'
    )
    generated = 'parameters {\n  key: "engine_build_precision"\n  value {\n    string_value: "FP16"\n  }\n}\n'
    assert trt.config_string_parameters(hand_written) == {"a": "1", "b": "x,y"}
    assert trt.config_string_parameters(generated) == {"engine_build_precision": "FP16"}
    assert trt.strip_build_parameters('name: "m"\n' + generated) == 'name: "m"\n'
    assert trt.is_tensorrt_config('platform: "tensorrt_plan"\n') and not trt.is_tensorrt_config(
        'backend: "python"'
    )
