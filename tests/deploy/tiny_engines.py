"""Small ONNX graphs with the served encoder's and decoder's input signatures, a stand-in for
``trtexec --loadEngine --loadInputs --exportOutput`` that runs them with ONNX Runtime (no TensorRT here), and
stand-ins for engines: a graph with its weights rounded to an engine's precision, or perturbed.

The graphs are cheap (outputs of a few thousand values) but take the real inputs: ``image`` uint8
``(B, 1024, 1024, 3)`` + ``image_size``, and ``image_embeddings (1, 256, 64, 64)`` + ``point_coords`` /
``point_labels``; each has a LayerNormalization named ``node_layer_norm`` (an FP32 layer of FP16 engines).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mobilesamv2.export.verify import OnnxRuntimeRunner, graph_inputs

FLOAT, INT64 = TensorProto.FLOAT, TensorProto.INT64


def _save(nodes, name, inputs, outputs, initializers, path: Path) -> Path:
    model = helper.make_model(
        helper.make_graph(nodes, name, inputs, outputs, initializers),
        opset_imports=[helper.make_opsetid("", 18)],
    )
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)  # version folders hold only built files: absent in a clone
    onnx.save(model, path)
    return path


def encoder_onnx(path: Path, scale: float = 1.0) -> Path:
    """``image (B,1024,1024,3) uint8, image_size (B,2) int32 -> image_embeddings (B,4,8,8)``."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Cast", ["image"], ["x"], name="node_cast", to=FLOAT),
        helper.make_node("Transpose", ["x"], ["chw"], name="node_permute", perm=[0, 3, 1, 2]),
        helper.make_node(
            "AveragePool", ["chw"], ["pooled"], name="node_pool", kernel_shape=[128, 128], strides=[128, 128]
        ),
        helper.make_node("Conv", ["pooled", "w", "b"], ["conv"], name="node_conv"),
        helper.make_node(
            "LayerNormalization", ["conv", "g", "beta"], ["norm"], name="node_layer_norm", axis=-1
        ),
        helper.make_node("Cast", ["image_size"], ["size"], name="node_cast_size", to=FLOAT),
        helper.make_node("ReduceSum", ["size", "axis1"], ["size_sum"], name="node_size_sum", keepdims=1),
        helper.make_node("Reshape", ["size_sum", "shape_b111"], ["size4"], name="node_size_reshape"),
        helper.make_node("Mul", ["size4", "tiny"], ["size_term"], name="node_size_scale"),
        helper.make_node("Add", ["norm", "size_term"], ["image_embeddings"], name="node_add"),
    ]
    initializers = [
        helper.make_tensor("w", FLOAT, [4, 3, 1, 1], (rng.standard_normal(12) * 0.01 * scale).tolist()),
        helper.make_tensor("b", FLOAT, [4], [0.1, -0.2, 0.3, 0.0]),
        helper.make_tensor("g", FLOAT, [8], [1.0] * 8),
        helper.make_tensor("beta", FLOAT, [8], [0.0] * 8),
        helper.make_tensor("axis1", INT64, [1], [1]),
        helper.make_tensor("shape_b111", INT64, [4], [-1, 1, 1, 1]),
        helper.make_tensor("tiny", FLOAT, [], [1e-4]),
    ]
    return _save(
        nodes,
        "tiny_encoder",
        [
            helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", 1024, 1024, 3]),
            helper.make_tensor_value_info("image_size", TensorProto.INT32, ["batch", 2]),
        ],
        [helper.make_tensor_value_info("image_embeddings", FLOAT, ["batch", 4, 8, 8])],
        initializers,
        path,
    )


def decoder_onnx(path: Path, layer_norm_name: str = "node_layer_norm") -> Path:
    """``image_embeddings (1,256,64,64), point_coords (N,P,2), point_labels (N,P) -> low_res_masks
    (N,1,64,64), iou_predictions (N,1)``: the embedding's channel mean shifted by a term of the prompts, so
    the masks' signs depend on both."""
    nodes = [
        helper.make_node(
            "LayerNormalization", ["image_embeddings", "g", "beta"], ["e"], name=layer_norm_name, axis=-1
        ),
        helper.make_node("ReduceMean", ["e", "axis1"], ["m"], name="node_mean", keepdims=1),
        helper.make_node("Gather", ["point_coords", "zero"], ["x"], name="node_gather_x", axis=2),
        helper.make_node("Mul", ["x", "point_labels"], ["xl"], name="node_mul_labels"),
        helper.make_node("ReduceSum", ["xl", "axis1"], ["s"], name="node_sum_points", keepdims=0),
        helper.make_node("Div", ["s", "frame"], ["t"], name="node_div_frame"),
        helper.make_node("Sub", ["t", "offset"], ["shift"], name="node_sub_offset"),
        helper.make_node("Reshape", ["shift", "shape_n111"], ["shift4"], name="node_reshape_shift"),
        helper.make_node("Mul", ["m", "gain"], ["mg"], name="node_gain"),
        helper.make_node("Add", ["mg", "shift4"], ["low_res_masks"], name="node_add_masks"),
        helper.make_node("Reshape", ["shift", "shape_n1"], ["shift2"], name="node_reshape_iou"),
        helper.make_node("Sigmoid", ["shift2"], ["iou_predictions"], name="node_sigmoid"),
    ]
    initializers = [
        helper.make_tensor("g", FLOAT, [64], [1.0] * 64),
        helper.make_tensor("beta", FLOAT, [64], [0.0] * 64),
        helper.make_tensor("axis1", INT64, [1], [1]),
        helper.make_tensor("zero", INT64, [], [0]),
        helper.make_tensor("frame", FLOAT, [], [1024.0]),
        helper.make_tensor("offset", FLOAT, [], [0.6]),
        helper.make_tensor("gain", FLOAT, [], [8.0]),
        helper.make_tensor("shape_n111", INT64, [4], [-1, 1, 1, 1]),
        helper.make_tensor("shape_n1", INT64, [2], [-1, 1]),
    ]
    return _save(
        nodes,
        "tiny_decoder",
        [
            helper.make_tensor_value_info("image_embeddings", FLOAT, [1, 256, 64, 64]),
            helper.make_tensor_value_info("point_coords", FLOAT, ["prompts", "points", 2]),
            helper.make_tensor_value_info("point_labels", FLOAT, ["prompts", "points"]),
        ],
        [
            helper.make_tensor_value_info("low_res_masks", FLOAT, ["prompts", 1, 64, 64]),
            helper.make_tensor_value_info("iou_predictions", FLOAT, ["prompts", 1]),
        ],
        initializers,
        path,
    )


def _rewrite_weights(src: Path, dst: Path, change: Callable[[np.ndarray], np.ndarray]) -> Path:
    model = onnx.load(os.fspath(src))
    for tensor in model.graph.initializer:
        array = numpy_helper.to_array(tensor)
        if array.dtype == np.float32 and array.size > 1:  # weights, not scalar constants (eps, scales)
            tensor.CopyFrom(numpy_helper.from_array(change(array).astype(np.float32), tensor.name))
    onnx.save(model, os.fspath(dst))
    return dst


def rounded_weights(src: Path, dst: Path, precision: str) -> Path:
    """The graph with its weights rounded as an engine of ``precision`` stores them: FP16, or TF32 (10
    mantissa bits, round to nearest)."""
    if precision.upper() == "FP16":
        return _rewrite_weights(src, dst, lambda a: a.astype(np.float16))
    bits = np.uint32(0x1000), np.uint32(0xFFFFE000)
    return _rewrite_weights(src, dst, lambda a: ((a.view(np.uint32) + bits[0]) & bits[1]).view(np.float32))


def perturbed_weights(src: Path, dst: Path, relative: float, seed: int = 0) -> Path:
    """The graph with every weight multiplied by ``1 + relative * N(0, 1)``: a broken engine."""
    rng = np.random.default_rng(seed)
    return _rewrite_weights(src, dst, lambda a: a * (1 + relative * rng.standard_normal(a.shape)))


def _cpp_float(value: float) -> str:
    """A float as C++'s ``std::ostream << float`` prints it (6 significant digits, nan/-nan/inf)."""
    if np.isnan(value):
        return "-nan" if np.signbit(value) else "nan"
    if np.isinf(value):
        return "-inf" if value < 0 else "inf"
    return f"{value:.6g}"


def trtexec_json(outputs: dict[str, np.ndarray]) -> str:
    """What ``trtexec --exportOutput`` writes (TensorRT 10.5 samples/common/sampleReporting.cpp)."""
    lines, sep = ["["], "  "
    for name, array in outputs.items():
        lines.append(f'{sep}{{ "name" : "{name}"')
        sep = ", "
        lines.append(f'  {sep}"dimensions" : "{"x".join(str(d) for d in array.shape)}"')
        values = sep.join(_cpp_float(float(v)) for v in np.asarray(array, np.float32).ravel())
        lines.append(f'  {sep}"values" : [ {values} ]')
        lines.append("  }")
    lines.append("]")
    return "\n".join(lines) + "\n"


Tamper = Callable[[str, str, np.ndarray], np.ndarray]


class FakeTrtexecInference:
    """``trtexec --loadEngine=P --shapes=... --loadInputs=n:f,... --exportOutput=J``: runs the ONNX file the
    plan was "built" from (the fake build writes ``engine for --onnx=<path>`` into the plan) with ONNX
    Runtime, applies ``tamper(model, output, array)`` (e.g. NaN, a wrong value), writes trtexec's JSON."""

    def __init__(self, tamper: Tamper | None = None, returncode: int = 0) -> None:
        self.tamper, self.returncode = tamper, returncode
        self.commands: list[list[str]] = []

    def __call__(self, command: Sequence[str]) -> subprocess.CompletedProcess[str]:
        self.commands.append(list(command))
        options = dict(arg[2:].split("=", 1) for arg in command[1:] if arg.startswith("--") and "=" in arg)
        if self.returncode:
            return subprocess.CompletedProcess(command, self.returncode, "", "[E] Error[3]: engine mismatch")
        onnx_path = Path(re.sub(r"^engine for --onnx=", "", Path(options["loadEngine"]).read_text()))
        specs, _ = graph_inputs(onnx_path)
        dtypes = {s.name: s.dtype for s in specs}
        shapes = {
            name: [int(d) for d in dims.split("x")]
            for name, dims in (item.rsplit(":", 1) for item in options["shapes"].split(","))
        }
        inputs = {}
        for item in options["loadInputs"].split(","):
            name, file = item.split(":", 1)
            inputs[name] = np.fromfile(file, dtypes[name]).reshape(shapes[name])
        _, output_names = graph_inputs(onnx_path)
        outputs = OnnxRuntimeRunner().run(onnx_path, inputs, output_names)
        model = onnx_path.parent.parent.name
        if self.tamper:
            outputs = {name: self.tamper(model, name, array.copy()) for name, array in outputs.items()}
        Path(options["exportOutput"]).write_text(trtexec_json(outputs))
        return subprocess.CompletedProcess(command, 0, "&&&& PASSED TensorRT.trtexec [TensorRT v100500]", "")
