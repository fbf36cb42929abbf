"""Every exported graph is one TensorRT can parse at its inputs: a uint8 graph input may feed only Cast nodes
(TensorRT accepts uint8 only as the direct input of a Cast: NVIDIA/TensorRT#3985, #2809)."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from mobilesamv2.export.cli import ONNX_FILES
from mobilesamv2.export.onnx_export import cast_uint8_inputs_first


def uint8_inputs_feeding_other_ops(model: onnx.ModelProto) -> dict[str, list[str]]:
    """``{uint8 input: ["OpType node_name", ...]}`` for every consumer that is not a Cast."""
    graph = model.graph
    found = {}
    for value in graph.input:
        if value.type.tensor_type.elem_type != TensorProto.UINT8:
            continue
        bad = [f"{n.op_type} {n.name}" for n in graph.node if value.name in n.input and n.op_type != "Cast"]
        if bad:
            found[value.name] = bad
    return found


@pytest.mark.parametrize("key", sorted(ONNX_FILES))
def test_uint8_inputs_of_every_exported_graph_feed_only_casts(built_repository, key):
    model = onnx.load(str(built_repository / ONNX_FILES[key]), load_external_data=False)
    assert uint8_inputs_feeding_other_ops(model) == {}
    for value in model.graph.input:  # and each uint8 input is used at all (else the check says nothing)
        if value.type.tensor_type.elem_type == TensorProto.UINT8:
            assert any(value.name in n.input for n in model.graph.node), value.name


def test_the_served_graphs_with_uint8_inputs_are_the_ones_expected(built_repository):
    with_uint8 = set()
    for key, path in ONNX_FILES.items():
        graph = onnx.load(str(built_repository / path), load_external_data=False).graph
        if any(v.type.tensor_type.elem_type == TensorProto.UINT8 for v in graph.input):
            with_uint8.add(key)
    assert with_uint8 == {"image_encoder", "image_encoder_plain", "detector"}


def _graph(nodes, path: Path) -> Path:
    model = helper.make_model(
        helper.make_graph(
            nodes,
            "g",
            [helper.make_tensor_value_info("images", TensorProto.UINT8, ["b", "h", "w", 3])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])],
        ),
        opset_imports=[helper.make_opsetid("", 18)],
    )
    onnx.save(model, path)
    return path


def test_shape_readers_of_a_uint8_input_move_to_the_cast_output(tmp_path):
    """What torch's exporter writes for dynamic dimensions: Shape(images) before Cast(images)."""
    path = _graph(
        [
            helper.make_node("Shape", ["images"], ["shape"], name="node_shape"),
            helper.make_node("Cast", ["images"], ["x"], name="node_cast", to=TensorProto.FLOAT),
            helper.make_node("Cast", ["shape"], ["s"], name="node_cast_shape", to=TensorProto.FLOAT),
            helper.make_node("ReduceSum", ["x"], ["t"], name="node_sum", keepdims=0),
            helper.make_node("Add", ["t", "s"], ["y"], name="node_add"),
        ],
        tmp_path / "g.onnx",
    )
    assert cast_uint8_inputs_first(path) is True
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert uint8_inputs_feeding_other_ops(model) == {}
    assert [n.name for n in model.graph.node][:2] == ["node_cast", "node_shape"]  # still topologically sorted
    assert cast_uint8_inputs_first(path) is False  # nothing left to do


def test_computing_on_a_uint8_input_is_refused(tmp_path):
    path = _graph(
        [
            helper.make_node("Transpose", ["images"], ["t"], name="node_permute", perm=[0, 3, 1, 2]),
            helper.make_node("Cast", ["t"], ["y"], name="node_cast", to=TensorProto.FLOAT),
        ],
        tmp_path / "g.onnx",
    )
    with pytest.raises(ValueError, match="uint8 input 'images' feeds Transpose"):
        cast_uint8_inputs_first(path)
