"""The pipeline core without Triton: request parsing, orchestration, splitting, schedules, budgets and
cancellation over fake models; and the core over the reference's own PyTorch networks vs the reference."""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass, field

import cv2
import numpy as np
import pytest
from PIL import Image

import segment_everything_contract as contract
from mobilesamv2.pipeline import (
    Models,
    Pipeline,
    ResponseTooLarge,
    SegmentRequest,
    StageError,
)
from mobilesamv2.processing import boxes as box_ops
from mobilesamv2.processing.image import detector_input, encoder_input_size
from segment_everything_contract import ContractError, Limits, Prompts, Settings
from segment_everything_contract import rle as rle_codec

# ------------------------------------------------------------------------------------------------ fakes


def box_logits(coords: np.ndarray) -> np.ndarray:
    """Low-res logits that are +8 inside each prompt's box (1024 frame -> 256 frame), -8 outside."""
    out = np.full((len(coords), 1, 256, 256), -8.0, np.float32)
    for i, ((x1, y1), (x2, y2)) in enumerate(coords[:, :2]):
        out[i, 0, int(y1 / 4) : int(np.ceil(y2 / 4)), int(x1 / 4) : int(np.ceil(x2 / 4))] = 8.0
    return out


def disk_logits(center: np.ndarray, radii: tuple[float, ...]) -> np.ndarray:
    yy, xx = np.mgrid[:256, :256] + 0.5
    d = np.hypot(xx - center[0] / 4, yy - center[1] / 4)
    return np.stack([np.where(d < r, 8.0, -8.0) for r in radii]).astype(np.float32)


@dataclass
class FakeModels:
    """Records every call; discovery returns fixed candidates (letterbox frame)."""

    candidates: tuple[np.ndarray, np.ndarray, np.ndarray]
    calls: list[str] = field(default_factory=list)
    decode_sizes: list[int] = field(default_factory=list)
    mask_inputs: list = field(default_factory=list)
    delay: float = 0.0

    def models(self) -> Models:
        return Models(self.encode, self.discover, self.decode)

    async def encode(self, canvas: np.ndarray, size: np.ndarray) -> str:
        self.calls.append("encode:start")
        assert canvas.shape == (1, 1024, 1024, 3) and canvas.dtype == np.uint8
        assert size.shape == (1, 2) and size.dtype == np.int32
        await asyncio.sleep(self.delay)
        self.calls.append("encode:end")
        return "embedding-handle"

    async def discover(self, letterboxed: np.ndarray, conf: float):
        self.calls.append("discover:start")
        assert (
            letterboxed.dtype == np.uint8
            and letterboxed.shape[0] % 32 == 0
            and letterboxed.shape[1] % 32 == 0
        )
        await asyncio.sleep(self.delay)
        self.calls.append("discover:end")
        boxes, scores, classes = self.candidates
        keep = scores > conf
        return boxes[keep], scores[keep], classes[keep]

    async def decode(
        self, embedding, coords: np.ndarray, labels: np.ndarray, multimask: bool, mask_input=None
    ):
        assert embedding == "embedding-handle"  # passed through untouched
        self.calls.append("decode")
        self.mask_inputs.append(mask_input)
        self.decode_sizes.append(len(coords))
        if (labels[:, :2] == [2, 3]).all():
            logits = box_logits(coords)
        else:
            logits = np.stack([disk_logits(c[0], (6, 12, 24) if multimask else (12,)) for c in coords])
        m = logits.shape[1]
        ious = np.tile(np.array([0.5, 0.9, 0.7][:m], np.float32), (len(coords), 1))
        return logits, ious


def image(h: int = 480, w: int = 640) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (h, w, 3), dtype=np.uint8)


def candidates_for(img: np.ndarray, boxes_px: np.ndarray, scores: np.ndarray):
    """Candidates in the letterbox frame for boxes given in image pixels (inverse of the un-letterbox)."""
    _, info = detector_input(img)
    h_in, w_in = info.input_shape
    h, w = img.shape[:2]
    gain = min(h_in / h, w_in / w)
    pad_x, pad_y = round((w_in - w * gain) / 2 - 0.1), round((h_in - h * gain) / 2 - 0.1)
    lb = boxes_px * gain + np.array([pad_x, pad_y, pad_x, pad_y])
    return lb.astype(np.float32), scores.astype(np.float32), np.zeros(len(scores), np.int32)


def run(pipeline: Pipeline, request: SegmentRequest, **kw):
    return asyncio.run(pipeline.run(request, **kw))


def mask_bbox(mask: np.ndarray) -> np.ndarray:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], np.float32)


BOXES = np.array([[100, 80, 300, 260], [350, 200, 600, 400], [50, 300, 200, 450]], np.float32)
SCORES = np.array([0.9, 0.8, 0.6], np.float32)


# ---------------------------------------------------------------------------------------------- SegEvery


def test_segevery_masks_follow_their_boxes_through_every_frame():
    img = image()
    fake = FakeModels(candidates_for(img, BOXES, SCORES))
    result = run(Pipeline(fake.models()), SegmentRequest(img, Settings(output="dense")))
    assert len(result) == 3 and result.masks.shape == (3, 480, 640)
    np.testing.assert_allclose(result.boxes, BOXES, atol=0.5)  # un-letterboxed back to image pixels
    np.testing.assert_allclose(result.scores, SCORES)  # descending confidence
    for box, mask in zip(result.boxes, result.masks, strict=True):
        np.testing.assert_allclose(mask_bbox(mask), box, atol=4)  # decoder frame <-> image frame agree
    assert result.prompt_index.tolist() == [0, 1, 2]
    assert fake.decode_sizes == [3]  # one batched decoder call


def test_rle_output_equals_dense_output():
    img = image()
    fake = FakeModels(candidates_for(img, BOXES, SCORES))
    pipeline = Pipeline(fake.models())
    dense = run(pipeline, SegmentRequest(img, Settings(output="dense")))
    rles = run(pipeline, SegmentRequest(img, Settings(output="rle")))
    assert rles.masks is None and len(rles.rles) == 3
    for r, m in zip(rles.rles, dense.masks, strict=True):
        np.testing.assert_array_equal(rle_codec.decode(r), m)
    outputs = rles.to_outputs(Settings().outputs())
    assert set(outputs) == set(contract.outputs_for("rle"))
    for spec in contract.PIPELINE_OUTPUTS:
        if spec.name in outputs:
            assert outputs[spec.name].dtype == spec.numpy_dtype, spec.name


def test_settings_reach_discovery_and_nms():
    img = image()
    fake = FakeModels(candidates_for(img, BOXES, SCORES))
    pipeline = Pipeline(fake.models())
    assert len(run(pipeline, SegmentRequest(img, Settings(conf=0.7)))) == 2
    assert len(run(pipeline, SegmentRequest(img, Settings(max_prompts=1)))) == 1


def test_decoder_calls_are_split_only_above_the_cap():
    img = image()
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 400, (10, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(20, 200, (10, 2))], 1).astype(np.float32)
    scores = np.linspace(0.95, 0.5, 10).astype(np.float32)
    fake = FakeModels(candidates_for(img, boxes, scores))
    whole = run(Pipeline(fake.models()), SegmentRequest(img, Settings(iou=1.0, output="dense")))
    assert fake.decode_sizes == [10]
    fake.decode_sizes.clear()
    split = run(
        Pipeline(fake.models(), decoder_max_prompts_per_call=4),
        SegmentRequest(img, Settings(iou=1.0, output="dense")),
    )
    assert fake.decode_sizes == [4, 4, 2]
    np.testing.assert_array_equal(split.masks, whole.masks)  # same masks, same order


def test_schedules_overlapped_and_sequential():
    img = image()
    fake = FakeModels(candidates_for(img, BOXES, SCORES), delay=0.05)
    run(Pipeline(fake.models(), overlap=True), SegmentRequest(img))
    assert fake.calls[:2] == ["encode:start", "discover:start"]  # both in flight at once
    fake.calls.clear()
    run(Pipeline(fake.models(), overlap=False), SegmentRequest(img))
    assert fake.calls == ["discover:start", "discover:end", "encode:start", "encode:end", "decode"]


def test_nothing_found_is_an_empty_result_and_skips_the_encoder_when_sequential():
    img = image()
    fake = FakeModels(candidates_for(img, BOXES, SCORES))
    result = run(Pipeline(fake.models(), overlap=False), SegmentRequest(img, Settings(conf=0.95)))
    assert len(result) == 0 and result.rles == [] and result.boxes.shape == (0, 4)
    assert fake.calls == ["discover:start", "discover:end"]


def test_checkpoint_aborts_before_the_decoder():
    img = image()
    fake = FakeModels(candidates_for(img, BOXES, SCORES))
    seen = []

    class Cancelled(Exception):
        pass

    def checkpoint(stage: str) -> None:
        seen.append(stage)
        if stage == "decoder":
            raise Cancelled(stage)

    with pytest.raises(Cancelled):
        run(Pipeline(fake.models(), overlap=False), SegmentRequest(img), checkpoint=checkpoint)
    assert seen == ["discovery", "encoder", "decoder"]
    assert "decode" not in fake.calls


def test_response_budget_is_checked_before_decoding():
    img = image(2000, 3000)
    fake = FakeModels(candidates_for(img, BOXES * 4, SCORES))
    pipeline = Pipeline(fake.models(), limits=Limits(max_response_bytes=10 * 2**20))
    with pytest.raises(ResponseTooLarge, match=r"max_response_bytes.*use output_format 'rle'"):
        run(pipeline, SegmentRequest(img, Settings(output="dense")))
    assert "decode" not in fake.calls
    assert len(run(pipeline, SegmentRequest(img, Settings(output="rle")))) == 3


def test_stage_errors_propagate():
    async def failing(*_):
        raise StageError("image_encoder", "boom", "INTERNAL")

    img = image()
    fake = FakeModels(candidates_for(img, BOXES, SCORES))
    models = Models(failing, fake.discover, fake.decode)
    with pytest.raises(StageError, match="image_encoder: boom"):
        run(Pipeline(models), SegmentRequest(img))


# ------------------------------------------------------------------------------------------------ SegAny


def test_segany_boxes_skip_discovery():
    img = image()
    fake = FakeModels(candidates_for(img, BOXES, SCORES))
    request = SegmentRequest(img, Settings(output="dense"), Prompts(boxes=BOXES[:2]))
    result = run(Pipeline(fake.models()), request)
    assert "discover:start" not in fake.calls
    np.testing.assert_array_equal(result.boxes, BOXES[:2])
    assert (result.scores == 1).all()
    for box, mask in zip(result.boxes, result.masks, strict=True):
        np.testing.assert_allclose(mask_bbox(mask), box, atol=4)


def test_segany_points_report_mask_boxes_and_multimask_rows():
    img = image()
    fake = FakeModels(candidates_for(img, BOXES, SCORES))
    points = np.array([[[320, 240]], [[100, 100]]], np.float32)
    prompts = Prompts(points=points, point_labels=np.ones((2, 1), np.int32))
    single = run(Pipeline(fake.models()), SegmentRequest(img, Settings(), prompts))
    assert len(single) == 2 and single.prompt_index.tolist() == [0, 1]
    for r, box in zip(single.rles, single.boxes, strict=True):
        np.testing.assert_array_equal(mask_bbox(rle_codec.decode(r)), box)  # the mask's own tight box
    multi = run(Pipeline(fake.models()), SegmentRequest(img, Settings(multimask=True), prompts))
    assert len(multi) == 6 and multi.prompt_index.tolist() == [0, 0, 0, 1, 1, 1]
    np.testing.assert_allclose(multi.iou_predictions, [0.5, 0.9, 0.7] * 2)
    areas = [rle_codec.area(r) for r in multi.rles]
    assert areas[0] < areas[1] < areas[2]  # three candidates per click, as decoded


def test_segany_previous_masks_reach_the_decoder_with_their_prompts():
    img = image()
    fake = FakeModels(candidates_for(img, BOXES, SCORES))
    previous = np.random.default_rng(3).normal(size=(3, 256, 256)).astype(np.float32)
    request = SegmentRequest(img, Settings(), Prompts(boxes=BOXES, mask_input=previous))
    run(Pipeline(fake.models(), decoder_max_prompts_per_call=2), request)
    assert fake.decode_sizes == [2, 1]
    np.testing.assert_array_equal(np.concatenate(fake.mask_inputs), previous)  # each with its own prompt


def test_interactive_calls_are_capped_at_the_interactive_decoders_limit():
    img = image(2000, 2000)
    fake = FakeModels(candidates_for(img, BOXES, SCORES))
    n = contract.INTERACTIVE_DECODER_MAX_PROMPTS + 6
    points = np.random.default_rng(0).uniform(0, 2000, (n, 1, 2)).astype(np.float32)
    prompts = Prompts(points=points, point_labels=np.ones((n, 1), np.int32))
    run(Pipeline(fake.models()), SegmentRequest(img, Settings(multimask=True), prompts))
    assert fake.decode_sizes == [contract.INTERACTIVE_DECODER_MAX_PROMPTS, 6]


def test_interactive_decoder_inputs_and_token_selection():
    from mobilesamv2.pipeline import interactive_decoder_inputs, select_mask_tokens, uses_interactive_decoder

    coords, labels = np.zeros((2, 2, 2), np.float32), np.ones((2, 2), np.float32)
    _, _, masks, has = interactive_decoder_inputs(coords, labels, None)
    assert masks.shape == (2, 1, 256, 256) and not masks.any() and has.tolist() == [0, 0]
    _, _, masks, has = interactive_decoder_inputs(coords, labels, np.ones((2, 256, 256), np.float32))
    assert masks.shape == (2, 1, 256, 256) and masks.all() and has.tolist() == [1, 1]
    logits, ious = np.arange(2 * 4).reshape(2, 4, 1, 1), np.arange(8).reshape(2, 4)
    assert select_mask_tokens(logits, ious, True)[1].tolist() == [[1, 2, 3], [5, 6, 7]]
    assert select_mask_tokens(logits, ious, False)[1].tolist() == [[0], [4]]
    assert not uses_interactive_decoder(False, None) and uses_interactive_decoder(True, None)


# ----------------------------------------------------------------------------------------- request parsing


def encoded(img: np.ndarray, ext: str = ".png") -> np.ndarray:
    ok, data = cv2.imencode(ext, cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    assert ok
    return np.array([data.tobytes()], dtype=np.object_)


def test_request_from_inputs_reads_settings_prompts_and_image():
    img = image(40, 60)
    inputs = {
        "image": encoded(img),
        "conf_threshold": np.array([0.25], np.float32),
        "boxes": np.array([[-5, 1, 70, 30]], np.float32),
    }
    request = SegmentRequest.from_inputs(inputs)
    assert request.settings.conf == 0.25 and request.image_size == (40, 60)
    np.testing.assert_array_equal(request.image, img)
    np.testing.assert_array_equal(request.prompts.boxes, [[0, 1, 60, 30]])  # clipped to the image


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"conf_threshold": np.array([1.0], np.float32)}, "conf_threshold must be in"),
        (
            {"points": np.array([[[500.0, 10.0]]], np.float32), "point_labels": np.ones((1, 1), np.int32)},
            "outside the 60x40 image",
        ),
        ({"boxes": np.zeros((1, 4), np.float32), "points": np.zeros((1, 1, 2), np.float32)}, "not both"),
        ({"multimask": np.array([True])}, "multimask applies to SegAny"),
    ],
)
def test_cheap_checks_run_before_the_image_is_decoded(monkeypatch, extra, message):
    import mobilesamv2.pipeline as pipeline_module

    def must_not_decode(*_args, **_kw):
        raise AssertionError("decoded before the cheap checks")

    monkeypatch.setattr(pipeline_module, "decode_image", must_not_decode)
    with pytest.raises(ContractError, match=message):
        SegmentRequest.from_inputs({"image": encoded(image(40, 60)), **extra})


def test_deployment_limits_apply():
    limits = Limits(max_image_pixels=1000, max_prompts=2)
    with pytest.raises(ContractError, match="over the limit of 1000"):
        SegmentRequest.from_inputs({"image_raw": image(40, 60)}, limits)
    with pytest.raises(ContractError, match="at most 2 boxes per request"):
        SegmentRequest.from_inputs({"image_raw": image(20, 20), "boxes": np.ones((3, 4), np.float32)}, limits)
    img = image()
    fake = FakeModels(candidates_for(img, BOXES, SCORES))
    assert len(run(Pipeline(fake.models(), limits=limits), SegmentRequest(img))) == 2  # SegEvery capped


def test_gif_first_frame_is_decoded():
    frames = [Image.fromarray(image(30, 40)), Image.fromarray(image(30, 40)[::-1].copy())]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    request = SegmentRequest.from_inputs({"image": np.array([buffer.getvalue()], dtype=np.object_)})
    expected = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    np.testing.assert_array_equal(request.image, expected)


# ------------------------------------------------------------------------------------ against the reference


def test_core_over_reference_networks_equals_the_reference(reference_pipeline, bus_rgb):
    """The core with the reference's own PyTorch networks injected reproduces ReferencePipeline exactly: same
    boxes in the same order, same masks (the orchestration adds nothing and loses nothing)."""
    expected = reference_pipeline(bus_rgb, max_detections=8)
    core = Pipeline(reference_pipeline.as_models(), channel_order=reference_pipeline.channel_order)
    got = run(core, SegmentRequest(bus_rgb, Settings(max_prompts=8)))
    assert len(got) == len(expected) > 0
    np.testing.assert_array_equal(got.boxes, expected.boxes)
    np.testing.assert_array_equal(got.scores, expected.scores)
    np.testing.assert_allclose(got.iou_predictions, expected.iou_predictions, atol=1e-5)
    assert got.rles == expected.rles()
    assert encoder_input_size(*bus_rgb.shape[:2]) == expected.input_size
    assert Settings().max_prompts == box_ops.MAX_DETECTIONS
