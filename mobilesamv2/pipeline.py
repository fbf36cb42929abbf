"""SegEvery and SegAny orchestration as plain Python, with the model calls injected.

    request tensors -> SegmentRequest (contract checks, image decoded last)
        SegEvery: (encoder || discovery) -> NMS, border snap, un-letterbox -> boxes as prompts
        SegAny:   encoder; the caller's boxes or points as prompts
    -> ONE decoder call for all prompts (split only above ``decoder_max_prompts_per_call``)
    -> upsample, threshold -> COCO RLE / dense masks / logits -> SegmentResult -> response tensors

Nothing here imports Triton: the BLS model (``model_repository/segment_everything/1/model.py``) passes three
async callables that run its sub-models, and the tests pass in-process fakes or ONNX Runtime sessions. Pre-
and post-processing come from :mod:`mobilesamv2.processing`, the one implementation shared with the reference.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

import segment_everything_contract as contract
from segment_everything_contract import ContractError, Limits, Prompts, Settings

from .processing import boxes as box_ops
from .processing import quality
from .processing.image import (
    DETECTOR_CHANNEL_ORDER,
    ImageHeader,
    decode_image,
    detector_input,
    encoder_canvas,
    encoder_input_size,
    probe_image,
    validate_rgb_array,
)
from .processing.masks import (
    DEFAULT_CHUNK_BYTES,
    MASK_THRESHOLD,
    mask_areas,
    mask_boxes,
    masks_to_rles,
    rle_boxes,
    upsample_masks,
)

LOW_RES_BYTES = 256 * 256 * 4
"""One mask's 256x256 float32 logits."""


# ------------------------------------------------------------------------------------------------ the models

Embedding = Any
"""Whatever ``encode`` returns and ``decode`` takes (a numpy array, or a Triton tensor left where it is)."""


@dataclass(frozen=True)
class Models:
    """The three networks as async callables (the pipeline never knows how they run).

    Attributes:
        encode: ``(canvas (1, 1024, 1024, 3) uint8, size (1, 2) int32) -> embedding``.
        discover: ``(letterboxed (H, W, 3) uint8, conf) -> (boxes (K, 4) letterbox xyxy, scores (K,),
            classes (K,))``: the candidates above ``conf``, before NMS.
        decode: ``(embedding, coords (N, P, 2) float32, labels (N, P) float32, multimask, mask_input (N, 256,
            256) float32 or None) -> (logits (N, M, 256, 256), iou_predictions (N, M))`` with M = 3 when
            ``multimask`` (SAM's mask tokens 1-3) else 1 (token 0).
    """

    encode: Callable[[np.ndarray, np.ndarray], Awaitable[Embedding]]
    discover: Callable[[np.ndarray, float], Awaitable[tuple[np.ndarray, np.ndarray, np.ndarray]]]
    decode: Callable[[Embedding, np.ndarray, np.ndarray, bool, np.ndarray | None], Awaitable[tuple[Any, Any]]]


def uses_interactive_decoder(multimask: bool, mask_input: np.ndarray | None) -> bool:
    """SegEvery's decoder (token 0, no mask input, image side shared) unless SAM's full decoder is needed."""
    return multimask or mask_input is not None


def interactive_decoder_inputs(
    coords: np.ndarray, labels: np.ndarray, mask_input: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(point_coords, point_labels, mask_input (N, 1, 256, 256), has_mask_input (N,))`` of the interactive
    decoder; zeros and 0 where no previous mask is given (SAM's ONNX convention)."""
    n = len(coords)
    if mask_input is None:
        return coords, labels, np.zeros((n, 1, 256, 256), np.float32), np.zeros(n, np.float32)
    return coords, labels, np.ascontiguousarray(mask_input[:, None], np.float32), np.ones(n, np.float32)


def select_mask_tokens(logits: Any, ious: Any, multimask: bool) -> tuple[Any, Any]:
    """The interactive decoder's four tokens -> SAM's predictor output: 1-3 with ``multimask``, else 0."""
    tokens = contract.MULTIMASK_TOKENS if multimask else slice(0, 1)
    return logits[:, tokens], ious[:, tokens]


class MaskPostprocessor(Protocol):
    """Low-res logits -> what the response carries. The host implementation is :class:`HostPostprocessor`."""

    def rles(self, logits: Any, input_size: tuple[int, int], image_size: tuple[int, int]) -> list[dict]: ...

    def dense(self, logits: Any, input_size: tuple[int, int], image_size: tuple[int, int]) -> np.ndarray: ...

    def to_host(self, logits: Any) -> np.ndarray: ...

    def concatenate(self, parts: list[Any]) -> Any:
        """The logits of several decoder calls as one, where they are (no copy to the host on a device)."""
        ...

    def stability_scores(
        self, logits: Any, input_size: tuple[int, int], image_size: tuple[int, int]
    ) -> np.ndarray:
        """SAM's stability score of each mask, float32 ``(N,)`` (``processing.quality``)."""
        ...


@dataclass(frozen=True)
class HostPostprocessor:
    """numpy/OpenCV on the host, in cache-sized chunks (``processing.masks``)."""

    chunk_bytes: int = DEFAULT_CHUNK_BYTES

    def rles(self, logits: Any, input_size: tuple[int, int], image_size: tuple[int, int]) -> list[dict]:
        return masks_to_rles(self.to_host(logits), input_size, image_size, chunk_bytes=self.chunk_bytes)

    def dense(self, logits: Any, input_size: tuple[int, int], image_size: tuple[int, int]) -> np.ndarray:
        return upsample_masks(self.to_host(logits), input_size, image_size, chunk_bytes=self.chunk_bytes)

    def to_host(self, logits: Any) -> np.ndarray:
        return np.asarray(logits, dtype=np.float32)

    def concatenate(self, parts: list[Any]) -> np.ndarray:
        return np.concatenate([self.to_host(part) for part in parts])

    def stability_scores(
        self, logits: Any, input_size: tuple[int, int], image_size: tuple[int, int]
    ) -> np.ndarray:
        x, offset = self.to_host(logits), contract.STABILITY_SCORE_OFFSET
        high, low = (
            mask_areas(x, input_size, image_size, MASK_THRESHOLD + sign * offset, self.chunk_bytes)
            for sign in (1, -1)
        )
        return quality.stability_from_areas(high, low)


class StageError(RuntimeError):
    """A model the pipeline called failed; ``code`` is its Triton error code name when known."""

    def __init__(self, stage: str, message: str, code: str | None = None) -> None:
        super().__init__(f"{stage}: {message}")
        self.stage = stage
        self.code = code


class RequestCancelled(RuntimeError):
    """The caller went away (its connection closed, its gRPC deadline passed): no further work is launched."""

    code = "CANCELLED"

    def __init__(self, stage: str) -> None:
        super().__init__(f"request cancelled by the caller before {stage}; dropped")
        self.stage = stage


class DeadlineExceeded(RuntimeError):
    """The request's own deadline (Triton's ``timeout`` parameter, the client's timeout) passed: the work left
    is dropped instead of computing an answer nobody waits for."""

    code = "UNAVAILABLE"

    def __init__(self, stage: str) -> None:
        super().__init__(f"deadline exceeded before {stage}; dropped (the request's timeout passed)")
        self.stage = stage


class ResponseTooLarge(ContractError):
    """The response would exceed ``max_response_bytes``; the message says which setting to lower."""


@dataclass(frozen=True)
class CachedEmbedding:
    embedding: Embedding
    image_size: tuple[int, int]


class EmbeddingCache(Protocol):
    """Image embeddings by image content (:attr:`ImageSource.key`)."""

    def get(self, key: str) -> CachedEmbedding | None: ...

    def put(self, key: str, embedding: Embedding, image_size: tuple[int, int]) -> Embedding:
        """Store; returns the embedding to use for this request (the cache may hand back its own copy)."""
        ...


class MemoryEmbeddingCache:
    """A bounded LRU in this process (the in-process pipeline and the tests; the server shares one between its
    pipeline instances, see ``mobilesamv2/inside_triton/embedding_cache.py``)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.hits = self.misses = 0
        self._entries: OrderedDict[str, tuple[CachedEmbedding, int]] = OrderedDict()
        self._bytes = 0

    def get(self, key: str) -> CachedEmbedding | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry[0]

    def put(self, key: str, embedding: Embedding, image_size: tuple[int, int]) -> Embedding:
        nbytes = int(getattr(embedding, "nbytes", 0))
        if key in self._entries or nbytes > self.max_bytes:
            return embedding
        self._entries[key] = (CachedEmbedding(embedding, image_size), nbytes)
        self._bytes += nbytes
        while self._bytes > self.max_bytes:
            _, (_, dropped) = self._entries.popitem(last=False)
            self._bytes -= dropped
        return embedding

    def __len__(self) -> int:
        return len(self._entries)


# ----------------------------------------------------------------------------------------------- the request


class ImageSource:
    """The image of one request: raw pixels, or encoded bytes decoded on first use. ``key`` identifies the
    content (the embedding cache's key), so a request whose embedding is cached never decodes its image."""

    def __init__(
        self,
        key: str,
        size: tuple[int, int],
        pixels: np.ndarray | None = None,
        data: bytes = b"",
        header: ImageHeader | None = None,
    ) -> None:
        self.key = key
        self.size = size  # (h, w); from the header (EXIF orientation applied) until decoded
        self._pixels = pixels
        self._data = data
        self._header = header
        self.decode_ms = 0.0

    @classmethod
    def from_array(cls, image: np.ndarray, limits: Limits = contract.HARD_LIMITS) -> ImageSource:
        image = validate_rgb_array(image, limits)
        digest = hashlib.blake2b(repr(image.shape).encode(), digest_size=16)
        digest.update(memoryview(image).cast("B"))
        return cls("raw:" + digest.hexdigest(), (int(image.shape[0]), int(image.shape[1])), pixels=image)

    @classmethod
    def from_bytes(cls, data: bytes, limits: Limits = contract.HARD_LIMITS) -> ImageSource:
        header = probe_image(data, limits)
        key = "file:" + hashlib.blake2b(data, digest_size=16).hexdigest()
        return cls(key, (header.height, header.width), data=data, header=header)

    def pixels(self) -> np.ndarray:
        """RGB uint8 ``HxWx3``, decoded once."""
        if self._pixels is None:
            start = time.perf_counter()
            self._pixels = decode_image(self._data, self._header)
            self.size = (int(self._pixels.shape[0]), int(self._pixels.shape[1]))
            self.decode_ms = (time.perf_counter() - start) * 1e3
        return self._pixels


@dataclass(frozen=True)
class SegmentRequest:
    """One validated request: the image, settings, and SegAny prompts (None = SegEvery). ``source`` may be
    given as a numpy RGB array."""

    source: ImageSource | np.ndarray
    settings: Settings = field(default_factory=Settings)
    prompts: Prompts | None = None
    parse_ms: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.source, np.ndarray):
            object.__setattr__(self, "source", ImageSource.from_array(self.source))

    @classmethod
    def from_inputs(
        cls, inputs: Mapping[str, np.ndarray | None], limits: Limits = contract.HARD_LIMITS
    ) -> SegmentRequest:
        """Parse the request tensors: settings, prompts and the image header, each checked against the
        contract (a :class:`ContractError` names the input). Pixels are decoded later, and only if needed."""
        started = time.perf_counter()
        settings = Settings.from_inputs(inputs)
        prompts = Prompts.from_inputs(inputs, limits)
        if settings.multimask and prompts is None:
            raise ContractError(
                "multimask applies to SegAny prompts (boxes or points), not to segment-everything"
            )
        encoded, raw = inputs.get(contract.IMAGE.name), inputs.get(contract.IMAGE_RAW.name)
        if (encoded is None) == (raw is None):
            raise ContractError(
                "give exactly one of 'image' (encoded bytes) or 'image_raw' (uint8 HxWx3 RGB)"
            )
        source = (
            ImageSource.from_array(raw, limits)
            if raw is not None
            else ImageSource.from_bytes(_single_bytes(encoded), limits)
        )
        prompts = _prompts_inside(prompts, source.size)  # refused before any pixel is decoded
        return cls(source, settings, prompts, (time.perf_counter() - started) * 1e3)

    @property
    def image(self) -> np.ndarray:
        return self.source.pixels()

    @property
    def image_size(self) -> tuple[int, int]:
        return self.source.size


def _single_bytes(array: np.ndarray) -> bytes:
    array = np.asarray(array)
    if array.size != 1:
        raise ContractError(f"'image' must hold one encoded image, got {array.size} elements")
    data = array.reshape(-1)[0]
    if not isinstance(data, bytes):
        raise ContractError(f"'image' must be BYTES, got {type(data).__name__}")
    return data


def _prompts_inside(prompts: Prompts | None, shape: tuple[int, int]) -> Prompts | None:
    if prompts is None:
        return None
    clipped = contract.check_prompts_inside(prompts.boxes, prompts.points, shape)
    if clipped is None:
        return prompts
    return Prompts(boxes=clipped, mask_input=prompts.mask_input)


# ------------------------------------------------------------------------------------------------ the result


@dataclass
class SegmentResult:
    """Masks of one image, one row per mask in every array; ``prompt_index`` says which prompt made it."""

    boxes: np.ndarray
    scores: np.ndarray
    iou_predictions: np.ndarray
    prompt_index: np.ndarray
    image_size: tuple[int, int]
    rles: list[dict] | None = None
    masks: np.ndarray | None = None
    low_res_logits: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)
    stability_scores: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.boxes)

    def select(self, rows: np.ndarray) -> None:
        """Keep these rows of every per-mask part, in this order."""
        for name in ("boxes", "scores", "iou_predictions", "prompt_index", "masks", "low_res_logits"):
            if getattr(self, name) is not None:
                setattr(self, name, getattr(self, name)[rows])
        if self.stability_scores is not None:
            self.stability_scores = self.stability_scores[rows]
        if self.rles is not None:
            self.rles = [self.rles[i] for i in np.asarray(rows).tolist()]

    def to_outputs(self, names: set[str] | tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """The response tensors (only ``names`` when given, e.g. ``Settings.outputs()``: timings are sent only
        when asked for), dtypes as in the contract."""
        from segment_everything_contract import rle as rle_codec

        out: dict[str, np.ndarray] = {
            contract.BOXES_OUT.name: self.boxes.astype(np.float32).reshape(-1, 4),
            contract.SCORES.name: self.scores.astype(np.float32),
            contract.IOU_PREDICTIONS.name: self.iou_predictions.astype(np.float32),
            contract.PROMPT_INDEX.name: self.prompt_index.astype(np.int32),
            contract.IMAGE_SIZE.name: np.array(self.image_size, np.int32),
        }
        if self.rles is not None:
            out[contract.MASKS_RLE.name] = np.array([rle_codec.dumps(r) for r in self.rles], dtype=np.object_)
        if self.masks is not None:
            out[contract.MASKS.name] = self.masks
        if self.low_res_logits is not None:
            out[contract.LOW_RES_LOGITS.name] = self.low_res_logits.astype(np.float32)
        if self.timings:
            out[contract.TIMINGS.name] = np.array([json.dumps(self.timings).encode()], dtype=np.object_)
        if self.stability_scores is not None:
            out[contract.STABILITY_SCORES.name] = self.stability_scores.astype(np.float32)
        return {k: v for k, v in out.items() if names is None or k in names}


def predicted_response_bytes(count: int, image_size: tuple[int, int], output: str) -> int:
    """The response size known before decoding: dense masks and logits (RLE is measured afterwards)."""
    h, w = image_size
    per_mask = 4 * 4 + 4 + 4 + 4  # box, score, iou, prompt index
    if output == "dense":
        per_mask += h * w
    elif output == "logits":
        per_mask += LOW_RES_BYTES
    return count * per_mask


def check_response_budget(size: int, limits: Limits, output: str, measured: bool = False) -> None:
    if size <= limits.max_response_bytes:
        return
    advice = {
        "dense": "use output_format 'rle' or lower max_prompts",
        "logits": "use output_format 'rle' or lower max_prompts",
        "rle": "lower max_prompts",
    }[output]
    what = "is" if measured else "would be"
    raise ResponseTooLarge(
        f"the response {what} {size / 2**20:.0f} MiB, over the limit of "
        f"{limits.max_response_bytes / 2**20:.0f} MiB (max_response_bytes): {advice}"
    )


# -------------------------------------------------------------------------------------------------- pipeline

Checkpoint = Callable[[str], None]
"""Called before each stage with its name; raising aborts the request (cancellation, deadline)."""


def _no_checkpoint(stage: str) -> None:
    return None


def request_checkpoint(
    is_cancelled: Callable[[], bool], deadline: float | None, clock: Callable[[], float] = time.monotonic
) -> Checkpoint:
    """A checkpoint that stops a request its caller abandoned or whose deadline (``clock()``) passed."""

    def checkpoint(stage: str) -> None:
        if is_cancelled():
            raise RequestCancelled(stage)
        if deadline is not None and clock() >= deadline:
            raise DeadlineExceeded(stage)

    return checkpoint


@dataclass
class Pipeline:
    """MobileSAMv2's SegEvery (and SegAny) over injected models.

    Args:
        models: the three networks.
        limits: the deployment's limits (at most the contract's).
        channel_order: the detector's input channel order (``"bgr"`` reproduces the reference's quirk).
        decoder_max_prompts_per_call: prompts per decoder call; more are split into several calls.
        overlap: run the encoder and discovery concurrently (GPU) or one after the other (CPU: both already
            use every core, so overlapping only makes each slower).
        postprocess: logits -> masks, on the host or where the logits are.
        embeddings: a cache of image embeddings by image content: a repeated image (every click of an
            interactive session after the first) skips decoding and the encoder.
        cache_segevery: SegEvery stores its embedding too, for clicks that may follow on the same image (on a
            GPU the copy to the host costs more than encoding again).
    """

    models: Models
    limits: Limits = contract.HARD_LIMITS
    channel_order: str = DETECTOR_CHANNEL_ORDER
    decoder_max_prompts_per_call: int = 320
    overlap: bool = True
    postprocess: MaskPostprocessor = field(default_factory=HostPostprocessor)
    embeddings: EmbeddingCache | None = None
    cache_segevery: bool = True

    async def run(self, request: SegmentRequest, checkpoint: Checkpoint = _no_checkpoint) -> SegmentResult:
        timings: dict[str, float] = {}
        started = time.perf_counter()
        source, settings, prompts = request.source, request.settings, request.prompts
        cached = self.embeddings.get(source.key) if self.embeddings is not None else None

        if prompts is None:  # SegEvery: discovery needs the pixels whatever the cache holds
            image = source.pixels()
            if cached is not None:
                boxes, scores = await self._discover(image, settings, timings, checkpoint)
                embedding = cached.embedding
            elif self.overlap:
                embedding, (boxes, scores) = await asyncio.gather(
                    self._encode(source, timings, checkpoint, store=self.cache_segevery),
                    self._discover(image, settings, timings, checkpoint),
                )
            else:
                boxes, scores = await self._discover(image, settings, timings, checkpoint)
                store = self.cache_segevery
                embedding = await self._encode(source, timings, checkpoint, store) if len(boxes) else None
            shape = source.size
            coords, labels = box_ops.boxes_to_prompts(box_ops.boxes_to_encoder_frame(boxes, shape))
        else:  # SegAny: a cached embedding needs no pixels at all
            if cached is not None:
                embedding, shape = cached.embedding, cached.image_size
            else:
                embedding = await self._encode(source, timings, checkpoint)
                shape = source.size
            prompts = _prompts_inside(prompts, shape)  # the decoded size is authoritative
            if prompts.boxes is not None:
                boxes = prompts.boxes
                coords, labels = box_ops.boxes_to_prompts(box_ops.boxes_to_encoder_frame(boxes, shape))
            else:
                boxes = None  # from the masks, once they exist
                coords, labels = box_ops.points_to_prompts(
                    box_ops.points_to_encoder_frame(prompts.points, shape), prompts.point_labels
                )
            scores = np.ones(len(coords), np.float32)
        timings["decode_image"] = request.parse_ms + source.decode_ms
        if cached is not None:
            timings["encoder_cached"] = 1.0

        multimask = settings.multimask
        per_prompt = 3 if multimask else 1
        count = len(coords) * per_prompt
        check_response_budget(
            predicted_response_bytes(count, shape, settings.output), self.limits, settings.output
        )
        mask_input = None if prompts is None else prompts.mask_input
        if len(coords):
            logits, ious = await self._decode(
                embedding, coords, labels, multimask, mask_input, timings, checkpoint
            )
        else:  # nothing found: an empty result, not an error
            logits, ious = np.zeros((0, 256, 256), np.float32), np.zeros(0, np.float32)

        checkpoint("postprocess")
        start = time.perf_counter()
        prompt_index = np.repeat(np.arange(len(coords), dtype=np.int32), per_prompt)
        result = SegmentResult(
            boxes=np.zeros((count, 4), np.float32) if boxes is None else np.repeat(boxes, per_prompt, axis=0),
            scores=np.repeat(scores, per_prompt),
            iou_predictions=ious,
            prompt_index=prompt_index,
            image_size=shape,
            timings=timings,
        )
        input_size = encoder_input_size(*shape)
        logits = self._filter_by_logits(result, logits, settings, input_size)
        if settings.output == "dense":
            result.masks = self.postprocess.dense(logits, input_size, shape)
        else:
            result.rles = self.postprocess.rles(logits, input_size, shape)
            rle_bytes = sum(len(r["counts"]) + 32 for r in result.rles)
            size = predicted_response_bytes(count, shape, settings.output) + rle_bytes
            check_response_budget(size, self.limits, settings.output, measured=True)
        if settings.output == "logits":
            result.low_res_logits = self.postprocess.to_host(logits)
        kept = quality.filter_binary_masks(result.rles, result.masks, result.iou_predictions, settings)
        if kept is not None:
            result.select(kept)
        if boxes is None:  # point prompts have no box: report each mask's tight box
            result.boxes = mask_boxes(result.masks) if result.rles is None else rle_boxes(result.rles)
        timings["postprocess"] = (time.perf_counter() - start) * 1e3
        timings["total"] = request.parse_ms + (time.perf_counter() - started) * 1e3
        return result

    def _filter_by_logits(
        self, result: SegmentResult, logits: Any, settings: Settings, input_size: tuple[int, int]
    ) -> Any:
        """SAM's filters that need the logits, before any mask is made (``processing.quality``, steps 1-2):
        predicted IoU, then the stability score, counted where the logits are. Returns the kept logits;
        ``result`` keeps the same rows. Nothing is computed for a request that asks for neither."""
        if settings.pred_iou_thresh > 0:
            rows = np.flatnonzero(result.iou_predictions > np.float32(settings.pred_iou_thresh))
            result.select(rows)
            logits = logits[rows]  # numpy arrays and torch tensors alike
        if settings.needs_stability:
            shape = result.image_size
            result.stability_scores = self.postprocess.stability_scores(logits, input_size, shape)
            if settings.stability_score_thresh > 0:
                rows = np.flatnonzero(result.stability_scores >= np.float32(settings.stability_score_thresh))
                result.select(rows)
                logits = logits[rows]
        return logits

    # --- stages -------------------------------------------------------------------------------------------

    async def _encode(
        self, source: ImageSource, timings: dict, checkpoint: Checkpoint, store: bool = True
    ) -> Embedding:
        """The image's embedding; ``store`` puts it in the embedding cache (on a GPU that costs a copy of
        4 MiB to the host and a file in /dev/shm: worth it only where a later click may reuse it)."""
        checkpoint("encoder")
        start = time.perf_counter()
        canvas, size = encoder_canvas(source.pixels())
        embedding = await self.models.encode(canvas[None], size[None])
        if self.embeddings is not None and store:
            embedding = self.embeddings.put(source.key, embedding, source.size)
        timings["encoder"] = (time.perf_counter() - start) * 1e3
        return embedding

    async def _discover(
        self, image: np.ndarray, settings: Settings, timings: dict, checkpoint: Checkpoint
    ) -> tuple[np.ndarray, np.ndarray]:
        checkpoint("discovery")
        start = time.perf_counter()
        boxed, info = detector_input(image, self.channel_order)
        boxes, scores, classes = await self.models.discover(boxed, settings.conf)
        timings["discovery"] = (time.perf_counter() - start) * 1e3
        start = time.perf_counter()
        boxes, scores = box_ops.finalize_detections(
            np.asarray(boxes, np.float32).reshape(-1, 4),
            np.asarray(scores, np.float32).reshape(-1),
            np.asarray(classes, np.int32).reshape(-1),
            info,
            settings.iou,
            min(settings.max_prompts, self.limits.max_prompts),  # a deployment's lower cap caps SegEvery too
        )
        timings["nms"] = (time.perf_counter() - start) * 1e3
        return boxes, scores

    async def _decode(
        self,
        embedding: Embedding,
        coords: np.ndarray,
        labels: np.ndarray,
        multimask: bool,
        mask_input: np.ndarray | None,
        timings: dict,
        checkpoint: Checkpoint,
    ) -> tuple[Any, np.ndarray]:
        """All prompts in one decoder call (several only above the per-call cap)."""
        logits, ious = [], []
        start = time.perf_counter()
        step = self.decoder_max_prompts_per_call
        if uses_interactive_decoder(multimask, mask_input):  # SAM's full decoder takes fewer prompts per call
            step = min(step, contract.INTERACTIVE_DECODER_MAX_PROMPTS)
        for first in range(0, len(coords), step):
            checkpoint("decoder")
            part_logits, part_ious = await self.models.decode(
                embedding,
                np.ascontiguousarray(coords[first : first + step]),
                np.ascontiguousarray(labels[first : first + step]),
                multimask,
                None if mask_input is None else mask_input[first : first + step],
            )
            logits.append(part_logits)
            ious.append(np.asarray(part_ious, np.float32))
        timings["decoder"] = (time.perf_counter() - start) * 1e3
        flat_ious = np.concatenate(ious).reshape(-1)
        if len(logits) == 1:
            return _flatten_masks(logits[0]), flat_ious
        return _flatten_masks(self.postprocess.concatenate(logits)), flat_ious


def _flatten_masks(logits: Any) -> Any:
    """(N, M, 256, 256) -> (N*M, 256, 256) for numpy arrays and tensors alike."""
    return logits.reshape(-1, *logits.shape[-2:])
