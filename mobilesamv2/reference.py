"""The in-process PyTorch SegEvery pipeline: the oracle of the server's parity tests and the benchmark
baseline.

It follows MobileSAMv2's ``Inference.py`` step by step with the official modules; pre/post-processing comes
from ``mobilesamv2.processing``, the one implementation shared with the server. Where the server differs on
purpose (ONNX graphs, in-graph normalisation, a broadcast instead of a 320x repeated embedding), this file
keeps the reference's way, so a parity test compares two independent paths through the networks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .modeling.checkpoints import DEFAULT_ENCODER, encoder_spec, load_image_encoder, load_prompt_decoder
from .modeling.detector import ObjectAwareNetwork, load_object_aware_model
from .modeling.sam import InteractiveDecoder, PromptDecoder
from .pipeline import Models, interactive_decoder_inputs, select_mask_tokens, uses_interactive_decoder
from .processing import boxes as box_ops
from .processing.image import (
    DETECTOR_CHANNEL_ORDER,
    ENCODER_IMAGE_SIZE,
    PIXEL_MEAN,
    PIXEL_STD,
    detector_input,
    encoder_input_size,
    resize_longest_side,
)
from .processing.masks import masks_to_rles, upsample_masks

ChannelOrder = Literal["bgr", "rgb"]
DECODER_BATCH = 320  # the reference decodes all boxes in batches of 320 (so: one batch)


@dataclass
class SegEveryResult:
    """Boxes (xyxy, original pixels, descending detector confidence) and their masks' 256x256 logits."""

    boxes: np.ndarray
    scores: np.ndarray
    iou_predictions: np.ndarray
    low_res_logits: np.ndarray  # (N, 256, 256) float32
    image_size: tuple[int, int]
    input_size: tuple[int, int]  # (newh, neww) in the 1024 encoder frame
    timings_ms: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.boxes)

    def masks(self) -> np.ndarray:
        return upsample_masks(self.low_res_logits, self.input_size, self.image_size)

    def rles(self) -> list[dict]:
        return masks_to_rles(self.low_res_logits, self.input_size, self.image_size)


class ReferencePipeline:
    """MobileSAMv2 SegEvery in PyTorch.

    >>> pipe = ReferencePipeline.from_checkpoints("weights/")            # doctest: +SKIP
    >>> result = pipe(image_rgb)                                          # doctest: +SKIP
    >>> result.boxes.shape, result.masks().shape                          # doctest: +SKIP
    ((N, 4), (N, H, W))
    """

    def __init__(
        self,
        detector: ObjectAwareNetwork,
        image_encoder: nn.Module,
        decoder: PromptDecoder,
        input_pool: int = 1,
        channel_order: ChannelOrder = DETECTOR_CHANNEL_ORDER,
    ) -> None:
        self.detector = detector.eval()
        self.image_encoder = image_encoder.eval()
        self.prompt_encoder = decoder.prompt_encoder.eval()
        self.mask_decoder = decoder.mask_decoder.eval()
        self.input_pool = input_pool
        self.channel_order = channel_order

    @classmethod
    def from_checkpoints(
        cls,
        weights_dir: str | Path,
        encoder: str = DEFAULT_ENCODER,
        channel_order: ChannelOrder = DETECTOR_CHANNEL_ORDER,
    ) -> ReferencePipeline:
        weights_dir = Path(weights_dir)
        spec = encoder_spec(encoder)
        return cls(
            detector=load_object_aware_model(weights_dir / "ObjectAwareModel.pt"),
            image_encoder=load_image_encoder(encoder, weights_dir / spec.filename),
            decoder=load_prompt_decoder(weights_dir / "Prompt_guided_Mask_Decoder.pt"),
            input_pool=spec.input_pool,
            channel_order=channel_order,
        )

    # --- stages ---------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def detect(self, image_rgb: np.ndarray, **nms_settings) -> tuple[np.ndarray, np.ndarray]:
        boxed, info = detector_input(image_rgb, self.channel_order)
        x = torch.from_numpy(boxed).permute(2, 0, 1)[None].float() / 255.0
        prediction = self.detector(x)[0].numpy()
        conf = nms_settings.pop("conf_threshold", box_ops.CONF_THRESHOLD)
        candidates = box_ops.select_candidates(prediction, conf)
        return box_ops.finalize_detections(*candidates, info, **nms_settings)

    @torch.inference_mode()
    def encode(self, image_rgb: np.ndarray) -> torch.Tensor:
        """SAM's ``set_image``: resize longest side, normalise, zero-pad to 1024, (halve for EfficientViT),
        encode."""
        return self.encode_resized(resize_longest_side(image_rgb))

    @torch.inference_mode()
    def encode_resized(self, resized_rgb: np.ndarray) -> torch.Tensor:
        """:meth:`encode` from the image already resized to a long side of 1024."""
        resized = torch.from_numpy(np.array(resized_rgb)).permute(2, 0, 1)[None].float()
        mean = torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(PIXEL_STD).view(1, 3, 1, 1)
        x = (resized - mean) / std
        x = F.pad(x, (0, ENCODER_IMAGE_SIZE - x.shape[-1], 0, ENCODER_IMAGE_SIZE - x.shape[-2]))
        if self.input_pool > 1:
            size = ENCODER_IMAGE_SIZE // self.input_pool
            x = F.interpolate(x, size=(size, size), mode="bilinear")
        return self.image_encoder(x)

    @torch.inference_mode()
    def decode_boxes(
        self, embedding: torch.Tensor, boxes_encoder_frame: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """All boxes as prompts, single-mask output (mask token 0), in batches of 320 like the reference."""
        logits, ious = [], []
        image_pe = self.prompt_encoder.get_dense_pe()
        for start in range(0, len(boxes_encoder_frame), DECODER_BATCH):
            boxes = torch.from_numpy(boxes_encoder_frame[start : start + DECODER_BATCH])
            sparse, dense = self.prompt_encoder(points=None, boxes=boxes, masks=None)
            masks, iou = self.mask_decoder(
                image_embeddings=embedding,
                image_pe=image_pe,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
            logits.append(masks[:, 0].numpy())
            ious.append(iou[:, 0].numpy())
        if not logits:
            return np.zeros((0, 256, 256), np.float32), np.zeros(0, np.float32)
        return np.concatenate(logits), np.concatenate(ious)

    def as_models(self) -> Models:
        """The same networks as the pipeline core's injected models (``mobilesamv2.pipeline.Models``), run in
        PyTorch in-process through this class's own stages: the core over these must reproduce
        :meth:`__call__` exactly (a test of the orchestration, and a Triton-free baseline for the
        benchmarks). Point prompts, multimask output and refinement use SAM's full decoder."""

        interactive = InteractiveDecoder(PromptDecoder(self.prompt_encoder, self.mask_decoder)).eval()

        async def encode(canvas: np.ndarray, size: np.ndarray) -> torch.Tensor:
            (h, w), (image,) = size[0], canvas  # the canvas holds the resized image at its top-left
            return self.encode_resized(image[:h, :w])

        async def discover(letterboxed: np.ndarray, conf: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            with torch.inference_mode():
                x = torch.from_numpy(letterboxed).permute(2, 0, 1)[None].float() / 255.0
                return box_ops.select_candidates(self.detector(x)[0].numpy(), conf)

        async def decode(
            embedding: torch.Tensor,
            coords: np.ndarray,
            labels: np.ndarray,
            multimask: bool,
            mask_input: np.ndarray | None,
        ) -> tuple[np.ndarray, np.ndarray]:
            boxes = bool((labels == np.array([2, 3], np.float32)).all())
            if boxes and not uses_interactive_decoder(multimask, mask_input):  # MobileSAMv2's own path
                logits, ious = self.decode_boxes(embedding, coords.reshape(-1, 4))
                return logits[:, None], ious[:, None]
            inputs = interactive_decoder_inputs(coords, labels, mask_input)
            with torch.inference_mode():
                logits, ious = interactive(embedding, *(torch.from_numpy(a) for a in inputs))
            logits, ious = select_mask_tokens(logits, ious, multimask)
            return logits.numpy(), ious.numpy()

        return Models(encode, discover, decode)

    def __call__(self, image_rgb: np.ndarray, **nms_settings) -> SegEveryResult:
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        boxes, scores = self.detect(image_rgb, **nms_settings)
        t1 = time.perf_counter()
        embedding = self.encode(image_rgb)
        t2 = time.perf_counter()
        h, w = image_rgb.shape[:2]
        logits, ious = self.decode_boxes(embedding, box_ops.boxes_to_encoder_frame(boxes, (h, w)))
        t3 = time.perf_counter()
        timings.update(discovery=(t1 - t0) * 1e3, encoder=(t2 - t1) * 1e3, decoder=(t3 - t2) * 1e3)
        return SegEveryResult(
            boxes=boxes,
            scores=scores,
            iou_predictions=ious,
            low_res_logits=logits,
            image_size=(h, w),
            input_size=encoder_input_size(h, w),
            timings_ms=timings,
        )
