"""SAM's quality filters without a server: each formula against segment-anything's own function, the host and
device (torch, here on the CPU) postprocess giving the same stability scores, and no work when the filters
are off. The same filters on the real server: ``tests/integration/test_quality_filters.py``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from synthetic_logits import noise_logits, smooth_logits

import segment_everything_contract as contract
from mobilesamv2.pipeline import HostPostprocessor, Pipeline, SegmentResult
from mobilesamv2.processing import quality
from mobilesamv2.processing.device_masks import TorchPostprocessor
from mobilesamv2.processing.image import encoder_input_size
from mobilesamv2.processing.masks import iter_upsampled_transposed, masks_to_rles
from segment_everything_contract import ContractError, Settings
from segment_everything_contract import rle as rle_codec

amg = pytest.importorskip("segment_anything.utils.amg")
torchvision_ops = pytest.importorskip("torchvision.ops")

SIZES = [(300, 450), (720, 1280), (97, 64)]


def logits_for(seed: int) -> np.ndarray:
    """Smooth masks and noise, scaled so that both sides of +-1 occur."""
    return np.concatenate((smooth_logits(5, seed), 3 * noise_logits(3, seed)))


def full_resolution(logits: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    chunks = iter_upsampled_transposed(logits, encoder_input_size(*size), size)
    return torch.from_numpy(np.ascontiguousarray(np.concatenate(list(chunks), axis=2).transpose(2, 1, 0)))


@pytest.mark.parametrize("size", SIZES)
def test_stability_scores_are_sams_on_host_and_device(size):
    logits = logits_for(sum(size))
    logits[0] = -5.0  # no pixel above -1: SAM's 0/0, here 0
    expected = amg.calculate_stability_score(full_resolution(logits, size), 0.0, 1.0)
    expected = torch.nan_to_num(expected, nan=0.0).numpy()
    input_size = encoder_input_size(*size)
    host = HostPostprocessor().stability_scores(logits, input_size, size)
    device = TorchPostprocessor().stability_scores(torch.from_numpy(logits), input_size, size)
    np.testing.assert_array_equal(host, expected)
    np.testing.assert_array_equal(device, expected)
    assert host.dtype == np.float32 and np.unique(host[host > 0]).size >= len(host) // 2


@pytest.mark.parametrize("area", [30, 400, 5000])
def test_remove_small_regions_is_sams(area):
    masks = (full_resolution(logits_for(area), (200, 300)) > 0).numpy()
    masks[0] = False
    masks[1] = True
    masks[2, ::7, ::5] = True  # every island small: SAM keeps the largest
    changed = 0
    for mask in masks:
        for mode in ("holes", "islands"):
            got, got_changed = quality.remove_small_regions(mask, area, mode)
            expected, expected_changed = amg.remove_small_regions(mask, area, mode)
            assert got_changed == expected_changed
            np.testing.assert_array_equal(got, expected)
            changed += got_changed
    assert changed  # the thresholds do something


def test_mask_boxes_are_sams():
    masks = (full_resolution(logits_for(3), (120, 90)) > 0).numpy()
    masks[0] = False
    masks[1] = False
    masks[1, 5, 7] = True  # one pixel: a zero-area box
    expected = amg.batched_mask_to_box(torch.from_numpy(masks)).numpy()
    np.testing.assert_array_equal(quality.sam_boxes(masks=masks), expected)
    np.testing.assert_array_equal(quality.sam_boxes(rles=[rle_codec.encode(m) for m in masks]), expected)


@pytest.mark.parametrize("threshold", [0.3, 0.7, 1.0])
def test_mask_nms_is_torchvisions(threshold):
    rng = np.random.default_rng(int(threshold * 10))
    xy = rng.uniform(0, 100, (60, 2))
    boxes = np.concatenate((xy, xy + rng.uniform(0, 40, (60, 2))), axis=1).astype(np.float32)
    boxes[5] = boxes[6] = 0  # empty masks' boxes
    scores = rng.choice([0.0, 0.5, 1.0], 60).astype(np.float32)  # ties, as after the small-region step
    expected = torchvision_ops.batched_nms(
        torch.from_numpy(boxes), torch.from_numpy(scores), torch.zeros(60), threshold
    ).numpy()
    np.testing.assert_array_equal(quality._nms(boxes, scores, threshold), expected)


def test_filters_off_cost_nothing():
    """Defaults: no stability score, no mask decoded, the masks and their order as they were."""

    class NoStability(HostPostprocessor):
        def stability_scores(self, *args):
            raise AssertionError("stability computed with the filters off")

    logits = smooth_logits(4)
    size = (64, 96)
    result = SegmentResult(
        np.zeros((4, 4), np.float32),
        np.ones(4, np.float32),
        np.arange(4, dtype=np.float32),
        np.arange(4, dtype=np.int32),
        size,
    )
    pipeline = Pipeline(models=None, postprocess=NoStability())  # type: ignore[arg-type]
    assert pipeline._filter_by_logits(result, logits, Settings(), encoder_input_size(*size)) is logits
    rles = masks_to_rles(logits, encoder_input_size(*size), size)
    assert quality.filter_binary_masks(rles, None, result.iou_predictions, Settings()) is None
    assert len(result) == 4 and result.stability_scores is None


def test_filters_on_dense_and_rle_masks_agree():
    logits = logits_for(11)
    size = (150, 200)
    dense = (full_resolution(logits, size) > 0).numpy()
    ious = np.linspace(0.9, 0.1, len(dense)).astype(np.float32)
    settings = Settings(mask_nms_thresh=0.6, min_mask_region_area=40, non_overlapping=True)
    rles = [rle_codec.encode(m) for m in dense]
    rows_rle = quality.filter_binary_masks(rles, None, ious, settings)
    rows_dense = quality.filter_binary_masks(None, dense, ious, settings)
    np.testing.assert_array_equal(rows_rle, rows_dense)
    kept = dense[rows_dense]
    assert 0 < len(rows_dense) < len(dense) and kept.sum(0).max() == 1  # NMS removed some; no overlap
    assert [rle_codec.encode(m) for m in kept] == [rles[i] for i in rows_rle]


def test_filter_settings_travel_only_when_set():
    assert set(Settings().to_inputs()) == {s.name for s in contract.PIPELINE_INPUTS[2:8]}
    settings = Settings(  # values exact in float32: they round-trip through the wire
        conf=0.25,
        iou=0.5,
        pred_iou_thresh=0.5,
        stability_score_thresh=0.75,
        min_mask_region_area=100,
        mask_nms_thresh=0.625,
        non_overlapping=True,
        stability_scores=True,
    )
    inputs = settings.to_inputs()
    assert {spec.name for spec, *_ in contract._FILTER_INPUTS} <= set(inputs)
    assert Settings.from_inputs(inputs) == settings
    assert settings.outputs()[-1] == contract.STABILITY_SCORES.name
    assert Settings(stability_score_thresh=0.5).needs_stability and not Settings().needs_stability


@pytest.mark.parametrize(
    "case, message",
    [
        ({"pred_iou_thresh": 1.5}, r"pred_iou_thresh must be in \[0, 1\], got 1.5"),
        ({"stability_score_thresh": -0.1}, r"stability_score_thresh must be in \[0, 1\], got -0.1"),
        ({"mask_nms_thresh": 0.0}, r"mask_nms_thresh must be in \(0, 1\], got 0"),
        ({"min_mask_region_area": -1}, r"min_mask_region_area must be in \[0, 64000000\], got -1"),
        ({"min_mask_region_area": 2.5}, "min_mask_region_area must be an integer, got 2.5"),
        ({"non_overlapping": "yes"}, "non_overlapping must be True or False, got 'yes'"),
    ],
)
def test_filter_settings_refuse_out_of_range(case, message):
    with pytest.raises(ContractError, match=message):
        Settings(**case)
