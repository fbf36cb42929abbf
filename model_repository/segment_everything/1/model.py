"""segment_everything: MobileSAMv2's SegEvery as a Triton BLS pipeline (Python backend).

    bytes -> image -> (image_encoder || object_discovery) -> NMS, border snap, un-letterbox -> boxes to the
    1024 frame -> ONE batched prompt_decoder call with every surviving box -> upsample, threshold -> COCO RLE

Encoder and discovery run concurrently (``asyncio.gather`` of two BLS requests). All prompts go to the decoder
in one call; only a count above ``decoder_max_prompts_per_call`` is split, to bound the decoder's memory. With
``boxes`` or ``points`` inputs (SegAny), discovery is skipped and the given prompts are decoded instead.
Per-stage timings go to the log (INFO, one line per request) and, with ``return_timings``, to the response.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from mobilesamv2.processing import boxes as box_ops
from mobilesamv2.processing.image import (
    DETECTOR_CHANNEL_ORDER,
    detector_input,
    encoder_canvas,
    encoder_input_size,
)
from mobilesamv2.processing.masks import (
    DEFAULT_CHUNK_BYTES,
    mask_boxes,
    masks_to_rles,
    rle_boxes,
    upsample_masks,
)
from mobilesamv2.server.requests import (
    BadRequest,
    Limits,
    check_dense_size,
    parse_settings,
    read_box_prompts,
    read_image,
    read_point_prompts,
)
from segment_everything_client import rle as rle_codec

SETTING_INPUTS = ("conf_threshold", "iou_threshold", "max_prompts", "output_format", "return_timings")


class StageError(RuntimeError):
    """A downstream model failed; carries its Triton error code."""

    def __init__(self, stage: str, error) -> None:
        super().__init__(f"{stage}: {error.message()}")
        self.code = error.code()


def _parameters(config: dict) -> dict[str, str]:
    return {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}


def _input(request, name: str) -> np.ndarray | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = _parameters(config)
        self.limits = Limits(
            max_image_pixels=int(params.get("max_image_pixels") or Limits.max_image_pixels),
            min_image_side=int(params.get("min_image_side") or Limits.min_image_side),
            max_dense_bytes=int(params.get("max_dense_output_mb") or Limits.max_dense_bytes >> 20) << 20,
        )
        self.max_prompts_per_call = int(params.get("decoder_max_prompts_per_call") or 320)
        self.channel_order = params.get("detector_channel_order") or DETECTOR_CHANNEL_ORDER
        self.chunk_bytes = int(params.get("mask_chunk_mb") or DEFAULT_CHUNK_BYTES >> 20) << 20
        self.logger = pb_utils.Logger
        build_info = Path(args["model_repository"]).parent / "BUILD_INFO.json"
        info = json.loads(build_info.read_text()) if build_info.is_file() else {}
        if info.get("weights") == "fake":
            self.logger.log_warn(
                "segment_everything: this repository was built from RANDOM WEIGHTS; its masks are meaningless"
            )
        self.logger.log_info(
            f"segment_everything: encoder {info.get('encoder', '?')}, detector channel order "
            f"{self.channel_order}, decoder cap {self.max_prompts_per_call} prompts/call, {self.limits}"
        )

    # --- BLS calls ------------------------------------------------------------------------------------------

    async def _infer(self, stage: str, model: str, inputs: list, outputs: list[str], timings: dict) -> list:
        start = time.perf_counter()
        request = pb_utils.InferenceRequest(model_name=model, inputs=inputs, requested_output_names=outputs)
        response = await request.async_exec()
        timings[stage] = timings.get(stage, 0.0) + (time.perf_counter() - start) * 1e3
        if response.has_error():
            raise StageError(model, response.error())
        return [pb_utils.get_output_tensor_by_name(response, name) for name in outputs]

    async def _encode(self, image: np.ndarray, timings: dict):
        canvas, size = encoder_canvas(image)
        (embedding,) = await self._infer(
            "encoder",
            "image_encoder",
            [pb_utils.Tensor("image", canvas[None]), pb_utils.Tensor("image_size", size[None])],
            ["image_embeddings"],
            timings,
        )
        return embedding

    async def _discover(self, image: np.ndarray, settings, timings: dict) -> tuple[np.ndarray, np.ndarray]:
        boxed, info = detector_input(image, self.channel_order)
        boxes, scores, classes = await self._infer(
            "discovery",
            "object_discovery",
            [
                pb_utils.Tensor("images", boxed),
                pb_utils.Tensor("conf_threshold", np.array([settings.conf_threshold], np.float32)),
            ],
            ["boxes", "scores", "classes"],
            timings,
        )
        start = time.perf_counter()
        boxes, scores = box_ops.finalize_detections(
            boxes.as_numpy(),
            scores.as_numpy(),
            classes.as_numpy(),
            info,
            settings.iou_threshold,
            settings.max_prompts,
        )
        timings["nms"] = (time.perf_counter() - start) * 1e3
        return boxes, scores

    async def _decode(self, embedding, coords: np.ndarray, labels: np.ndarray, timings: dict):
        """One decoder call for all prompts (split only above the per-call cap)."""
        logits, ious = [], []
        for start in range(0, len(coords), self.max_prompts_per_call):
            stop = start + self.max_prompts_per_call
            masks, iou = await self._infer(
                "decoder",
                "prompt_decoder",
                [
                    pb_utils.Tensor("image_embeddings", embedding.as_numpy()),
                    pb_utils.Tensor("point_coords", np.ascontiguousarray(coords[start:stop])),
                    pb_utils.Tensor("point_labels", np.ascontiguousarray(labels[start:stop])),
                ],
                ["low_res_masks", "iou_predictions"],
                timings,
            )
            logits.append(masks.as_numpy()[:, 0])
            ious.append(iou.as_numpy()[:, 0])
        return np.concatenate(logits), np.concatenate(ious)

    # --- one request ----------------------------------------------------------------------------------------

    async def _segment(self, request) -> pb_utils.InferenceResponse:
        timings: dict[str, float] = {}
        started = time.perf_counter()
        settings = parse_settings({name: _input(request, name) for name in SETTING_INPUTS})
        image = read_image(_input(request, "image"), _input(request, "image_raw"), self.limits)
        timings["decode_image"] = (time.perf_counter() - started) * 1e3
        shape = image.shape[:2]
        prompt_boxes, points = _input(request, "boxes"), _input(request, "points")
        if prompt_boxes is not None and points is not None:
            raise BadRequest("give either 'boxes' or 'points' prompts, not both")

        if prompt_boxes is None and points is None:  # SegEvery
            embedding, (boxes, scores) = await asyncio.gather(
                self._encode(image, timings), self._discover(image, settings, timings)
            )
            coords, labels = box_ops.boxes_to_prompts(box_ops.boxes_to_encoder_frame(boxes, shape))
        elif prompt_boxes is not None:  # SegAny with boxes
            boxes = read_box_prompts(prompt_boxes, shape)
            scores = np.ones(len(boxes), np.float32)
            embedding = await self._encode(image, timings)
            coords, labels = box_ops.boxes_to_prompts(box_ops.boxes_to_encoder_frame(boxes, shape))
        else:  # SegAny with points
            points, point_labels = read_point_prompts(points, _input(request, "point_labels"))
            boxes = np.zeros((len(points), 4), np.float32)
            scores = np.ones(len(points), np.float32)
            embedding = await self._encode(image, timings)
            coords, labels = box_ops.points_to_prompts(
                box_ops.points_to_encoder_frame(points, shape), point_labels
            )

        if settings.output_format == "dense":
            check_dense_size(len(boxes), shape, self.limits)
        if len(boxes):
            logits, ious = await self._decode(embedding, coords, labels, timings)
        else:  # nothing found: an empty result, not an error
            logits, ious = np.zeros((0, 256, 256), np.float32), np.zeros(0, np.float32)

        start = time.perf_counter()
        input_size = encoder_input_size(*shape)
        outputs = [
            pb_utils.Tensor("boxes", boxes.astype(np.float32)),
            pb_utils.Tensor("scores", scores.astype(np.float32)),
            pb_utils.Tensor("iou_predictions", ious.astype(np.float32)),
            pb_utils.Tensor("image_size", np.array(shape, np.int32)),
        ]
        if settings.output_format == "dense":
            masks = upsample_masks(logits, input_size, shape, chunk_bytes=self.chunk_bytes)
            outputs.append(pb_utils.Tensor("masks", masks))
            rles = None
        else:
            rles = masks_to_rles(logits, input_size, shape, chunk_bytes=self.chunk_bytes)
            outputs.append(
                pb_utils.Tensor("masks_rle", np.array([rle_codec.dumps(r) for r in rles], dtype=np.object_))
            )
        if points is not None:  # point prompts have no box: report each mask's tight box instead
            boxes = mask_boxes(masks) if rles is None else rle_boxes(rles)
            outputs[0] = pb_utils.Tensor("boxes", boxes)
        if settings.output_format == "logits":
            outputs.append(pb_utils.Tensor("low_res_logits", logits.astype(np.float32)))
        timings["postprocess"] = (time.perf_counter() - start) * 1e3
        timings["total"] = (time.perf_counter() - started) * 1e3
        if settings.return_timings:
            outputs.append(
                pb_utils.Tensor("timings", np.array([json.dumps(timings).encode()], dtype=np.object_))
            )
        self.logger.log_info(
            f"segment_everything: {len(boxes)} masks, {shape[1]}x{shape[0]}, "
            + ", ".join(f"{k} {v:.1f} ms" for k, v in timings.items())
        )
        return pb_utils.InferenceResponse(output_tensors=outputs)

    async def _respond(self, request) -> pb_utils.InferenceResponse:
        try:
            return await self._segment(request)
        except BadRequest as exc:
            return pb_utils.InferenceResponse(
                error=pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
            )
        except StageError as exc:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc), exc.code))
        except Exception as exc:
            self.logger.log_error(f"segment_everything: {type(exc).__name__}: {exc}")
            return pb_utils.InferenceResponse(
                error=pb_utils.TritonError(f"internal error: {type(exc).__name__}: {exc}")
            )

    async def execute(self, requests: list) -> list:
        return list(await asyncio.gather(*(self._respond(r) for r in requests)))
