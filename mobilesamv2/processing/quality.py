"""SAM's mask-quality filters (segment-anything's ``SamAutomaticMaskGenerator``), for SegEvery's masks.

MobileSAMv2's reference keeps every mask; SAM's automatic mask generator filters them, and people who label
datasets expect it to. Its steps, and where each runs here:

1. predicted IoU ``> pred_iou_thresh``: on the decoder's IoU predictions (the pipeline, before any mask is
   made).
2. stability score ``>= stability_score_thresh``: the IoU of the mask thresholded at ``+offset`` and at
   ``-offset`` (``offset`` = :data:`~segment_everything_contract.STABILITY_SCORE_OFFSET`), on the logits
   upsampled to the image like the mask itself. It needs the full-resolution logits, so the mask postprocess
   counts both areas where the logits are (``masks.mask_areas`` on the host, ``device_masks`` on a GPU) and
   :func:`stability_from_areas` divides them.
3. NMS between the masks' tight boxes (:func:`sam_boxes`), scored by predicted IoU (``mask_nms_thresh``).
4. with ``min_mask_region_area``: holes, then islands, smaller than it are removed
   (:func:`remove_small_regions`), and NMS runs again, scored 1 for masks left unchanged and 0 for changed
   ones (SAM's ``postprocess_small_regions``).

Steps 3-4 and ``non_overlapping`` (not SAM's: each pixel goes to the mask with the highest predicted IoU
covering it) need only the binary masks: :func:`filter_binary_masks` runs them on the RLEs (or dense masks)
the postprocess made, one full-resolution mask at a time, as SAM runs step 4 on its RLEs on the CPU.

The formulas are segment-anything's (``calculate_stability_score``, ``batched_mask_to_box``,
``remove_small_regions``, ``torchvision.ops.batched_nms``); the tests check each against them on the same
logits. SAM runs steps 3-4 once per crop and again across crops; SegEvery has one crop, the image, so one NMS
threshold serves both (SAM's second NMS uses ``max(box_nms_thresh, crop_nms_thresh)``).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from segment_everything_contract import Settings
from segment_everything_contract import rle as rle_codec

from .boxes import non_max_suppression


def stability_from_areas(high: np.ndarray, low: np.ndarray) -> np.ndarray:
    """SAM's ``calculate_stability_score`` from the pixel counts of ``logits > +offset`` (``high``) and
    ``logits > -offset`` (``low``): ``high / low`` in float32, as torch divides two int32 tensors. A mask with
    no pixel above ``-offset`` scores 0 (SAM: 0/0 = NaN; no threshold above 0 keeps either)."""
    high = np.asarray(high, np.int64).astype(np.float32)
    low = np.asarray(low, np.int64).astype(np.float32)
    out = np.zeros(high.shape, np.float32)
    np.divide(high, low, out=out, where=low > 0)
    return out


def remove_small_regions(mask: np.ndarray, area_thresh: float, mode: str) -> tuple[np.ndarray, bool]:
    """SAM's ``remove_small_regions``: fill the holes (``mode="holes"``) or remove the islands
    (``"islands"``) of a bool mask that have fewer than ``area_thresh`` pixels (8-connected); where every
    island is small, the largest stays. Returns the mask and whether it changed."""
    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    holes = mode == "holes"
    working = (mask != holes).view(np.uint8) if mask.dtype == np.bool_ else (holes ^ mask).astype(np.uint8)
    n_labels, regions, stats, _ = cv2.connectedComponentsWithStats(working, connectivity=8)
    sizes = stats[1:, cv2.CC_STAT_AREA]  # label 0: the other value
    small = np.flatnonzero(sizes < area_thresh) + 1
    if small.size == 0:
        return mask, False
    keep = np.zeros(n_labels, bool)  # the labels that make up the new mask
    if holes:
        keep[0] = True
        keep[small] = True
    else:
        keep[1:] = True
        keep[small] = False
        if not keep.any():  # every island is small: keep the largest
            keep[int(np.argmax(sizes)) + 1] = True
    return keep[regions], True


def sam_boxes(rles: Sequence[dict] | None = None, masks: np.ndarray | None = None) -> np.ndarray:
    """Tight boxes of bool masks as SAM's ``batched_mask_to_box`` writes them: xyxy float32 with the last
    pixel's own coordinates as ``x2, y2`` (a one-pixel mask is a zero-area box), ``[0, 0, 0, 0]`` for an
    empty mask. From COCO RLEs or dense ``(N, h, w)`` masks."""
    if rles is not None:
        xywh = np.array([rle_codec.to_bbox(r) for r in rles], np.float32).reshape(-1, 4)
    else:
        xywh = np.zeros((len(masks), 4), np.float32)
        for i, mask in enumerate(masks):
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            if len(rows):
                xywh[i] = cols[0], rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1
    boxes = np.zeros_like(xywh)
    nonempty = xywh[:, 2] > 0
    boxes[nonempty, :2] = xywh[nonempty, :2]
    boxes[nonempty, 2:] = xywh[nonempty, :2] + xywh[nonempty, 2:] - 1
    return boxes


def _nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """torchvision's ``batched_nms`` with one category: kept indices by descending score (ties keep their
    order). At threshold 1 nothing is suppressed: only the order remains."""
    if threshold >= 1.0 or len(boxes) == 0:
        return np.argsort(-scores, kind="stable")
    with np.errstate(invalid="ignore", divide="ignore"):  # empty boxes: 0/0 IoU, never suppressed (as torch)
        return non_max_suppression(boxes, scores, None, threshold, len(boxes), len(boxes))


class _MaskSet:
    """Bool masks held as COCO RLEs (changed ones re-encoded) or as a dense ``(N, h, w)`` array (in place)."""

    def __init__(self, rles: list[dict] | None, dense: np.ndarray | None) -> None:
        self.rles, self.dense = rles, dense
        if dense is not None:
            self.shape = (int(dense.shape[1]), int(dense.shape[2]))
        else:
            self.shape = tuple(int(v) for v in rles[0]["size"]) if rles else (0, 0)

    def get(self, i: int) -> np.ndarray:
        return self.dense[i] if self.dense is not None else rle_codec.decode(self.rles[i])

    def put(self, i: int, mask: np.ndarray) -> None:
        if self.dense is not None:
            self.dense[i] = mask
        else:
            self.rles[i] = rle_codec.encode(mask)

    def boxes(self, rows: np.ndarray) -> np.ndarray:
        if self.dense is not None:
            return sam_boxes(masks=self.dense[rows])
        return sam_boxes(rles=[self.rles[i] for i in rows.tolist()])


def filter_binary_masks(
    rles: list[dict] | None, dense: np.ndarray | None, ious: np.ndarray, settings: Settings
) -> np.ndarray | None:
    """Steps 3-4 and ``non_overlapping`` on the masks that passed the logit filters.

    ``rles`` (a list, changed masks replaced in it) or ``dense`` (``(N, h, w)`` bool, changed in place), and
    their predicted IoUs. Returns the rows to keep, in output order, or None when no setting asks for any of
    these (the masks stay as they are, at no cost).
    """
    if not (settings.sam_filters or settings.non_overlapping):
        return None
    masks = _MaskSet(rles, dense)
    ious = np.asarray(ious, np.float32)
    rows = np.arange(len(ious))
    if settings.sam_filters:
        rows = rows[_nms(masks.boxes(rows), ious[rows], settings.mask_nms_thresh)]
    if settings.min_mask_region_area > 0 and len(rows):
        unchanged = np.ones(len(rows), np.float32)
        for k, i in enumerate(rows.tolist()):
            mask, holes = remove_small_regions(masks.get(i), settings.min_mask_region_area, "holes")
            mask, islands = remove_small_regions(mask, settings.min_mask_region_area, "islands")
            if holes or islands:
                unchanged[k] = 0.0
                masks.put(i, mask)
        rows = rows[_nms(masks.boxes(rows), unchanged, settings.mask_nms_thresh)]
    if settings.non_overlapping and len(rows):
        taken = np.zeros(masks.shape, bool)
        nonempty = np.ones(len(ious), bool)
        for i in rows[np.argsort(-ious[rows], kind="stable")].tolist():  # best first
            mask = masks.get(i)
            if (mask & taken).any():
                mask = mask & ~taken
                masks.put(i, mask)
            taken |= mask
            nonempty[i] = mask.any()
        rows = rows[nonempty[rows]]
    return rows
