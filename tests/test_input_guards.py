"""Input guards of the Python-based ONNX runner: parameter syntax, verdicts and messages, and the committed
configs' guards against the contract (a limit changes in one place). No server: pure numpy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

import segment_everything_contract as contract
from mobilesamv2.inside_triton.glue import Parameters
from mobilesamv2.inside_triton.input_guards import GuardConfigError, InputGuards, InputInfo, InputRejected
from mobilesamv2.processing import boxes as box_ops
from segment_everything_contract import ContractError

REPO = Path(__file__).resolve().parents[1]
F32, I32 = np.dtype(np.float32), np.dtype(np.int32)

INPUTS = {
    "emb": InputInfo(F32, (1, 4)),
    "xy": InputInfo(F32, (-1, -1, 2)),
    "lab": InputInfo(F32, (-1, -1)),
    "size": InputInfo(I32, (-1, 2)),
}


def guards(**params: str) -> InputGuards:
    return InputGuards.from_parameters("m", params, INPUTS)


def feeds(n: int = 2, p: int = 3, **over: np.ndarray) -> dict[str, np.ndarray]:
    base = {
        "emb": np.zeros((1, 4), np.float32),
        "xy": np.full((n, p, 2), 10.0, np.float32),
        "lab": np.ones((n, p), np.float32),
        "size": np.array([[100, 200]], np.int32),
    }
    return {**base, **over}


FULL = {
    "max_dims": "xy=4,5,2; lab=4,5",
    "same_dims": "xy:0,lab:0;xy:1,lab:1",
    "finite_inputs": "emb, xy",
    "value_ranges": "xy=-1024:2048;lab=-1:3;size=1:",
}


# ------------------------------------------------------------------------------------------------- parsing


def test_parsing_and_description():
    g = guards(**FULL)
    assert g.max_dims == {"xy": (4, 5, 2), "lab": (4, 5)}
    assert g.same_dims == ((("xy", 0), ("lab", 0)), (("xy", 1), ("lab", 1)))
    assert g.finite_inputs == ("emb", "xy")
    assert g.value_ranges == {"xy": (-1024.0, 2048.0), "lab": (-1.0, 3.0), "size": (1.0, None)}
    assert g.describe()["max_dims"] == {"xy": [4, 5, 2], "lab": [4, 5]}
    assert guards(max_dims="xy=*,5,*").max_dims == {"xy": (None, 5, None)}
    assert not guards() and not guards(max_dims=" ", value_ranges="") and guards(**FULL)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"max_dims": "xy"}, r"max_dims: entry 'xy' is not 'input=value'"),
        ({"max_dims": "nope=1,2"}, r"'nope' is not an input of the model \(inputs: emb, xy, lab, size\)"),
        ({"max_dims": "xy=4,5"}, r"'xy' has 3 axes \[-1, -1, 2\], got 2 bounds"),
        ({"max_dims": "xy=4,x,2"}, r"'xy' bound 'x' is not an integer >= 1 or '\*'"),
        ({"max_dims": "xy=0,5,2"}, r"bound '0' is not an integer >= 1"),
        ({"max_dims": "xy=4,5,1"}, r"'xy' axis 2 is fixed at 2, the bound 1 refuses every request"),
        ({"max_dims": "xy=4,5,2;xy=4,5,2"}, r"input 'xy' is given twice"),
        ({"same_dims": "xy:0"}, r"group 'xy:0' needs two axes or more"),
        ({"same_dims": "xy:0,lab"}, r"'lab' is not 'input:axis'"),
        ({"same_dims": "xy:0,lab:2"}, r"'lab' has 2 axes, no axis 2"),
        ({"finite_inputs": "size"}, r"'size' is int32, only floating-point inputs"),
        ({"finite_inputs": "xy,xy"}, r"an input is given twice"),
        ({"value_ranges": "xy=1"}, r"'xy=1' is not 'input=low:high'"),
        ({"value_ranges": "xy=1:2:3"}, r"is not 'input=low:high'"),
        ({"value_ranges": "xy=a:2"}, r"bound 'a' of 'xy' is not a number"),
        ({"value_ranges": "xy=nan:2"}, r"bound of 'xy' is NaN"),
        ({"value_ranges": "xy=3:2"}, r"'xy' has low 3 > high 2"),
    ],
)
def test_bad_parameters_fail_the_load_with_a_clear_message(params, message):
    with pytest.raises(GuardConfigError, match=message):
        guards(**params)


# ---------------------------------------------------------------------------------------------- verdicts


def refusal(g: InputGuards, inputs: dict[str, np.ndarray]) -> str:
    with pytest.raises(InputRejected) as info:
        g.check(inputs)
    assert isinstance(info.value, ContractError)  # answered with INVALID_ARG by glue.classify_error
    return str(info.value)


def test_good_inputs_pass():
    guards(**FULL).check(feeds(4, 5))
    guards(**FULL).check(feeds(1, 1, xy=np.array([[[-1024.0, 2048.0]]], np.float32), lab=-np.ones((1, 1))))


def test_max_dims_names_input_size_and_limit():
    message = refusal(guards(**FULL), feeds(3000, 2))
    assert message == (
        "m: input 'xy' has shape [3000, 2, 2]: axis 0 is 3000, over the limit of 4 (max_dims [4, 5, 2])"
    )
    assert "axis 1 is 20000, over the limit of 5" in refusal(guards(**FULL), feeds(1, 20000))
    assert "axis 1 is 9, over the limit of 5 (max_dims [*, 5, *])" in refusal(
        guards(max_dims="xy=*,5,*"), feeds(100, 9)
    )


def test_shape_checks_come_before_any_value_is_read():
    nan = np.full((3000, 2, 2), np.nan, np.float32)
    assert "over the limit of 4" in refusal(guards(**FULL), feeds(3000, 2, xy=nan))


def test_same_dims():
    message = refusal(guards(**FULL), feeds(2, 3, lab=np.ones((2, 4), np.float32)))
    assert message == "m: these axes must have the same length: 'xy' axis 1 is 3, 'lab' axis 1 is 4"


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_finite_inputs(bad):
    emb = np.zeros((1, 4), np.float32)
    emb[0, 2] = bad
    message = refusal(guards(**FULL), feeds(emb=emb))
    assert (
        message == f"m: input 'emb' must be finite (no NaN or infinity), got {bad} at [0, 2] (finite_inputs)"
    )


@pytest.mark.parametrize(
    "name, value, expected",
    [
        ("xy", 3e38, "m: input 'xy' must be in [-1024, 2048], got 3e+38 at [1, 2, 0] (value_ranges)"),
        ("xy", -1024.5, "got -1024.5 at [1, 2, 0]"),
        ("lab", 4.0, "m: input 'lab' must be in [-1, 3], got 4 at [1, 2] (value_ranges)"),
        ("size", 0, "m: input 'size' must be in [1, inf], got 0 at [0, 1] (value_ranges)"),
        ("size", -5, "got -5 at [0, 1]"),
    ],
)
def test_value_ranges_name_the_value_and_where(name, value, expected):
    inputs = feeds()
    array = inputs[name].copy()
    array[(1, 2, 0) if name == "xy" else (1, 2) if name == "lab" else (0, 1)] = value
    assert expected in refusal(guards(**FULL), {**inputs, name: array})


def test_nan_is_outside_every_range_even_without_finite_inputs():
    lab = np.ones((2, 3), np.float32)
    lab[0, 1] = np.nan
    assert "input 'lab' must be in [-1, 3], got nan at [0, 1]" in refusal(guards(**FULL), feeds(lab=lab))


def test_absent_optional_inputs_and_empty_tensors_are_not_refused():
    g = guards(**FULL)
    g.check({"xy": np.zeros((0, 1, 2), np.float32), "lab": np.zeros((0, 1), np.float32)})


# ------------------------------------------------------------------------------- the committed configs


def config(model: str) -> mc.ModelConfig:
    return text_format.Parse(
        (REPO / "model_repository" / model / "config.pbtxt").read_text(), mc.ModelConfig()
    )


def committed_guards(model: str, specs) -> InputGuards:
    """The guards exactly as the runner builds them (config dims + the model's declared inputs)."""
    cfg = config(model)
    batch = (-1,) if cfg.max_batch_size > 0 else ()
    infos = {s.name: InputInfo(s.numpy_dtype, batch + tuple(s.dims)) for s in specs}
    return InputGuards.from_parameters(model, Parameters.from_config(_as_json(cfg)), infos)


def _as_json(cfg: mc.ModelConfig) -> dict:
    return {"parameters": {k: {"string_value": v.string_value} for k, v in cfg.parameters.items()}}


def per_call_cap() -> int:
    """segment_everything's decoder_max_prompts_per_call: what the pipeline sends prompt_decoder at most."""
    return int(config(contract.PIPELINE_MODEL).parameters["decoder_max_prompts_per_call"].string_value)


CANVAS = contract.ENCODER_CANVAS
COORD_RANGE = (-float(CANVAS), 2.0 * CANVAS)  # the canvas and a margin: finite, far from overflow
LABEL_RANGE = (-1.0, 3.0)  # SAM: -1 padding, 0 background, 1 foreground, 2/3 box corners


def test_prompt_decoder_guards_follow_the_contract():
    g = committed_guards(contract.DECODER_MODEL, contract.DECODER_INPUTS)
    cap, points = per_call_cap(), contract.DECODER_MAX_POINTS
    assert g.max_dims == {"point_coords": (cap, points, 2), "point_labels": (cap, points)}
    assert set(g.finite_inputs) == {s.name for s in contract.DECODER_INPUTS if s.datatype == "FP32"}
    assert g.value_ranges == {"point_coords": COORD_RANGE, "point_labels": LABEL_RANGE}
    assert {frozenset(group) for group in g.same_dims} == {
        frozenset({("point_coords", 0), ("point_labels", 0)}),
        frozenset({("point_coords", 1), ("point_labels", 1)}),
    }


def test_interactive_decoder_guards_follow_the_contract():
    g = committed_guards(contract.INTERACTIVE_DECODER_MODEL, contract.INTERACTIVE_DECODER_INPUTS)
    cap, points = contract.INTERACTIVE_DECODER_MAX_PROMPTS, contract.DECODER_MAX_POINTS
    assert g.max_dims == {
        "point_coords": (cap, points, 2),
        "point_labels": (cap, points),
        "mask_input": (cap, 1, 256, 256),
        "has_mask_input": (cap,),
    }
    fp32 = {s.name for s in contract.INTERACTIVE_DECODER_INPUTS if s.datatype == "FP32"}
    assert set(g.finite_inputs) == fp32
    assert g.value_ranges == {
        "point_coords": COORD_RANGE,
        "point_labels": LABEL_RANGE,
        "has_mask_input": (0.0, 1.0),
    }
    axis0 = {(n, 0) for n in ("point_coords", "point_labels", "mask_input", "has_mask_input")}
    assert {frozenset(group) for group in g.same_dims} == {
        frozenset(axis0),
        frozenset({("point_coords", 1), ("point_labels", 1)}),
    }
    assert cap <= per_call_cap()


def test_image_encoder_guard_follows_the_contract():
    g = committed_guards(contract.ENCODER_MODEL, contract.ENCODER_INPUTS)
    assert g.value_ranges == {"image_size": (0.0, float(CANVAS))}  # 0: the config's zero-filled warm-up


def test_the_largest_requests_the_pipeline_makes_pass_the_guards():
    """What SegEvery/SegAny send at the contract's limits (prompts at the image corners, the most points per
    prompt plus SAM's padding point, boxes and points) is accepted; one prompt or point more is refused."""
    emb = np.zeros((1, 256, 64, 64), np.float32)
    decoder = committed_guards(contract.DECODER_MODEL, contract.DECODER_INPUTS)
    interactive = committed_guards(contract.INTERACTIVE_DECODER_MODEL, contract.INTERACTIVE_DECODER_INPUTS)
    for shape in ((1080, 810), (8, 800), (4000, 40)):
        h, w = shape
        k, p = per_call_cap(), contract.HARD_LIMITS.max_points_per_prompt
        corners = np.array([[0, 0], [w, h], [w, 0], [0, h]], np.float32)
        pts = np.resize(corners, (k, p, 2)).astype(np.float32)
        labels = np.resize(np.array([0, 1], np.int32), (k, p))
        coords, lab = box_ops.points_to_prompts(box_ops.points_to_encoder_frame(pts, shape), labels)
        assert coords.shape == (k, contract.DECODER_MAX_POINTS, 2)
        boxes = np.tile(np.array([[0, 0, w, h]], np.float32), (k, 1))
        box_coords, box_labels = box_ops.boxes_to_prompts(box_ops.boxes_to_encoder_frame(boxes, shape))
        for c, lb in ((coords, lab), (box_coords, box_labels)):
            decoder.check({"image_embeddings": emb, "point_coords": c, "point_labels": lb})
            n = contract.INTERACTIVE_DECODER_MAX_PROMPTS
            interactive.check(
                {
                    "image_embeddings": emb,
                    "point_coords": c[:n],
                    "point_labels": lb[:n],
                    "mask_input": np.full((n, 1, 256, 256), -30.0, np.float32),
                    "has_mask_input": np.ones(n, np.float32),
                }
            )
        with pytest.raises(InputRejected, match="point_coords"):
            decoder.check(
                {
                    "image_embeddings": emb,
                    "point_coords": coords[[0] * (k + 1)],
                    "point_labels": lab[[0] * (k + 1)],
                }
            )
    encoder = committed_guards(contract.ENCODER_MODEL, contract.ENCODER_INPUTS)
    for shape in ((8, 800), (800, 8), (1080, 810), (1024, 1024)):
        encoder.check({"image_size": np.array([box_ops.encoder_input_size(*shape)], np.int32)})
