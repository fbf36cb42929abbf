"""Box post-processing of object discovery, in the order SegEvery applies it.

detector head output -> ``select_candidates`` (conf filter, xywh->xyxy) -> ``non_max_suppression``
(class-aware, IoU 0.9, max 300) -> ``snap_to_border`` (letterbox frame) -> ``scale_boxes`` (un-letterbox to
image pixels) -> ``boxes_to_encoder_frame`` (SAM's 1024 frame, the decoder's prompt frame).

Every function mirrors the reference (ultralytics 8.0.x as vendored by MobileSAMv2) to the float, including
its quirks; numpy only, so the Triton Python models do not need torch.
"""

from __future__ import annotations

import numpy as np

from .image import LetterboxInfo, encoder_input_size

CONF_THRESHOLD = 0.4
IOU_THRESHOLD = 0.9
MAX_DETECTIONS = 300
"""The reference keeps the first 300 boxes after NMS (the paper says 320)."""
MAX_NMS_CANDIDATES = 30000
CLASS_OFFSET = 7680.0
"""ultralytics' ``max_wh``: boxes of different classes are shifted apart so one NMS call is class-aware."""
BORDER_SNAP_PIXELS = 20.0


def select_candidates(
    prediction: np.ndarray, conf_threshold: float = CONF_THRESHOLD, num_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidates of one image from the detector head output ``(4 + nc [+ nm], A)``.

    Rows 0-3 are ``xywh`` in letterbox pixels, then ``nc`` sigmoid class scores (then unused mask coefficients
    when ``num_classes`` is given). Keeps anchors whose best class score is ``> conf_threshold``.

    Returns:
        boxes ``(K, 4)`` xyxy float32, scores ``(K,)`` float32, classes ``(K,)`` int32 (anchor order).
    """
    nc = prediction.shape[0] - 4 if num_classes is None else num_classes
    class_scores = prediction[4 : 4 + nc]
    scores = class_scores.max(axis=0)
    keep = np.flatnonzero(scores > conf_threshold)
    xywh = prediction[:4, keep].T
    boxes = np.empty_like(xywh)
    half_wh = xywh[:, 2:] / 2
    boxes[:, :2] = xywh[:, :2] - half_wh
    boxes[:, 2:] = xywh[:, :2] + half_wh
    classes = class_scores[:, keep].argmax(axis=0).astype(np.int32)
    return boxes.astype(np.float32, copy=False), scores[keep].astype(np.float32), classes


def box_iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box with many, in float32 with torchvision's formula (no +1 on widths)."""
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.maximum(x2 - x1, np.float32(0)) * np.maximum(y2 - y1, np.float32(0))
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (area + areas - inter)


def non_max_suppression(
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray | None = None,
    iou_threshold: float = IOU_THRESHOLD,
    max_detections: int = MAX_DETECTIONS,
    max_candidates: int = MAX_NMS_CANDIDATES,
) -> np.ndarray:
    """Greedy class-aware NMS; returns kept indices in descending score order (at most ``max_detections``).

    Equal to ultralytics' ``non_max_suppression`` (cap at ``max_candidates`` by score, offset boxes by
    ``class * 7680``, ``torchvision.ops.nms``, first ``max_detections``): a box is suppressed when its IoU
    with a kept, higher-scoring box is ``> iou_threshold``. Stops once ``max_detections`` boxes are kept,
    which gives the same result as suppressing everything and truncating.
    """
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    order = np.argsort(-scores, kind="stable")[:max_candidates]
    shifted = boxes[order].astype(np.float32)
    if classes is not None:
        shifted = shifted + (classes[order].astype(np.float32) * np.float32(CLASS_OFFSET))[:, None]
    suppressed = np.zeros(len(order), bool)
    keep: list[int] = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        if len(keep) == max_detections:
            break
        rest = slice(i + 1, None)
        # torchvision compares the float IoU against the double threshold
        suppressed[rest] |= box_iou_one_to_many(shifted[i], shifted[rest]).astype(np.float64) > iou_threshold
    return order[np.asarray(keep, np.int64)]


def snap_to_border(
    boxes: np.ndarray, input_shape: tuple[int, int], margin: float = BORDER_SNAP_PIXELS
) -> np.ndarray:
    """MobileSAMv2's border snap in the letterbox frame (padding included): edges within ``margin`` pixels of
    the letterbox border are moved onto it."""
    h_in, w_in = input_shape
    out = boxes.copy()
    out[:, 0] = np.where(out[:, 0] < margin, 0, out[:, 0])
    out[:, 1] = np.where(out[:, 1] < margin, 0, out[:, 1])
    out[:, 2] = np.where(out[:, 2] > w_in - margin, w_in, out[:, 2])
    out[:, 3] = np.where(out[:, 3] > h_in - margin, h_in, out[:, 3])
    return out


def scale_boxes(boxes: np.ndarray, input_shape: tuple[int, int], image_shape: tuple[int, int]) -> np.ndarray:
    """Letterbox frame -> original image pixels, exactly as ultralytics' ``scale_boxes``, then clipped.

    The pad is recomputed from the unrounded ``w * gain`` (``round(d/2 - 0.1)``), which can differ by a pixel
    from the pad ``letterbox`` actually added: parity with the reference needs this formula, not an exact
    inverse.
    """
    h_in, w_in = input_shape
    h, w = image_shape
    gain = min(h_in / h, w_in / w)
    pad_x = round((w_in - w * gain) / 2 - 0.1)
    pad_y = round((h_in - h * gain) / 2 - 0.1)
    out = boxes.astype(np.float32, copy=True)
    out[:, [0, 2]] -= pad_x
    out[:, [1, 3]] -= pad_y
    out /= np.float32(gain)
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, w)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, h)
    return out


def finalize_detections(
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    info: LetterboxInfo,
    iou_threshold: float = IOU_THRESHOLD,
    max_detections: int = MAX_DETECTIONS,
) -> tuple[np.ndarray, np.ndarray]:
    """Candidates (letterbox frame) -> SegEvery's box prompts in image pixels and their scores: NMS, border
    snap, un-letterbox; descending confidence order."""
    keep = non_max_suppression(boxes, scores, classes, iou_threshold, max_detections)
    snapped = snap_to_border(boxes[keep], info.input_shape)
    return scale_boxes(snapped, info.input_shape, info.image_shape), scores[keep]


def boxes_to_encoder_frame(boxes: np.ndarray, image_shape: tuple[int, int]) -> np.ndarray:
    """Original pixels -> SAM's resized 1024 frame (``ResizeLongestSide.apply_boxes``; float64 like SAM)."""
    h, w = image_shape
    new_h, new_w = encoder_input_size(h, w)
    out = boxes.astype(np.float64, copy=True)
    out[:, [0, 2]] *= new_w / w
    out[:, [1, 3]] *= new_h / h
    return out.astype(np.float32)


def points_to_encoder_frame(points: np.ndarray, image_shape: tuple[int, int]) -> np.ndarray:
    """Original pixels -> SAM's 1024 frame for ``(..., 2)`` xy points (``ResizeLongestSide.apply_coords``)."""
    h, w = image_shape
    new_h, new_w = encoder_input_size(h, w)
    out = points.astype(np.float64, copy=True)
    out[..., 0] *= new_w / w
    out[..., 1] *= new_h / h
    return out.astype(np.float32)


def boxes_to_prompts(boxes_encoder_frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Box prompts as the decoder's ``point_coords (N, 2, 2)`` / ``point_labels (N, 2)`` with SAM's corner
    labels 2 (top-left) and 3 (bottom-right); equal to the prompt encoder's box embedding."""
    coords = boxes_encoder_frame.reshape(-1, 2, 2).astype(np.float32)
    labels = np.tile(np.array([[2, 3]], np.float32), (len(coords), 1))
    return coords, labels


def points_to_prompts(points_encoder_frame: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Point prompts ``(N, P, 2)`` / labels ``(N, P)`` (1 fg, 0 bg) plus SAM's padding point (label -1), which
    SAM appends whenever no box is given."""
    n = points_encoder_frame.shape[0]
    coords = np.concatenate([points_encoder_frame, np.zeros((n, 1, 2), np.float32)], axis=1).astype(
        np.float32
    )
    labels = np.concatenate([labels.astype(np.float32), -np.ones((n, 1), np.float32)], axis=1)
    return coords, labels
