"""The engine check of the entrypoint (mobilesamv2/export/verify.py): probe inputs, measures, verdicts, and
reading trtexec's output; with fake runners (no TensorRT here) and, once, the real exported graphs."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from tiny_engines import decoder_onnx, encoder_onnx, perturbed_weights, rounded_weights, trtexec_json

import segment_everything_contract as contract
from mobilesamv2.export import verify
from mobilesamv2.export.gpu import gpu_model_config
from mobilesamv2.export.tensorrt import EngineBuild, config_string_parameters

CPU_REPO = Path(__file__).resolve().parents[2] / "model_repository"


def gpu_build(model: str, **kwargs) -> EngineBuild:
    text = gpu_model_config((CPU_REPO / model / "config.pbtxt").read_text(), **kwargs)
    return EngineBuild.from_parameters(config_string_parameters(text))


def specs(*items) -> list[verify.GraphInput]:
    return [verify.GraphInput(name, np.dtype(dtype), dims) for name, dtype, dims in items]


ENCODER_SPECS = specs(("image", "uint8", ("b", 1024, 1024, 3)), ("image_size", "int32", ("b", 2)))
DECODER_SPECS = specs(
    ("image_embeddings", "float32", (1, 256, 64, 64)),
    ("point_coords", "float32", ("n", "p", 2)),
    ("point_labels", "float32", ("n", "p")),
)
INTERACTIVE_SPECS = DECODER_SPECS + specs(
    ("mask_input", "float32", ("n", 1, 256, 256)), ("has_mask_input", "float32", ("n",))
)


# --- probe inputs -------------------------------------------------------------------------------------------


def test_encoder_probe_is_two_deterministic_canvases_inside_the_profile():
    shapes = gpu_build("image_encoder").shapes
    [case] = verify.probe_cases(ENCODER_SPECS, shapes)
    image, size = case.inputs["image"], case.inputs["image_size"]
    assert (image.shape, image.dtype, size.dtype) == ((2, 1024, 1024, 3), np.uint8, np.int32)
    assert size.tolist() == [[768, 1024], [1024, 683]]  # landscape, portrait: long side 1024
    assert image[0, 800:].std() > 50 and image[1, :, 700:].std() > 50  # noise in the padding the graph zeroes
    assert image[0, :768].std() > 30  # and content inside
    [again] = verify.probe_cases(ENCODER_SPECS, shapes)
    assert np.array_equal(again.inputs["image"], image)


def test_encoder_probe_fits_a_profile_of_batch_one():
    shapes = {"image": ((1, 1024, 1024, 3),) * 3, "image_size": ((1, 2),) * 3}
    [case] = verify.probe_cases(ENCODER_SPECS, shapes)
    assert case.inputs["image"].shape == (1, 1024, 1024, 3)


def test_decoder_probe_has_boxes_and_the_longest_point_prompt_with_its_padding_point():
    shapes = gpu_build("prompt_decoder").shapes
    boxes, points = verify.probe_cases(DECODER_SPECS, shapes)
    assert boxes.inputs["point_coords"].shape == (5, 2, 2)
    assert (boxes.inputs["point_labels"] == [2, 3]).all()
    coords, labels = points.inputs["point_coords"], points.inputs["point_labels"]
    longest = contract.HARD_LIMITS.max_points_per_prompt
    assert coords.shape == (3, contract.DECODER_MAX_POINTS, 2) == (3, longest + 1, 2)
    # prompt 0: the contract's longest prompt, then SAM's padding point (label -1 at the origin)
    assert (labels[0, :longest] >= 0).all() and labels[0, -1] == -1 and (coords[0, -1] == 0).all()
    assert set(labels[0, :longest].tolist()) == {0.0, 1.0}  # foreground and background points
    assert labels[1, 0] == 1 and (labels[1, 1:] == -1).all()  # one point, then padding
    assert labels[2, :2].tolist() == [1, 1] and (labels[2, 2:] == -1).all()
    assert (coords[labels >= 0] > 0).all() and (coords[labels >= 0] < 1024).all()
    embedding = points.inputs["image_embeddings"]
    assert embedding.shape == (1, 256, 64, 64) and embedding.dtype == np.float32
    assert 0.7 < embedding.std() < 1.3 and np.array_equal(embedding, boxes.inputs["image_embeddings"])


def test_decoder_probe_follows_a_smaller_profile():
    shapes = gpu_build("prompt_decoder", points_per_prompt=(1, 2, 4), max_prompts=2, opt_prompts=2).shapes
    boxes, points = verify.probe_cases(DECODER_SPECS, shapes)
    assert boxes.inputs["point_coords"].shape == (2, 2, 2) and points.inputs["point_coords"].shape == (
        2,
        4,
        2,
    )


def test_a_probe_outside_the_profile_is_refused():
    shapes = {"point_coords": ((1, 3, 2), (1, 3, 2), (8, 3, 2)), "point_labels": ((1, 3), (1, 3), (8, 3))}
    [points] = verify.probe_cases(DECODER_SPECS, shapes)  # no box case: 2 points are below the profile
    assert points.inputs["point_coords"].shape == (3, 3, 2)
    bad = {"image": ((1, 1024, 1024, 3), (1, 1024, 1024, 3), (1, 1024, 1024, 3)), "image_size": ((2, 2),) * 3}
    with pytest.raises(ValueError, match="outside the engine profile"):
        verify.probe_cases(ENCODER_SPECS, bad)


def test_interactive_decoder_probe_is_clicks_then_their_refinement_with_the_mask_answered():
    """What SAM's click loop sends: a few prompts of integer labels ending with the padding point, no mask
    (has_mask_input 0); then the same prompts with one more click each and, as mask_input, the best of the
    masks answered to the first call (has_mask_input 1)."""
    [clicks] = verify.probe_cases(INTERACTIVE_SPECS, gpu_build("interactive_decoder").shapes)
    coords, labels = clicks.inputs["point_coords"], clicks.inputs["point_labels"]
    assert coords.shape == (3, 4, 2) and labels.dtype == np.float32
    assert set(np.unique(labels).tolist()) == {-1.0, 0.0, 1.0} and (labels[:, -1] == -1).all()
    assert [int((row >= 0).sum()) for row in labels] == [1, 2, 3]
    assert not clicks.inputs["has_mask_input"].any() and not clicks.inputs["mask_input"].any()

    rng = np.random.default_rng(1)
    answered = {
        "masks": rng.standard_normal((3, 4, 256, 256)).astype(np.float32),
        "iou_predictions": np.array(
            [[0.9, 0.2, 0.8, 0.1], [0, 0.1, 0.2, 0.3], [0, 0.7, 0.3, 0.1]], np.float32
        ),
    }
    refinement = clicks.follow(answered)
    assert refinement.inputs["has_mask_input"].tolist() == [1.0, 1.0, 1.0]
    best = [2, 3, 1]  # the best of SAM's multimask tokens 1-3, not token 0
    assert np.array_equal(refinement.inputs["mask_input"][:, 0], answered["masks"][[0, 1, 2], best])
    more = refinement.inputs["point_labels"]
    assert [int((row >= 0).sum()) for row in more] == [2, 3, 4] and (more[:, -1] == -1).all()
    assert np.array_equal(refinement.inputs["point_coords"][0, :1], coords[0, :1])  # the clicks are kept
    verify.fit_to_engine(refinement, INTERACTIVE_SPECS, gpu_build("interactive_decoder").shapes)


def test_other_models_get_seeded_float_inputs_and_others_are_refused():
    [case] = verify.probe_cases(specs(("x", "float32", (2, 3))), {})
    assert case.inputs["x"].shape == (2, 3) and case.inputs["x"].dtype == np.float32
    [case] = verify.probe_cases(specs(("x", "float32", ("n", 3))), {"x": ((1, 3), (4, 3), (8, 3))})
    assert case.inputs["x"].shape == (4, 3)  # the profile's opt shape
    with pytest.raises(ValueError, match="no probe values"):
        verify.probe_cases(specs(("ids", "int64", (2,))), {})
    with pytest.raises(ValueError, match="dynamic"):
        verify.probe_cases(specs(("x", "float32", ("n", 3))), {})


# --- measures and verdicts ----------------------------------------------------------------------------------


def test_scaled_difference_and_mask_iou():
    a = np.array([10.0, -4.0])
    assert verify.scaled_max_diff(a, a + np.array([0.5, 0])) == pytest.approx(0.05)  # scaled by max|a| = 10
    assert verify.scaled_max_diff(a / 100, a / 100 + np.array([0.05, 0])) == pytest.approx(
        0.05
    )  # by 1 below 1
    assert np.isnan(verify.scaled_max_diff(a, np.array([np.nan, 0.0])))
    logits = np.full((2, 1, 4, 4), -1.0)
    logits[0, 0, :2] = 1.0  # prompt 0: 8 pixels; prompt 1: empty
    other = logits.copy()
    other[0, 0, 0, :2] = -1.0
    assert verify.lowest_mask_iou(logits, logits) == 1.0  # empty == empty counts as agreement
    assert verify.lowest_mask_iou(logits, other) == pytest.approx(6 / 8)


def _check(expected, got, precision="TF32", tolerances=None):
    return verify.compare_outputs("case", expected, got, precision, tolerances or verify.Tolerances())


def test_compare_outputs_verdicts():
    masks = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32) * 10
    iou = np.array([[0.9], [0.5], [0.1]], np.float32)
    expected = {"low_res_masks": masks, "iou_predictions": iou}
    assert all(c.ok for c in _check(expected, expected))
    [bad_masks, _] = _check(expected, {"low_res_masks": -masks, "iou_predictions": iou}, "FP16")
    assert not bad_masks.ok and bad_masks.mask_iou == 0.0 and bad_masks.max_scaled_diff_tolerance == 0.05
    assert "mask IoU (logits > 0) 0.0000 < 0.95" in bad_masks.describe()
    assert "mask pixels differing (logits > 0) 100.0000% > 0.5000%" in bad_masks.describe()
    nan = masks.copy()
    nan[0, 0, 0, :3] = np.nan
    [check, _] = _check(expected, {"low_res_masks": nan, "iou_predictions": iou})
    assert (check.non_finite, check.problem) == (3, "the engine produced NaN or infinite values")
    assert "3 of 192 values are NaN or infinite" in check.describe()
    [_, shape] = _check(expected, {"low_res_masks": masks, "iou_predictions": iou[:2]})
    assert "shape [2, 1] differs" in shape.problem
    [_, missing] = _check(expected, {"low_res_masks": masks})
    assert missing.problem == "the engine returned no such output"
    [broken, _] = _check({"low_res_masks": nan, "iou_predictions": iou}, expected)
    assert "ONNX model is broken" in broken.problem
    slightly = {"low_res_masks": masks + 0.02, "iou_predictions": iou}  # 0.02 / max|masks| < 1e-2
    assert all(c.ok for c in _check(expected, slightly))


def test_a_tiny_mask_losing_an_outline_pixel_does_not_refuse_an_engine():
    """256 masks, one of 6 low-res pixels whose outline pixel sits at the threshold and flips: its IoU is 5/6,
    but 1 pixel in 1M differs. A large mask that loses a strip is still refused."""
    reference = np.full((64, 4, 64, 64), -4.0, np.float32)
    reference[:, :, 8:40, 10:50] = 4.0  # large masks, 31% of the frame
    reference[7, 2] = -4.0
    reference[7, 2, 30:32, 30:33] = 4.0
    reference[7, 2, 30, 30] = 0.02  # just above the threshold
    engine = reference.copy()
    engine[7, 2, 30, 30] = -0.01
    [check] = _check({"masks": reference}, {"masks": engine})
    assert check.ok, check.describe()
    assert check.mask_disagreement == pytest.approx(1 / reference.size) and check.mask_iou == 1.0
    assert verify.mask_ious(reference, engine)[7 * 4 + 2] == pytest.approx(5 / 6)  # not judged by IoU

    reference[3, 1, 8:40, 40:50] = 0.02
    engine[3, 1, 8:40, 40:50] = -0.01  # a quarter of a large mask gone (the logits barely moved)
    [check] = _check({"masks": reference}, {"masks": engine})
    assert not check.ok and check.mask_iou == pytest.approx(0.75)
    assert "mask IoU (logits > 0) 0.7500 < 0.95" in check.describe()

    reference[:, :, 8:40, 10] = 0.02
    many = reference.copy()
    many[:, :, 8:40, 10] = -0.01  # every large mask loses its edge column: 0.8% of the pixels, IoU 0.975
    [check] = _check({"masks": reference}, {"masks": many})
    assert not check.ok and check.mask_disagreement == pytest.approx(32 / 4096)
    assert "mask pixels differing (logits > 0) 0.7812% > 0.5000%" in check.describe()


def test_the_reference_uses_the_cpus_this_process_may_use(monkeypatch):
    """ONNX Runtime's default (0) counts the host's cores, not a pod's CPU limit."""
    from mobilesamv2.inside_triton import glue

    monkeypatch.setattr(glue, "available_cpus", lambda: 3)
    assert verify.OnnxRuntimeRunner().session_options().intra_op_num_threads == 3
    assert verify.OnnxRuntimeRunner(threads=1).session_options().intra_op_num_threads == 1


def test_tolerances():
    tolerances = verify.Tolerances()
    assert (tolerances.max_scaled_diff("TF32"), tolerances.max_scaled_diff("FP32")) == (1e-2, 1e-2)
    assert tolerances.max_scaled_diff("FP16") == 5e-2 and tolerances.min_mask_iou == 0.95
    assert (tolerances.max_mask_disagreement, tolerances.min_mask_area) == (5e-3, 1e-2)
    for bad in (
        {"max_scaled_diff_fp32": 0},
        {"max_scaled_diff_fp16": float("nan")},
        {"min_mask_iou": 1.1},
        {"max_mask_disagreement": -0.1},
        {"min_mask_area": 2},
    ):
        with pytest.raises(ValueError):
            verify.Tolerances(**bad)


# --- trtexec ------------------------------------------------------------------------------------------------


def test_trtexec_output_json_with_cpp_nan_and_infinities():
    text = trtexec_json({"a": np.array([[1.5, -2.0], [3.25e-7, 4.0]]), "b": np.zeros(3)})
    text = text.replace("3.25e-07", "nan").replace(" 4 ", " -nan ").replace("0, 0, 0", "inf, -inf, 0")
    outputs = verify.read_trtexec_outputs(text)
    assert outputs["a"].shape == (2, 2) and outputs["a"][0].tolist() == [1.5, -2.0]
    assert np.isnan(outputs["a"][1]).all()
    assert outputs["b"].tolist() == [np.inf, -np.inf, 0.0]
    # "dimensions" written as TensorRT's Dims stream operator does, "(2, 2)", is read the same way
    assert verify.read_trtexec_outputs(text.replace('"2x2"', '"(2, 2)"'))["a"].shape == (2, 2)
    with pytest.raises(ValueError, match="3 values for dimensions"):
        verify.read_trtexec_outputs(text.replace('"3"', '"4"'))


def test_trtexec_inference_command():
    command = verify.trtexec_inference_command(
        "/usr/src/tensorrt/bin/trtexec",
        "/cache/m/model.plan",
        {"image": "/tmp/v/input0.bin", "image_size": "/tmp/v/input1.bin"},
        {"image": (2, 1024, 1024, 3), "image_size": (2, 2)},
        "/tmp/v/outputs.json",
    )
    assert command == [
        "/usr/src/tensorrt/bin/trtexec",
        "--loadEngine=/cache/m/model.plan",
        "--shapes=image:2x1024x1024x3,image_size:2x2",
        "--loadInputs=image:/tmp/v/input0.bin,image_size:/tmp/v/input1.bin",
        "--exportOutput=/tmp/v/outputs.json",
        "--iterations=1",
        "--warmUp=0",
        "--duration=0",
        "--avgRuns=1",
    ]
    with pytest.raises(ValueError, match="cannot be passed"):
        verify.trtexec_inference_command("trtexec", "p", {"a:0": "/x"}, {"a:0": (1,)}, "/o")


def test_trtexec_runner_writes_raw_inputs_and_reads_the_exported_outputs(tmp_path):
    seen = {}

    def fake_trtexec(command):
        options = dict(a[2:].split("=", 1) for a in command[1:])
        for item in options["loadInputs"].split(","):
            name, path = item.split(":")
            seen[name] = Path(path).read_bytes()
        Path(options["exportOutput"]).write_text(trtexec_json({"y": np.arange(6.0).reshape(2, 3)}))
        return subprocess.CompletedProcess(command, 0, "", "")

    runner = verify.TrtexecRunner("trtexec", fake_trtexec, workdir=tmp_path)
    inputs = {"image": np.arange(6, dtype=np.uint8).reshape(1, 2, 3), "size": np.array([[7, 9]], np.int32)}
    out = runner.run(tmp_path / "model.plan", inputs, ["y"])
    assert out["y"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert seen == {"image": bytes(range(6)), "size": np.array([7, 9], np.int32).tobytes()}
    assert list(tmp_path.iterdir()) == []  # scratch files removed

    def failing(command):
        return subprocess.CompletedProcess(command, 1, "[I] loading\n", "[E] Error[1]: out of memory\n")

    with pytest.raises(
        verify.EngineRunError, match=r"exit 1\):\n  \[I\] loading\n  \[E\] Error\[1\]: out of memory"
    ):
        verify.TrtexecRunner("trtexec", failing).run(tmp_path / "model.plan", inputs, ["y"])
    with pytest.raises(verify.EngineRunError, match="no output z"):
        runner.run(tmp_path / "model.plan", inputs, ["z"])


# --- one engine ---------------------------------------------------------------------------------------------


class PlanIsOnnx:
    """An "engine runner" that runs the ONNX file next to the plan with ONNX Runtime, optionally changed."""

    name = "fake"

    def __init__(self, onnx_path: Path, change=lambda name, array: array) -> None:
        self.onnx_path, self.change = onnx_path, change

    def run(self, model, inputs, output_names):
        out = verify.OnnxRuntimeRunner().run(self.onnx_path, inputs, output_names)
        return {name: self.change(name, array) for name, array in out.items()}


def test_verify_engine_agreeing_nan_and_unrunnable(tmp_path):
    path = decoder_onnx(tmp_path / "decoder.onnx")
    shapes = gpu_build("prompt_decoder").shapes
    reference = verify.OnnxRuntimeRunner()
    good = verify.verify_engine(
        "prompt_decoder/1", path, tmp_path / "p", "FP16", shapes, PlanIsOnnx(path), reference
    )
    assert good.passed and good.worst_scaled_diff == 0.0 and good.worst_mask_iou == 1.0
    assert len(good.checks) == 4 and set(good.cases) == {
        "5 box prompts",
        "3 point prompts of 33 points (with padding)",
    }
    assert good.summary().endswith(": ok")

    nan = PlanIsOnnx(path, lambda name, a: np.full_like(a, np.nan))
    bad = verify.verify_engine("prompt_decoder/1", path, tmp_path / "p", "FP16", shapes, nan, reference)
    assert not bad.passed and np.isnan(bad.worst_scaled_diff)
    record = json.loads(json.dumps(bad.to_json(), allow_nan=False))  # engine.json stays valid JSON
    assert record["passed"] is False and record["max_scaled_diff"] == "nan"
    assert "nan > tolerance 0.05" in bad.failures()[0]

    class Broken:
        name = "broken"

        def run(self, model, inputs, output_names):
            raise verify.EngineRunError("trtexec could not run it")

    unrunnable = verify.verify_engine("m", path, tmp_path / "p", "FP16", shapes, Broken(), reference)
    assert not unrunnable.passed and unrunnable.failures() == ["5 box prompts: trtexec could not run it"]


def test_verify_engine_on_the_small_encoder(tmp_path):
    path = encoder_onnx(tmp_path / "encoder.onnx")
    result = verify.verify_engine(
        "image_encoder/1",
        path,
        tmp_path / "p",
        "TF32",
        gpu_build("image_encoder").shapes,
        PlanIsOnnx(path, lambda name, a: a * 1.001),
        verify.OnnxRuntimeRunner(),
    )
    assert result.passed and 0 < result.worst_scaled_diff < 1e-2 and result.worst_mask_iou is None


class Recorded:
    """ONNX Runtime, keeping every case's inputs and outputs."""

    name = "onnxruntime (recorded)"

    def __init__(self) -> None:
        self.runner, self.calls = verify.OnnxRuntimeRunner(), []

    def run(self, model, inputs, output_names):
        outputs = self.runner.run(model, inputs, output_names)
        self.calls.append((dict(inputs), outputs))
        return outputs


def test_engines_with_weights_of_their_precision_pass_and_perturbed_ones_are_refused(
    built_repository, tmp_path
):
    """On the real exported graphs (the TensorRT sources) at the GPU profiles: a stand-in engine that runs the
    same graph with its weights rounded to the engine's precision (TF32 encoder and interactive decoder, FP16
    prompt decoder) passes the check; one whose weights are perturbed by 2% is refused. The probes give
    non-degenerate masks."""
    sources = {
        "image_encoder": built_repository / "image_encoder" / "1" / "plain.onnx",
        "prompt_decoder": built_repository / "prompt_decoder" / "1" / "plain.onnx",
        "interactive_decoder": built_repository / "interactive_decoder" / "1" / "model.onnx",
    }
    for model, source in sources.items():
        build = gpu_build(model)
        assert build.precision == ("FP16" if model == "prompt_decoder" else "TF32")  # the defaults
        engine = rounded_weights(source, tmp_path / f"{model}.onnx", build.precision)
        reference = Recorded()
        result = verify.verify_engine(
            model, source, engine, build.precision, build.shapes, PlanIsOnnx(engine), reference
        )
        assert result.passed, result.summary()
        assert all(np.isfinite(v).all() for _, outputs in reference.calls for v in outputs.values())
        if model == "image_encoder":  # the costly one: its refusal of a broken engine is the tiny graphs'
            continue
        for inputs, outputs in reference.calls:
            masks = next(v for k, v in outputs.items() if k.endswith("masks")) > 0
            assert masks.shape[0] == inputs["point_coords"].shape[0] and 0.01 < masks.mean() < 0.99
        if model == "interactive_decoder":
            assert list(result.cases) == [
                "3 click prompts",
                "refinement of the 3 prompts with a previous mask",
            ]
            assert reference.calls[1][0]["has_mask_input"].tolist() == [1.0, 1.0, 1.0]
        broken = perturbed_weights(source, tmp_path / f"{model}-perturbed.onnx", 0.02)
        refused = verify.verify_engine(
            model, source, broken, build.precision, build.shapes, PlanIsOnnx(broken), reference
        )
        assert not refused.passed
        assert refused.worst_mask_disagreement > verify.Tolerances().max_mask_disagreement
