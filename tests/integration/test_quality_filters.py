"""SAM's quality filters on the real server, against segment-anything's own automatic mask generator.

segment-anything's ``SamAutomaticMaskGenerator`` runs here with a stand-in predictor that returns what the
server computed: its low-res logits upsampled to the image by the host postprocess (the server's own numbers:
``processing.masks``), and its IoU predictions. The generator then applies SAM's filters with SAM's functions
(``calculate_stability_score``, ``batched_mask_to_box``, ``batched_nms``, ``remove_small_regions``) and its
records must equal the server's, filtered on the server. Thresholds are picked from the data so that every
filter removes some masks and keeps some.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mobilesamv2.processing.image import encoder_input_size
from mobilesamv2.processing.masks import iter_upsampled_transposed
from segment_everything_client import SegmentEverythingClient

segment_anything = pytest.importorskip("segment_anything")
from segment_anything import SamAutomaticMaskGenerator  # noqa: E402
from segment_anything.utils.amg import batched_mask_to_box, calculate_stability_score  # noqa: E402
from torchvision.ops import box_iou  # noqa: E402

pytestmark = pytest.mark.server

EVERY_PROMPTS = 16  # SegEvery: the detector's 16 best boxes on bus.jpg
GRID = np.array([[x, y] for y in (0.3, 0.7) for x in (0.2, 0.5, 0.8)])  # SegAny: 6 points, 3 masks each


@pytest.fixture(scope="module")
def client(triton_server):
    with SegmentEverythingClient(triton_server.grpc_url, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def everything(client, bus_path):
    """SegEvery, unfiltered, with logits and stability scores, and its masks' full-resolution logits."""
    seg = client.segment_everything(
        bus_path, max_prompts=EVERY_PROMPTS, output="logits", stability_scores=True
    )
    assert len(seg) == EVERY_PROMPTS
    return seg, upsampled(seg)


@pytest.fixture(scope="module")
def grid(client, bus_path):
    """SegAny on a point grid with SAM's three masks per point: SAM's automatic mask generator's input."""
    h, w = 1080, 810
    points = GRID * [w, h]
    seg = client.segment_anything(
        bus_path, points=points, multimask=True, output="logits", stability_scores=True
    )
    assert seg.image_size == (h, w) and len(seg) == 3 * len(points)
    return seg, upsampled(seg), points


def upsampled(seg) -> torch.Tensor:
    """The server's full-resolution logits (N, h, w): its low-res logits through the host postprocess."""
    size = seg.image_size
    chunks = iter_upsampled_transposed(seg.low_res_logits, encoder_input_size(*size), size)
    return torch.from_numpy(np.ascontiguousarray(np.concatenate(list(chunks), axis=2).transpose(2, 1, 0)))


class ServedPredictor:
    """SAM's ``SamPredictor`` as the generator uses it, answering with the server's masks and IoUs."""

    def __init__(self, logits: torch.Tensor, ious: np.ndarray, per_point: int) -> None:
        self.logits = logits.reshape(-1, per_point, *logits.shape[1:])
        self.ious = torch.from_numpy(np.array(ious, np.float32).reshape(-1, per_point))
        self.model = SimpleNamespace(mask_threshold=0.0)
        self.device = torch.device("cpu")
        from segment_anything.utils.transforms import ResizeLongestSide

        self.transform = ResizeLongestSide(1024)

    def set_image(self, image: np.ndarray) -> None:
        assert image.shape[:2] == self.logits.shape[-2:]  # one crop: the whole image

    def reset_image(self) -> None:
        pass

    def predict_torch(self, point_coords, point_labels, multimask_output=True, return_logits=False):
        assert return_logits and len(point_coords) == len(self.logits)  # one batch with every prompt
        return self.logits, self.ious, None


def sam_records(seg, logits: torch.Tensor, points: np.ndarray, per_point: int, **settings) -> list[dict]:
    """segment-anything's generator over the server's unfiltered masks, with our settings in SAM's names."""
    h, w = seg.image_size
    nms = settings.get("mask_nms_thresh", 1.0)
    generator = SamAutomaticMaskGenerator(
        SimpleNamespace(image_encoder=SimpleNamespace(img_size=1024), mask_threshold=0.0),
        points_per_side=None,
        point_grids=[np.asarray(points, np.float64) / [w, h]],
        points_per_batch=len(points),
        pred_iou_thresh=settings.get("pred_iou_thresh", 0.0),
        stability_score_thresh=settings.get("stability_score_thresh", 0.0),
        stability_score_offset=1.0,
        box_nms_thresh=nms,
        crop_nms_thresh=nms,  # one crop: SAM's second NMS runs at max(box, crop) thresholds
        min_mask_region_area=settings.get("min_mask_region_area", 0),
        output_mode="coco_rle",
    )
    generator.predictor = ServedPredictor(logits, seg.iou_predictions, per_point)
    return generator.generate(np.zeros((h, w, 3), np.uint8))


def comparable(records: list[dict]) -> list[tuple]:
    return [
        (
            r["segmentation"]["counts"],
            tuple(r["segmentation"]["size"]),
            r["area"],
            tuple(r["bbox"]),
            r["predicted_iou"],
            r["stability_score"],
            tuple(r["crop_box"]),
        )
        for r in records
    ]


def between(values: np.ndarray, q: float) -> float:
    """A float32 threshold halfway between two neighbouring values near the ``q`` quantile."""
    ordered = np.unique(np.asarray(values, np.float32))
    i = int(np.clip(round(q * (len(ordered) - 1)), 1, len(ordered) - 1))
    return float(np.float32((float(ordered[i - 1]) + float(ordered[i])) / 2))


def pairwise_box_iou_threshold(logits: torch.Tensor) -> float:
    """An NMS threshold that suppresses some masks and keeps others: the median IoU between mask boxes."""
    boxes = batched_mask_to_box(logits > 0).float()
    iou = box_iou(boxes, boxes)
    return between(iou[~torch.eye(len(boxes), dtype=torch.bool)].numpy(), 0.5)


def test_stability_scores_are_sams_on_the_servers_logits(everything, grid):
    for seg, logits, *_ in (everything, grid):
        reference = torch.nan_to_num(calculate_stability_score(logits, 0.0, 1.0), nan=0.0).numpy()
        np.testing.assert_array_equal(seg.stability_scores, reference)
    assert np.unique(everything[0].stability_scores).size > EVERY_PROMPTS // 2  # real, distinct scores


def test_segevery_filters_equal_sams_generator(client, bus_path, everything):
    seg, logits = everything
    points = (seg.boxes[:, :2] + seg.boxes[:, 2:]) / 2  # SAM records a point per mask; not compared
    cases = [
        {"stability_score_thresh": between(seg.stability_scores, 0.5)},
        {"mask_nms_thresh": pairwise_box_iou_threshold(logits)},
        {"min_mask_region_area": 2000},
        {"stability_score_thresh": between(seg.stability_scores, 0.3), "min_mask_region_area": 2000},
    ]
    for settings in cases:
        expected = sam_records(seg, logits, points, 1, **settings)
        got = client.generate(bus_path, max_prompts=EVERY_PROMPTS, output_mode="coco_rle", **settings)
        assert comparable(got) == comparable(expected), settings
        assert len(got) > 0, settings
        if "min_mask_region_area" not in settings:
            assert len(got) < len(seg), settings  # the filter removed some masks
    changed = {r["segmentation"]["counts"] for r in got} - {r["counts"] for r in seg.rles}
    assert changed  # small regions were removed from some masks


def test_grid_filters_equal_sams_generator(client, bus_path, grid):
    """SegAny with multimask on a point grid, filtered: SAM's automatic mask generator on one crop. Its
    predicted IoUs spread around zero, so the first filter SAM applies has something to do here (SegEvery's
    single-mask IoUs are all negative with the test suite's random weights, and so is every mask's stability
    score here: these logits never reach +1)."""
    seg, logits, points = grid
    pred_iou_thresh = between(seg.iou_predictions[seg.iou_predictions > 0], 0.5)
    passing = int((seg.iou_predictions > pred_iou_thresh).sum())
    # these masks' boxes all cover the whole image: NMS would keep one (SegEvery's test covers NMS)
    settings = {"pred_iou_thresh": pred_iou_thresh, "min_mask_region_area": 2000}
    filtered = client.segment_anything(
        bus_path, points=points, multimask=True, stability_scores=True, **settings
    )
    expected = sam_records(seg, logits, points, 3, **settings)
    got = filtered.to_sam_records("coco_rle")
    assert comparable(got) == comparable(expected)
    assert 0 < len(got) == passing < len(seg)  # the IoU filter removed masks
    assert {r["segmentation"]["counts"] for r in got} - {r["counts"] for r in filtered.rles} == set()
    assert {r["segmentation"]["counts"] for r in got} - {r["counts"] for r in seg.rles}  # small regions


def test_non_overlapping_gives_each_pixel_to_its_best_mask(client, bus_path, everything):
    seg, logits = everything
    got = client.segment_everything(bus_path, max_prompts=EVERY_PROMPTS, non_overlapping=True)
    masks = (logits > 0).numpy()
    taken = np.zeros(masks.shape[1:], bool)
    expected = {}
    for i in np.argsort(-seg.iou_predictions, kind="stable"):
        expected[int(i)] = masks[i] & ~taken
        taken |= masks[i]
    kept = [i for i in range(len(masks)) if expected[i].any()]
    assert got.prompt_index.tolist() == kept and len(kept) < len(masks)
    np.testing.assert_array_equal(got.masks, np.stack([expected[i] for i in kept]))
    assert got.masks.sum(0).max() == 1


def test_defaults_keep_todays_output(client, bus_path, everything):
    seg, _ = everything
    plain = client.segment_everything(bus_path, max_prompts=EVERY_PROMPTS)
    assert plain.stability_scores is None
    assert plain.rles == seg.rles
    np.testing.assert_array_equal(plain.iou_predictions, seg.iou_predictions)
