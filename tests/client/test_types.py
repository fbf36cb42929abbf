"""Segmentation: lazy masks, iteration, COCO export, overlay; SegmentSettings validation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest

import segment_everything_contract as contract
from segment_everything_client.errors import InvalidInputError
from segment_everything_client.types import Instance, Segmentation, SegmentSettings, palette
from segment_everything_contract import rle

H, W = 40, 60


def make_masks() -> np.ndarray:
    masks = np.zeros((3, H, W), bool)
    masks[0, 5:35, 5:55] = True  # large
    masks[1, 10:20, 10:20] = True  # small, inside the large one
    masks[2, 30:38, 40:58] = True  # medium, overlapping the large one
    return masks


@pytest.fixture
def seg() -> Segmentation:
    masks = make_masks()
    return Segmentation(
        boxes=[[5, 5, 55, 35], [10, 10, 20, 20], [40, 30, 58, 38]],
        scores=[0.9, 0.8, 0.7],
        iou_predictions=[0.95, 0.85, 0.75],
        image_size=(H, W),
        rles=[rle.encode(m) for m in masks],
        timings={"encoder": 12.5},
    )


def test_fields_are_coerced(seg: Segmentation) -> None:
    assert seg.boxes.dtype == np.float32 and seg.boxes.shape == (3, 4)
    assert seg.scores.dtype == np.float32 and seg.iou_predictions.shape == (3,)
    assert seg.image_size == (H, W) and seg.timings == {"encoder": 12.5}
    assert "3 instances" in repr(seg)


def test_masks_are_decoded_lazily_and_cached(seg: Segmentation) -> None:
    assert seg._masks is None
    single = seg.mask(1)
    assert single.shape == (H, W) and single.sum() == 100
    assert seg._masks is None  # mask(i) does not decode the others
    masks = seg.masks
    assert masks.shape == (3, H, W) and masks.dtype == np.bool_
    np.testing.assert_array_equal(masks, make_masks())
    assert seg.masks is masks


def test_len_iteration_and_indexing(seg: Segmentation) -> None:
    assert len(seg) == 3
    instances = list(seg)
    assert all(isinstance(i, Instance) for i in instances)
    first = instances[0]
    assert (
        first.index == 0 and first.score == pytest.approx(0.9) and first.iou_prediction == pytest.approx(0.95)
    )
    np.testing.assert_array_equal(first.box, [5, 5, 55, 35])
    assert first.rle == seg.rles[0] and first.area == 1500
    np.testing.assert_array_equal(first.mask, make_masks()[0])
    assert seg[-1].index == 2
    with pytest.raises(IndexError):
        seg[3]


def test_areas(seg: Segmentation) -> None:
    assert seg.areas.tolist() == [1500, 100, 144]


def test_to_coco_fields(seg: Segmentation) -> None:
    anns = seg.to_coco(image_id=42, category_id=3)
    assert len(anns) == 3
    a = anns[1]
    assert set(a) >= {"image_id", "category_id", "segmentation", "area", "bbox", "score", "iscrowd"}
    assert a["image_id"] == 42 and a["category_id"] == 3 and a["iscrowd"] == 0
    assert a["segmentation"] == {"size": [H, W], "counts": seg.rles[1]["counts"]}
    assert isinstance(a["segmentation"]["counts"], str)
    assert a["area"] == 100 and a["bbox"] == [10.0, 10.0, 10.0, 10.0]
    assert a["score"] == pytest.approx(0.8) and a["predicted_iou"] == pytest.approx(0.85)


def test_to_coco_is_json_serialisable(seg: Segmentation) -> None:
    import json

    assert json.loads(json.dumps(seg.to_coco()))[0]["area"] == 1500


def test_overlay_shape_dtype_and_colors(seg: Segmentation) -> None:
    image = np.full((H, W, 3), 100, np.uint8)
    out = seg.overlay(image, alpha=0.5, draw_boxes=False)
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    colors = palette(3).astype(int)
    # smallest painted last: the small mask's color wins where it overlaps the large one
    np.testing.assert_allclose(out[15, 15], (100 + colors[1]) / 2, atol=1)
    np.testing.assert_allclose(out[25, 30], (100 + colors[0]) / 2, atol=1)
    np.testing.assert_array_equal(out[0, 0], [100, 100, 100])  # background untouched
    np.testing.assert_array_equal(image, 100)  # input not modified


def test_overlay_is_deterministic_and_draws_boxes(seg: Segmentation) -> None:
    image = np.zeros((H, W, 3), np.uint8)
    a = seg.overlay(image)
    b = seg.overlay(image)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[5, 5], palette(3)[0])  # box corner drawn in the instance color


def test_overlay_accepts_bgr_and_paths(seg: Segmentation, tmp_path: Path) -> None:
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[..., 0] = 255
    path = tmp_path / "img.png"
    cv2.imwrite(str(path), rgb[:, :, ::-1])
    expected = seg.overlay(rgb)
    np.testing.assert_array_equal(seg.overlay(rgb[:, :, ::-1].copy(), channel_order="bgr"), expected)
    np.testing.assert_array_equal(seg.overlay(path), expected)


def test_overlay_rejects_wrong_image_size(seg: Segmentation) -> None:
    with pytest.raises(InvalidInputError, match="segmentation is for"):
        seg.overlay(np.zeros((H + 1, W, 3), np.uint8))


def test_save_overlay_writes_png(seg: Segmentation, tmp_path: Path) -> None:
    out = tmp_path / "overlay.png"
    image = np.full((H, W, 3), 30, np.uint8)
    seg.save_overlay(out, image)
    written = cv2.imread(str(out))[:, :, ::-1]
    np.testing.assert_array_equal(written, seg.overlay(image))


def test_empty_segmentation() -> None:
    seg = Segmentation(boxes=np.zeros((0, 4)), scores=[], iou_predictions=[], image_size=(H, W), rles=[])
    assert len(seg) == 0 and list(seg) == [] and seg.to_coco() == []
    assert seg.masks.shape == (0, H, W)
    np.testing.assert_array_equal(seg.overlay(np.zeros((H, W, 3), np.uint8)), 0)


def test_from_dense_computes_rles() -> None:
    masks = make_masks()
    seg = Segmentation.from_dense([[0, 0, 1, 1]] * 3, [1, 1, 1], [0.5, 0.5, 0.5], masks)
    assert seg.image_size == (H, W)
    assert seg.rles[2] == rle.encode(masks[2])
    assert seg.masks is seg._masks


def test_inconsistent_lengths_rejected() -> None:
    with pytest.raises(ValueError, match="2 boxes but 1 scores"):
        Segmentation(
            boxes=np.zeros((2, 4)),
            scores=[1],
            iou_predictions=[1, 1],
            image_size=(2, 2),
            rles=[rle.encode(np.zeros((2, 2), bool))] * 2,
        )


def test_rle_size_mismatch_rejected() -> None:
    with pytest.raises(ValueError, match="does not match image_size"):
        Segmentation(
            boxes=np.zeros((1, 4)),
            scores=[1],
            iou_predictions=[1],
            image_size=(3, 3),
            rles=[rle.encode(np.zeros((2, 2), bool))],
        )


def test_palette_is_deterministic_and_distinct() -> None:
    p = palette(50)
    assert p.dtype == np.uint8 and p.shape == (50, 3)
    np.testing.assert_array_equal(p, palette(50))
    assert len({tuple(c) for c in p.tolist()}) == 50


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"conf": 1.5}, "conf_threshold must be in"),
        ({"conf": 1.0}, "conf_threshold must be in"),
        ({"conf": -0.1}, "conf_threshold must be in"),
        ({"iou": float("nan")}, "iou_threshold must be finite"),
        ({"iou": 0.0}, "iou_threshold must be in"),
        ({"conf": "0.4"}, "conf_threshold must be a number"),
        ({"max_prompts": 0}, "max_prompts"),
        ({"max_prompts": 2.5}, "max_prompts must be an integer"),
        ({"max_prompts": 2**40}, "max_prompts must be in \\[1, 1000\\]"),
        ({"output": "png"}, "output_format must be one of"),
    ],
)
def test_settings_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        SegmentSettings(**kwargs)


def test_settings_defaults_are_the_contracts() -> None:
    s = SegmentSettings()
    assert (s.conf, s.iou, s.max_prompts, s.output, s.timings) == (0.4, 0.9, 300, "rle", False)
    assert dataclasses.astuple(s) == dataclasses.astuple(contract.Settings())
