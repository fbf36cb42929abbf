"""ONNX exports against PyTorch (ONNX Runtime, CPU), and the in-process reference pipeline on a real image."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from mobilesamv2.export import onnx_export
from mobilesamv2.export.cli import BUILD_INFO, ONNX_FILES
from mobilesamv2.modeling.checkpoints import encoder_spec, load_image_encoder
from mobilesamv2.modeling.image_encoder import ImageEncoderGraph
from mobilesamv2.processing.image import encoder_canvas


def _run(path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return onnx_export.ort_session(path).run(None, feeds)


def test_build_report_records_parity_of_every_graph(built_repository):
    info = json.loads((built_repository / BUILD_INFO).read_text())
    assert info["weights"] == "fake" and info["encoder"] == "efficientvit_l2"
    assert {e["name"] for e in info["exports"]} == {
        "image_encoder",
        "prompt_decoder",
        "prompt_decoder (plain)",
        "interactive_decoder",
        "detector",
    }
    for export in info["exports"]:
        assert export["max_abs_diff"] <= export["tolerance"]
    decoder = next(e for e in info["exports"] if e["name"] == "prompt_decoder")
    assert {"N=1 boxes", "N=7 boxes"} <= set(decoder["cases"])  # the suite's build (tests/conftest.py)


def test_graph_signatures_are_dynamic_where_serving_varies(built_repository):
    def dims(path, kind):
        graph = onnx.load(str(built_repository / path), load_external_data=False).graph
        values = graph.input if kind == "in" else graph.output
        return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}

    encoder = dims(ONNX_FILES["image_encoder"], "in")
    assert isinstance(encoder["image"][0], str) and encoder["image"][1:] == [1024, 1024, 3]
    decoder = dims(ONNX_FILES["prompt_decoder"], "in")
    assert decoder["image_embeddings"] == [1, 256, 64, 64]
    assert all(isinstance(d, str) for d in decoder["point_coords"][:2]), "prompt count must not be fixed"
    detector = dims(ONNX_FILES["detector"], "in")
    assert all(isinstance(d, str) for d in detector["images"][:3])


def test_efficientvit_encoder_onnx_matches_pytorch_at_batch_1_and_2(built_repository, fake_weights, bus_rgb):
    graph = ImageEncoderGraph(
        load_image_encoder("efficientvit_l2", fake_weights / "l2.pt"), input_pool=2
    ).eval()
    canvases = [encoder_canvas(bus_rgb), encoder_canvas(np.ascontiguousarray(bus_rgb[:500, :900]))]
    image = np.stack([c for c, _ in canvases])
    size = np.stack([s for _, s in canvases])
    (got,) = _run(built_repository / ONNX_FILES["image_encoder"], {"image": image, "image_size": size})
    with torch.no_grad():
        expected = graph(torch.from_numpy(image), torch.from_numpy(size)).numpy()
    assert np.abs(got - expected).max() < 1e-3
    (single,) = _run(
        built_repository / ONNX_FILES["image_encoder"], {"image": image[1:], "image_size": size[1:]}
    )
    assert np.abs(single[0] - expected[1]).max() < 1e-3


def test_encoder_is_served_with_fused_gelus_and_matmul_resizes_and_its_tensorrt_source_is_opset_18(
    built_repository, bus_rgb
):
    """The ONNX Runtime graph: one Gelu node per GELU (opset 20) and no Resize (the neck's bicubic resizes are
    MatMuls). The TensorRT source (plain.onnx): the same graph at opset 18 with every Gelu expanded, and the
    same embeddings."""
    served, served_opset = onnx_export.op_counts(built_repository / ONNX_FILES["image_encoder"])
    plain, plain_opset = onnx_export.op_counts(built_repository / ONNX_FILES["image_encoder_plain"])
    assert served_opset == 20 and plain_opset == 18
    assert served.get("Gelu", 0) >= 50 and "Resize" not in served and "Tanh" not in served
    assert "Gelu" not in plain and plain["Tanh"] == served["Gelu"] and "Resize" not in plain
    canvas, size = encoder_canvas(bus_rgb)
    feeds = {"image": canvas[None], "image_size": size[None]}
    (expected,) = _run(built_repository / ONNX_FILES["image_encoder"], feeds)
    (got,) = _run(built_repository / ONNX_FILES["image_encoder_plain"], feeds)
    assert np.abs(got - expected).max() < 1e-4 * max(1.0, np.abs(expected).max())


def test_dfl_softmax_on_last_axis_gives_upstreams_box_distances_and_restores_it():
    from ultralytics.nn.modules.block import DFL

    from mobilesamv2.modeling.detector import dfl_softmax_on_last_axis

    head = torch.nn.Sequential(DFL(26), DFL(16))
    x = [torch.randn(2, 4 * c, 300, generator=torch.Generator().manual_seed(c)) * 5 for c in (26, 16)]
    expected = [layer(v) for layer, v in zip(head, x, strict=True)]
    with dfl_softmax_on_last_axis(head) as count:
        got = [layer(v) for layer, v in zip(head, x, strict=True)]
    assert count == 2
    for e, g in zip(expected, got, strict=True):
        assert g.shape == e.shape and (g - e).abs().max() < 1e-4
    assert all("forward" not in vars(layer) for layer in head)  # upstream's forward is back
    assert torch.equal(head[0](x[0]), expected[0])


def test_detector_graph_takes_every_softmax_over_the_last_axis(built_repository):
    model = onnx.load(str(built_repository / ONNX_FILES["detector"]), load_external_data=False)
    softmaxes = [n for n in model.graph.node if n.op_type == "Softmax"]
    assert softmaxes, "the DFL softmax is gone: the check says nothing"
    for node in softmaxes:
        axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
        assert axis in (-1, 3), (node.name, axis)  # the DFL's probabilities are (B, 4, A, reg_max)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_expand_gelu_gives_the_gelu_values_at_opset_18(tmp_path, approximate):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Gelu", ["x"], ["y"], approximate=approximate, name="g")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])],
    )
    path = tmp_path / "gelu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), path)
    assert onnx_export.write_tensorrt_source(path, tmp_path / "plain.onnx") == 1
    ops, opset = onnx_export.op_counts(tmp_path / "plain.onnx")
    assert opset == 18 and "Gelu" not in ops and ops.get("Erf" if approximate == "none" else "Tanh") == 1
    x = np.linspace(-6, 6, 101, dtype=np.float32)
    (got,) = _run(tmp_path / "plain.onnx", {"x": x})
    expected = torch.nn.functional.gelu(torch.from_numpy(x), approximate=approximate).numpy()
    assert np.abs(got - expected).max() < 1e-5


@pytest.mark.slow
@pytest.mark.server  # exports ONNX models
@pytest.mark.parametrize("encoder", ["tiny_vit", "sam_vit_h"])
def test_other_encoders_export_with_parity(fake_weights, bus_rgb, tmp_path, encoder):
    """TinyViT and ViT-H (2 blocks in CI: same width, heads, window and global attention) export and match.
    The export traces at batch 2, so the check at batch 1 also proves the batch axis dynamic."""
    spec = encoder_spec(encoder)
    graph = ImageEncoderGraph(
        load_image_encoder(encoder, fake_weights / spec.filename), spec.input_pool
    ).eval()
    report = onnx_export.export_image_encoder(graph, tmp_path / "model.onnx", [encoder_canvas(bus_rgb)])
    assert report.max_abs_diff < 1e-3 and report.cases == ["batch 1"]


def test_reference_pipeline_on_bus(reference_pipeline, bus_rgb):
    result = reference_pipeline(bus_rgb, max_detections=32)
    h, w = bus_rgb.shape[:2]
    assert 0 < len(result) <= 32
    assert (
        np.all(result.boxes[:, :2] >= 0)
        and np.all(result.boxes[:, 2] <= w)
        and np.all(result.boxes[:, 3] <= h)
    )
    assert np.all(result.boxes[:, 2:] > result.boxes[:, :2])
    assert np.all(np.diff(result.scores) <= 0)
    masks = result.masks()
    assert masks.shape == (len(result), h, w) and masks.any(axis=(1, 2)).all()
    assert set(result.timings_ms) == {"discovery", "encoder", "decoder"}
