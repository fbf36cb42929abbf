"""Request settings and the result type.

:class:`Segmentation` is what every segment call returns: one row per instance in ``boxes``,
``scores``, ``iou_predictions`` and ``rles``; full-resolution masks are decoded from the RLEs
only when asked for.

>>> import numpy as np
>>> from segment_everything_contract import rle
>>> m = np.zeros((4, 6), dtype=bool); m[1:3, 2:5] = True
>>> seg = Segmentation(boxes=[[2, 1, 5, 3]], scores=[0.9], iou_predictions=[0.95],
...                    image_size=(4, 6), rles=[rle.encode(m)])
>>> len(seg), seg.masks.shape, seg.masks.dtype
(1, (1, 4, 6), dtype('bool'))
>>> [(round(inst.score, 2), int(inst.mask.sum())) for inst in seg]
[(0.9, 6)]
>>> seg.to_coco(image_id=7)[0]["bbox"]
[2.0, 1.0, 3.0, 2.0]
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypedDict, overload

import numpy as np

import segment_everything_contract as contract
from segment_everything_contract import rle as _rle

from .errors import InvalidInputError

if TYPE_CHECKING:
    from .images import ImageInput

__all__ = [
    "OUTPUT_FORMATS",
    "SAM_OUTPUT_MODES",
    "CocoAnnotation",
    "Instance",
    "SamRecord",
    "SegmentSettings",
    "Segmentation",
    "palette",
]

#: ``output`` values: what the server sends back for the masks.
#:   ``"rle"``: COCO RLE strings (small; default). ``"dense"``: full-resolution bool masks.
#:   ``"logits"``: RLEs plus the decoder's 256x256 low-resolution logits.
OUTPUT_FORMATS = contract.OUTPUT_FORMATS


class _CocoOptional(TypedDict, total=False):
    stability_score: float


class CocoAnnotation(_CocoOptional):
    """One instance in the COCO results format (what :meth:`Segmentation.to_coco` returns)."""

    image_id: int | str
    category_id: int
    segmentation: _rle.RLE
    area: int
    bbox: list[float]
    score: float
    iscrowd: int
    predicted_iou: float


#: ``output_mode`` of :meth:`Segmentation.to_sam_records`, as SAM's ``SamAutomaticMaskGenerator`` names them.
SAM_OUTPUT_MODES = ("binary_mask", "coco_rle")


class SamRecord(TypedDict):
    """One mask as ``SamAutomaticMaskGenerator.generate`` returns it (:meth:`Segmentation.to_sam_records`)."""

    segmentation: np.ndarray | _rle.RLE
    area: int
    bbox: list[int]
    predicted_iou: float
    point_coords: list[list[float]]
    stability_score: float
    crop_box: list[int]


@dataclass(frozen=True)
class SegmentSettings(contract.Settings):
    """The contract's :class:`~segment_everything_contract.Settings` (same fields, defaults and ranges),
    raising the client's :class:`~segment_everything_client.errors.InvalidInputError`.

    Args:
        conf: detector confidence threshold for object discovery, in [0, 1) (default 0.4).
        iou: NMS IoU threshold between discovered boxes, in (0, 1] (default 0.9).
        max_prompts: at most this many boxes are turned into masks, 1..1000 (default 300).
        output: ``"rle"``, ``"dense"`` or ``"logits"`` (see :data:`OUTPUT_FORMATS`).
        timings: ask the server for per-stage timings (``Segmentation.timings``).
        multimask: SegAny only: three candidate masks per prompt (SAM's ambiguity output).
        pred_iou_thresh, stability_score_thresh, min_mask_region_area, mask_nms_thresh, non_overlapping:
            SAM's automatic mask generator's quality filters, run on the server (all off by default); see
            :class:`segment_everything_contract.Settings`.
        stability_scores: also return each mask's stability score (``Segmentation.stability_scores``).

    >>> SegmentSettings(conf=0.25).conf
    0.25
    >>> SegmentSettings(iou=1.5)
    Traceback (most recent call last):
    ...
    segment_everything_client.errors.InvalidInputError: iou_threshold must be in (0, 1], got 1.5
    """

    def __post_init__(self) -> None:
        try:
            super().__post_init__()
        except contract.ContractError as exc:
            raise InvalidInputError(str(exc)) from None


def palette(n: int) -> np.ndarray:
    """``n`` distinct, deterministic RGB colors (uint8 ``nx3``): golden-ratio hue steps.

    >>> palette(2).tolist()
    [[242, 85, 85], [85, 131, 242]]
    """
    if n <= 0:
        return np.zeros((0, 3), dtype=np.uint8)
    hue = (np.arange(n) * 0.618033988749895) % 1.0
    sat, val = 0.65, 0.95
    h6 = hue * 6.0
    sector = np.floor(h6).astype(int) % 6
    frac = h6 - np.floor(h6)
    p = val * (1 - sat)
    q = val * (1 - sat * frac)
    t = val * (1 - sat * (1 - frac))
    v = np.full(n, val)
    pv = np.full(n, p)
    table = [(v, t, pv), (q, v, pv), (pv, v, t), (pv, q, v), (t, pv, v), (v, pv, q)]
    rgb = np.zeros((n, 3))
    for s, (r, g, b) in enumerate(table):
        sel = sector == s
        rgb[sel, 0], rgb[sel, 1], rgb[sel, 2] = r[sel], g[sel], b[sel]
    return np.round(rgb * 255).astype(np.uint8)


@dataclass(frozen=True, eq=False)
class Instance:
    """One segmented object; ``rle`` and ``mask`` come from the parent :class:`Segmentation`."""

    index: int
    box: np.ndarray  # float32 (4,), xyxy in original pixels
    score: float
    iou_prediction: float
    _parent: Segmentation = field(repr=False)

    @property
    def rle(self) -> _rle.RLE:
        return self._parent.rles[self.index]

    @property
    def mask(self) -> np.ndarray:
        """Full-resolution bool mask ``HxW`` (decoded on access)."""
        return self._parent.mask(self.index)

    @property
    def area(self) -> int:
        return int(self._parent.areas[self.index])


@dataclass(eq=False)
class Segmentation:
    """Instances found in one image; every per-instance array has one row per mask.

    Attributes:
        boxes: float32 ``(N, 4)`` boxes, xyxy in original image pixels.
        scores: float32 ``(N,)`` detector confidences (1.0 for boxes/points you gave).
        iou_predictions: float32 ``(N,)`` the mask decoder's own quality estimate.
        image_size: ``(h, w)`` of the original image.
        rles: N COCO RLE dicts ``{"size": [h, w], "counts": str}``.
        prompt_index: int32 ``(N,)`` the prompt each mask answers (SegAny with ``multimask``: three masks
            share one prompt); ``0..N-1`` otherwise.
        timings: server stage -> milliseconds when requested, else None.
        low_res_logits: float32 ``(N, 256, 256)`` with ``output="logits"``, else None.
        stability_scores: float32 ``(N,)`` SAM's stability score of each mask, when asked for
            (``stability_scores=True``) or filtered on, else None.

    Masks are decoded lazily: ``masks`` (all, ``(N, h, w)`` bool, cached) or ``mask(i)``.
    Like ultralytics' ``Results``, indexing with a slice, an index array or a boolean mask selects the same
    rows of every part at once: ``seg[seg.scores > 0.5]``, ``seg[:10]``; an integer gives one
    :class:`Instance`.
    """

    boxes: np.ndarray
    scores: np.ndarray
    iou_predictions: np.ndarray
    image_size: tuple[int, int]
    rles: list[_rle.RLE]
    prompt_index: np.ndarray | None = None
    timings: dict[str, float] | None = None
    low_res_logits: np.ndarray | None = field(default=None, repr=False)
    stability_scores: np.ndarray | None = field(default=None, repr=False)
    _masks: np.ndarray | None = field(default=None, repr=False)
    _areas: np.ndarray | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.iou_predictions = np.asarray(self.iou_predictions, dtype=np.float32).reshape(-1)
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))
        self.rles = list(self.rles)
        n = len(self.boxes)
        if self.prompt_index is None:
            self.prompt_index = np.arange(n, dtype=np.int32)
        self.prompt_index = np.asarray(self.prompt_index, dtype=np.int32).reshape(-1)
        lengths = {
            "scores": len(self.scores),
            "iou_predictions": len(self.iou_predictions),
            "rles": len(self.rles),
            "prompt_index": len(self.prompt_index),
        }
        if self.low_res_logits is not None:
            lengths["low_res_logits"] = len(self.low_res_logits)
        if self.stability_scores is not None:
            self.stability_scores = np.asarray(self.stability_scores, dtype=np.float32).reshape(-1)
            lengths["stability_scores"] = len(self.stability_scores)
        if self._masks is not None:
            lengths["masks"] = len(self._masks)
        bad = {k: v for k, v in lengths.items() if v != n}
        if bad:
            raise ValueError(f"{n} boxes but {', '.join(f'{v} {k}' for k, v in bad.items())}")
        for r in self.rles:
            if tuple(r["size"]) != self.image_size:
                raise ValueError(f"RLE size {r['size']} does not match image_size {self.image_size}")

    @classmethod
    def from_dense(
        cls,
        boxes: np.ndarray | Sequence[Sequence[float]],
        scores: np.ndarray | Sequence[float],
        iou_predictions: np.ndarray | Sequence[float],
        masks: np.ndarray,
        *,
        image_size: tuple[int, int] | None = None,
        prompt_index: np.ndarray | None = None,
        timings: dict[str, float] | None = None,
        low_res_logits: np.ndarray | None = None,
        stability_scores: np.ndarray | None = None,
    ) -> Segmentation:
        """Build from full-resolution masks ``(N, h, w)``; the RLEs are computed here."""
        masks = np.asarray(masks, dtype=np.bool_)
        if masks.ndim != 3:
            raise ValueError(f"masks must be (N, h, w), got shape {masks.shape}")
        return cls(
            boxes=np.asarray(boxes),
            scores=np.asarray(scores),
            iou_predictions=np.asarray(iou_predictions),
            image_size=image_size or (masks.shape[1], masks.shape[2]),
            rles=[_rle.encode(m) for m in masks],
            prompt_index=prompt_index,
            timings=timings,
            low_res_logits=low_res_logits,
            stability_scores=stability_scores,
            _masks=masks,
        )

    # ----------------------------------------------------------------------------- access

    def __len__(self) -> int:
        return len(self.boxes)

    def __iter__(self) -> Iterator[Instance]:
        return (self[i] for i in range(len(self)))

    @overload
    def __getitem__(self, key: int) -> Instance: ...

    @overload
    def __getitem__(self, key: slice | np.ndarray | Sequence[int] | Sequence[bool]) -> Segmentation: ...

    def __getitem__(
        self, key: int | slice | np.ndarray | Sequence[int] | Sequence[bool]
    ) -> Instance | Segmentation:
        if isinstance(key, (int, np.integer)):
            n = len(self)
            if not -n <= key < n:
                raise IndexError(f"instance {key} out of range for {n} instances")
            i = int(key) % n
            return Instance(i, self.boxes[i], float(self.scores[i]), float(self.iou_predictions[i]), self)
        return self._apply(key)

    def _apply(self, key: slice | np.ndarray | Sequence[int] | Sequence[bool]) -> Segmentation:
        """The same rows of every part (ultralytics' ``Results._apply`` idea); lazily decoded parts follow."""
        rows = np.arange(len(self))[key] if isinstance(key, slice) else np.asarray(key)
        if rows.dtype == np.bool_:
            if rows.shape != (len(self),):
                raise IndexError(f"boolean index of shape {rows.shape} for {len(self)} instances")
            rows = np.flatnonzero(rows)
        rows = rows.astype(np.intp).reshape(-1)
        subset = Segmentation(
            boxes=self.boxes[rows],
            scores=self.scores[rows],
            iou_predictions=self.iou_predictions[rows],
            image_size=self.image_size,
            rles=[self.rles[i] for i in rows.tolist()],
            prompt_index=self.prompt_index[rows],
            timings=self.timings,
            low_res_logits=None if self.low_res_logits is None else self.low_res_logits[rows],
            stability_scores=None if self.stability_scores is None else self.stability_scores[rows],
            _masks=None if self._masks is None else self._masks[rows],
        )
        if self._areas is not None:
            subset._areas = self._areas[rows]
        return subset

    def best_per_prompt(self) -> Segmentation:
        """One mask per prompt: the one with the highest predicted IoU (SAM's predictor picks this way among
        its three multimask candidates). Order of the prompts is kept."""
        if len(self) == 0:
            return self._apply(np.zeros(0, np.intp))
        order = np.lexsort((-self.iou_predictions, self.prompt_index))
        first = np.ones(len(order), bool)
        first[1:] = self.prompt_index[order][1:] != self.prompt_index[order][:-1]
        return self._apply(order[first])

    @property
    def masks(self) -> np.ndarray:
        """All masks, bool ``(N, h, w)``; decoded on first access and cached (N*h*w bytes)."""
        if self._masks is None:
            h, w = self.image_size
            out = np.empty((len(self), h, w), dtype=np.bool_)
            for i, r in enumerate(self.rles):
                _rle.decode_into(r, out[i])
            self._masks = out
        return self._masks

    def mask(self, i: int) -> np.ndarray:
        """Mask ``i`` as bool ``(h, w)``, without decoding the others."""
        if self._masks is not None:
            return self._masks[i]
        return _rle.decode(self.rles[i])

    @property
    def areas(self) -> np.ndarray:
        """Pixel count of every mask, int64 ``(N,)``, computed from the RLEs."""
        if self._areas is None:
            self._areas = np.array([_rle.area(r) for r in self.rles], dtype=np.int64)
        return self._areas

    # ---------------------------------------------------------------------------- export

    def to_coco(self, image_id: int | str = 0, category_id: int = 1) -> list[CocoAnnotation]:
        """COCO annotations (results format), one per instance.

        Each has ``image_id``, ``category_id``, ``segmentation`` (compressed RLE, ``counts``
        as str), ``area``, ``bbox`` (tight box of the mask, xywh), ``score``, ``iscrowd`` and
        ``predicted_iou``, and ``stability_score`` when the server sent them. Loadable with
        ``pycocotools.coco.COCO.loadRes``.
        """
        anns: list[CocoAnnotation] = []
        for i, r in enumerate(self.rles):
            ann: CocoAnnotation = {
                "image_id": image_id,
                "category_id": int(category_id),
                "segmentation": {"size": list(r["size"]), "counts": r["counts"]},
                "area": int(self.areas[i]),
                "bbox": _rle.to_bbox(r),
                "score": float(self.scores[i]),
                "iscrowd": 0,
                "predicted_iou": float(self.iou_predictions[i]),
            }
            if self.stability_scores is not None:
                ann["stability_score"] = float(self.stability_scores[i])
            anns.append(ann)
        return anns

    def to_sam_records(self, output_mode: str = "binary_mask") -> list[SamRecord]:
        """The masks as SAM's ``SamAutomaticMaskGenerator.generate`` returns them, one dict per mask:
        ``segmentation`` (bool ``HxW`` array, or a COCO RLE dict with ``output_mode="coco_rle"``), ``area``,
        ``bbox`` (XYWH as SAM writes it: ``w = x_max - x_min``, one less than COCO's), ``predicted_iou``,
        ``point_coords`` (the prompt: a box's two corners), ``stability_score`` (needs the scores: see
        ``stability_scores``) and ``crop_box`` (the whole image: SegEvery has one crop).
        """
        if output_mode not in SAM_OUTPUT_MODES:
            modes = ", ".join(SAM_OUTPUT_MODES)
            raise InvalidInputError(f"output_mode must be one of {modes}, got {output_mode!r}")
        if self.stability_scores is None:
            raise InvalidInputError("SAM's records need stability scores: ask for stability_scores=True")
        h, w = self.image_size
        records: list[SamRecord] = []
        for i, r in enumerate(self.rles):
            x, y, bw, bh = (int(v) for v in _rle.to_bbox(r))
            bbox = [x, y, bw - 1, bh - 1] if bw > 0 else [0, 0, 0, 0]  # SAM's batched_mask_to_box
            x1, y1, x2, y2 = (float(v) for v in self.boxes[i])
            records.append(
                {
                    "segmentation": self.mask(i) if output_mode == "binary_mask" else dict(r),
                    "area": int(self.areas[i]),
                    "bbox": bbox,
                    "predicted_iou": float(self.iou_predictions[i]),
                    "point_coords": [[x1, y1], [x2, y2]],
                    "stability_score": float(self.stability_scores[i]),
                    "crop_box": [0, 0, w, h],
                }
            )
        return records

    def overlay(
        self,
        image: ImageInput,
        *,
        channel_order: str = "rgb",
        alpha: float = 0.5,
        draw_boxes: bool = True,
    ) -> np.ndarray:
        """Draw the instances over ``image``; returns uint8 RGB ``HxWx3``.

        Masks are painted largest first, so small objects stay visible on top of large ones;
        instance ``i`` always gets color ``palette(N)[i]``. ``image`` is anything
        :func:`~segment_everything_client.images.prepare_image` accepts (``channel_order``
        applies to arrays, e.g. ``"bgr"`` for ``cv2.imread`` output).
        """
        import cv2

        from .images import to_rgb_array

        base = to_rgb_array(image, channel_order=channel_order)
        h, w = self.image_size
        if base.shape[:2] != (h, w):
            raise InvalidInputError(
                f"image is {base.shape[0]}x{base.shape[1]} but the segmentation is for {h}x{w} "
                "(a different image, or EXIF orientation applied differently?)"
            )
        colors = palette(len(self))
        order = np.argsort(-self.areas, kind="stable")
        out = base.copy()
        if len(self):
            # Label image in column-major order (the RLE's order), painted run by run: every
            # pixel ends with the last (smallest) instance covering it, one blend per pixel.
            label_t = np.full((w, h), -1, dtype=np.int16 if len(self) < 2**15 - 1 else np.int32)
            flat = label_t.reshape(-1)
            for i in order.tolist():
                counts = _rle.counts(self.rles[i])
                ends = np.cumsum(counts)
                for s, e in zip((ends[::2][: len(ends) // 2]).tolist(), ends[1::2].tolist(), strict=True):
                    flat[s:e] = i
            label = np.ascontiguousarray(label_t.T)
            lut = np.vstack([np.zeros((1, 3), np.uint8), colors])  # label -1 -> row 0
            tint = lut[label.astype(np.intp) + 1]
            blended = cv2.addWeighted(base, 1.0 - alpha, tint, alpha, 0.0)
            np.copyto(out, blended, where=(label >= 0)[:, :, None])
        if draw_boxes and len(self):
            thickness = max(1, round(max(h, w) / 600))
            for i in order.tolist():
                x0, y0, x1, y1 = (round(float(v)) for v in self.boxes[i])
                cv2.rectangle(out, (x0, y0), (x1, y1), tuple(int(c) for c in colors[i]), thickness)
        return out

    def save_overlay(
        self,
        path: str | os.PathLike[str],
        image: ImageInput,
        *,
        channel_order: str = "rgb",
        alpha: float = 0.5,
        draw_boxes: bool = True,
    ) -> None:
        """Write :meth:`overlay` to ``path`` (format from the suffix, e.g. ``.png``, ``.jpg``)."""
        import cv2

        rgb = self.overlay(image, channel_order=channel_order, alpha=alpha, draw_boxes=draw_boxes)
        if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1])):
            raise OSError(f"could not write {path}")

    def __repr__(self) -> str:
        h, w = self.image_size
        return f"Segmentation({len(self)} instances, image {h}x{w}, timings={self.timings})"
