"""The wire contract: the model configs declare exactly its tensors, settings round-trip, limits only tighten,
and the client and the real server give the same verdict (and message) on the same settings."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

import segment_everything_contract as contract
from mobilesamv2.export import onnx_export
from segment_everything_client import InvalidInputError, SegmentSettings
from segment_everything_contract import ContractError, Limits, Settings

REPO = Path(__file__).resolve().parents[1]
TRITON_TYPES = {
    "BYTES": "TYPE_STRING",
    "UINT8": "TYPE_UINT8",
    "INT32": "TYPE_INT32",
    "FP32": "TYPE_FP32",
    "BOOL": "TYPE_BOOL",
}


def config(model: str) -> mc.ModelConfig:
    return text_format.Parse(
        (REPO / "model_repository" / model / "config.pbtxt").read_text(), mc.ModelConfig()
    )


def declared(tensors) -> dict[str, tuple[str, list[int], bool]]:
    return {
        t.name: (mc.DataType.Name(t.data_type), list(t.dims), getattr(t, "optional", False)) for t in tensors
    }


def expected(specs, optional: bool = True) -> dict[str, tuple[str, list[int], bool]]:
    return {s.name: (TRITON_TYPES[s.datatype], list(s.dims), s.optional and optional) for s in specs}


@pytest.mark.parametrize(
    "model, inputs, outputs",
    [
        (contract.PIPELINE_MODEL, contract.PIPELINE_INPUTS, contract.PIPELINE_OUTPUTS),
        (contract.ENCODER_MODEL, contract.ENCODER_INPUTS, contract.ENCODER_OUTPUTS),
        (contract.DECODER_MODEL, contract.DECODER_INPUTS, contract.DECODER_OUTPUTS),
        (contract.DISCOVERY_MODEL, contract.DISCOVERY_INPUTS, contract.DISCOVERY_OUTPUTS),
        (
            contract.INTERACTIVE_DECODER_MODEL,
            contract.INTERACTIVE_DECODER_INPUTS,
            contract.INTERACTIVE_DECODER_OUTPUTS,
        ),
    ],
)
def test_configs_declare_exactly_the_contract(model, inputs, outputs):
    cfg = config(model)
    assert cfg.name == model
    assert declared(cfg.input) == expected(inputs)
    assert declared(cfg.output) == expected(outputs, optional=False)


def test_export_names_and_trace_ranges_cover_the_contract():
    assert tuple(t.name for t in contract.DECODER_INPUTS) == onnx_export.DECODER_INPUTS
    assert onnx_export.MAX_POINTS_PER_PROMPT >= contract.DECODER_MAX_POINTS
    assert contract.HARD_LIMITS.max_prompts <= onnx_export.MAX_PROMPTS


def test_settings_round_trip_through_tensors():
    settings = Settings(conf=0.25, iou=0.5, max_prompts=7, output="dense", timings=True, multimask=True)
    arrays = settings.to_inputs()
    spec = {s.name: s for s in contract.PIPELINE_INPUTS}
    assert all(a.dtype == spec[n].numpy_dtype for n, a in arrays.items())
    assert Settings.from_inputs(arrays) == settings
    assert Settings.from_inputs({}) == Settings()


def test_settings_refuse_wrong_wire_types():
    with pytest.raises(ContractError, match="conf_threshold must be FP32, got float64"):
        Settings.from_inputs({"conf_threshold": np.array([0.5])})
    with pytest.raises(ContractError, match="max_prompts must hold exactly one value, got 2"):
        Settings.from_inputs({"max_prompts": np.array([1, 2], np.int32)})


def test_limits_only_tighten():
    assert Limits.from_parameters({}) == contract.HARD_LIMITS
    lower = Limits.from_parameters(
        {"max_prompts": "50", "max_image_pixels": " 1000000 ", "max_image_bytes": ""}
    )
    assert (lower.max_prompts, lower.max_image_pixels) == (50, 1_000_000)
    with pytest.raises(ValueError, match="max_prompts are looser"):
        Limits.from_parameters({"max_prompts": "5000"})
    with pytest.raises(ValueError, match="min_image_side are looser"):
        Limits.from_parameters({"min_image_side": "2"})
    with pytest.raises(ValueError, match="must be > 0"):
        Limits(max_prompts=0)


@pytest.mark.parametrize(
    "h, w, message",
    [(4, 100, "at least 8"), (9000, 9000, "over the limit of 64000000"), (10, 5000, "aspect ratio of 500:1")],
)
def test_image_shape_limits(h, w, message):
    with pytest.raises(ContractError, match=message):
        contract.check_image_shape(h, w)


# --------------------------------------------------------------------------- client and server agree

SETTING_CASES = [
    {"conf": 0.0},
    {"conf": 0.999},
    {"conf": 1.0},
    {"conf": -0.01},
    {"conf": math.nan},
    {"iou": 1.0},
    {"iou": 0.0},
    {"iou": 1.5},
    {"max_prompts": 1000},
    {"max_prompts": 1001},
    {"max_prompts": 0},
    {"output": "DENSE"},
    {"output": "png"},
    {"pred_iou_thresh": 1.0},
    {"pred_iou_thresh": 1.5},
    {"stability_score_thresh": -0.5},
    {"mask_nms_thresh": 0.0},
    {"mask_nms_thresh": 0.5},
    {"min_mask_region_area": -1},
    {"min_mask_region_area": 100},
]
FILTER_DTYPES = {"pred_iou_thresh": np.float32, "stability_score_thresh": np.float32}
FILTER_DTYPES.update(mask_nms_thresh=np.float32, min_mask_region_area=np.int32)


def client_verdict(case: dict) -> str | None:
    try:
        SegmentSettings(**{"max_prompts": 1, **case})
    except InvalidInputError as exc:
        return str(exc)
    return None


def test_client_verdicts_are_the_contracts():
    for case in SETTING_CASES:
        try:
            Settings(**{"max_prompts": 1, **case})
            verdict = None
        except ContractError as exc:
            verdict = str(exc)
        assert client_verdict(case) == verdict, case


@pytest.mark.server
def test_client_and_server_agree_on_every_setting(triton_server, raw_infer):
    """Each case goes to the real server as raw tensors (no client-side check) and through the client's
    validation: both accept it, or both refuse it with the same message."""
    image = np.full((64, 64, 3), 127, np.uint8)
    disagreements = []
    for case in SETTING_CASES:
        raw = {"max_prompts": 1, **case}
        tensors = {
            "conf_threshold": np.array([raw.get("conf", 0.4)], np.float32),
            "iou_threshold": np.array([raw.get("iou", 0.9)], np.float32),
            "max_prompts": np.array([raw["max_prompts"]], np.int32),
            "output_format": np.array([raw.get("output", "rle").encode()], np.object_),
            **{k: np.array([v], FILTER_DTYPES[k]) for k, v in raw.items() if k in FILTER_DTYPES},
        }
        server = raw_infer.error(
            triton_server, "segment_everything", {"image_raw": image, **tensors}, ["boxes"]
        )
        client = client_verdict(case)
        if (server is None) != (client is None) or (client is not None and client not in server):
            disagreements.append((case, client, server))
    assert not disagreements
