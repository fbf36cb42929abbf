"""segment_everything: MobileSAMv2's SegEvery (and SegAny) as a Triton BLS model (Python backend).

Triton glue only: the orchestration is :class:`mobilesamv2.pipeline.Pipeline`, plain Python tested without a
server. This file reads the request tensors, hands the pipeline three async callables that run the sub-models
(``image_encoder``, ``object_discovery``, ``prompt_decoder``) as BLS requests, and turns the result into
response tensors. The embedding is passed from the encoder's response to the decoder's request as it is (on
a GPU it stays on the device); one host copy goes to the embedding cache the instances share (for SegEvery
only where ``embedding_cache_segevery``: not on the GPU target), so a repeated image skips decoding and the
encoder.
Tensor names, defaults and limits: ``segment_everything_contract``.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import time
from pathlib import Path

import cv2
import numpy as np
import triton_python_backend_utils as pb_utils

import segment_everything_contract as contract
from mobilesamv2.inside_triton import glue
from mobilesamv2.inside_triton.embedding_cache import DEFAULT_ROOT, SharedEmbeddingCache, cache_directory
from mobilesamv2.inside_triton.metrics import PipelineMetrics
from mobilesamv2.pipeline import (
    HostPostprocessor,
    Models,
    Pipeline,
    SegmentRequest,
    StageError,
    interactive_decoder_inputs,
    request_checkpoint,
    select_mask_tokens,
    uses_interactive_decoder,
)
from mobilesamv2.processing.image import DETECTOR_CHANNEL_ORDER
from mobilesamv2.processing.masks import DEFAULT_CHUNK_BYTES

MODEL = contract.PIPELINE_MODEL
#: The deadline (``time.monotonic()``) of the request being served in this task: sub-requests carry what is
#: left of it as their own timeout (honoured by sub-models with a queue policy: ``image_encoder``).
DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("deadline", default=None)


#: Where the mask postprocess runs: "host" (numpy/OpenCV, the CPU target) or "device" (torch where the
#: decoder's logits are, the GPU target: only RLE run lengths come back to the host). Set in initialize.
POSTPROCESS = {"where": "host"}


def host_array(tensor) -> np.ndarray:
    """A sub-model's output on the host, from either device (TensorRT outputs live on the GPU)."""
    if tensor.is_cpu():
        return tensor.as_numpy()
    import torch

    return torch.from_dlpack(tensor.to_dlpack()).cpu().numpy()


def logits_array(tensor):
    """The decoder's logits where the postprocess wants them: a torch tensor left on its device (no copy) for
    the device postprocess, else a host numpy array."""
    if POSTPROCESS["where"] == "device":
        import torch

        return torch.from_dlpack(tensor.to_dlpack())
    return host_array(tensor)


async def _infer(model: str, inputs: list, outputs: list[str]) -> list:
    """One BLS request; a failed sub-model becomes a :class:`StageError` carrying its error code."""
    deadline = DEADLINE.get()
    timeout_us = 0 if deadline is None else max(1, int((deadline - time.monotonic()) * 1e6))
    request = pb_utils.InferenceRequest(
        model_name=model, inputs=inputs, requested_output_names=outputs, timeout=timeout_us
    )
    response = await request.async_exec()
    if response.has_error():
        error = response.error()
        raise StageError(model, error.message(), glue.error_code_name(error.code()))
    return [pb_utils.get_output_tensor_by_name(response, name) for name in outputs]


async def encode(canvas: np.ndarray, size: np.ndarray):
    (embedding,) = await _infer(
        contract.ENCODER_MODEL,
        [pb_utils.Tensor("image", canvas), pb_utils.Tensor("image_size", size)],
        ["image_embeddings"],
    )
    return embedding  # stays a Triton tensor: handed to the decoder as it is


async def discover(letterboxed: np.ndarray, conf: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    boxes, scores, classes = await _infer(
        contract.DISCOVERY_MODEL,
        [
            pb_utils.Tensor("images", letterboxed),
            pb_utils.Tensor("conf_threshold", np.array([conf], np.float32)),
        ],
        ["boxes", "scores", "classes"],
    )
    return host_array(boxes), host_array(scores), host_array(classes)


async def decode(embedding, coords: np.ndarray, labels: np.ndarray, multimask: bool, mask_input):
    if not uses_interactive_decoder(multimask, mask_input):  # SegEvery's factorized decoder, token 0
        logits, ious = await _infer(
            contract.DECODER_MODEL,
            [embedding, pb_utils.Tensor("point_coords", coords), pb_utils.Tensor("point_labels", labels)],
            ["low_res_masks", "iou_predictions"],
        )
        return logits_array(logits), host_array(ious)
    names = [spec.name for spec in contract.INTERACTIVE_DECODER_INPUTS[1:]]
    arrays = interactive_decoder_inputs(coords, labels, mask_input)
    logits, ious = await _infer(
        contract.INTERACTIVE_DECODER_MODEL,
        [embedding, *(pb_utils.Tensor(n, a) for n, a in zip(names, arrays, strict=True))],
        ["masks", "iou_predictions"],
    )
    return select_mask_tokens(logits_array(logits), host_array(ious), multimask)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        params = glue.Parameters.from_config(json.loads(args["model_config"]))
        cv2.setNumThreads(glue.available_cpus())  # OpenCV's default counts the host's cores
        POSTPROCESS["where"] = params.str("mask_postprocess", "host")
        if POSTPROCESS["where"] == "device":
            from mobilesamv2.processing.device_masks import TorchPostprocessor

            postprocess = TorchPostprocessor()
            # torch's import and each GPU's CUDA context cost seconds: here, not in the first request
            started = time.perf_counter()
            devices = ", ".join(postprocess.warm_up())
            seconds = time.perf_counter() - started
            pb_utils.Logger.log_info(f"{MODEL}: device postprocess ready on {devices} in {seconds:.1f} s")
        elif POSTPROCESS["where"] == "host":
            postprocess = HostPostprocessor(params.int("mask_chunk_mb", DEFAULT_CHUNK_BYTES >> 20) << 20)
        else:
            where = POSTPROCESS["where"]
            raise ValueError(f"parameter mask_postprocess must be host or device, got {where!r}")
        build_info = Path(args["model_repository"]).parent / "BUILD_INFO.json"
        info = json.loads(build_info.read_text()) if build_info.is_file() else {}
        if info.get("weights") == "fake":
            pb_utils.Logger.log_warn(
                f"{MODEL}: this repository was built from RANDOM WEIGHTS; its masks are meaningless"
            )
        self.pipeline = Pipeline(
            Models(encode, discover, decode),
            limits=contract.Limits.from_parameters(params),
            channel_order=params.str("detector_channel_order", DETECTOR_CHANNEL_ORDER),
            decoder_max_prompts_per_call=params.int("decoder_max_prompts_per_call", 320),
            overlap=params.flag("overlap_encoder_and_discovery", True),
            postprocess=postprocess,
            embeddings=self._embedding_cache(params, build_info, info),
            cache_segevery=params.flag("embedding_cache_segevery", True),
        )
        pb_utils.Logger.log_info(
            f"{MODEL}: encoder {info.get('encoder', '?')}, limits {self.pipeline.limits}, overlap "
            f"{self.pipeline.overlap}, decoder cap {self.pipeline.decoder_max_prompts_per_call} prompts/call"
        )
        self.metrics = PipelineMetrics(MODEL)

    @staticmethod
    def _embedding_cache(
        params: glue.Parameters, build_info: Path, info: dict
    ) -> SharedEmbeddingCache | None:
        """The embedding cache every instance of this model shares (a directory per repository and build)."""
        budget_mb = params.int("embedding_cache_mb", 256)
        if budget_mb <= 0:
            return None
        root = Path(params.str("embedding_cache_dir", str(DEFAULT_ROOT)))
        identity = f"{build_info.parent.resolve()}:{info.get('fingerprint', '')}"
        cache = SharedEmbeddingCache(
            cache_directory(root, identity),
            budget_mb << 20,
            to_host=host_array,
            wrap=lambda array: pb_utils.Tensor("image_embeddings", array),
        )
        cache.prune_stale_siblings()
        return cache

    async def _respond(self, request) -> pb_utils.InferenceResponse:
        if glue.draining():
            # the runner is stopping this server: new requests go elsewhere, those running still reach the
            # sub-models (mobilesamv2/runner/server.py: Triton's own stop would refuse their sub-requests)
            error = pb_utils.TritonError(f"{MODEL}: {glue.SHUTTING_DOWN}", pb_utils.TritonError.UNAVAILABLE)
            return pb_utils.InferenceResponse(error=error)
        self.metrics.started()  # in flight until _serve records its outcome
        return await self._serve(request)

    async def _serve(self, request) -> pb_utils.InferenceResponse:
        timeout_us = request.timeout()  # the caller's deadline (its client timeout); 0 when it sent none
        deadline = time.monotonic() + timeout_us / 1e6 if timeout_us else None
        DEADLINE.set(deadline)
        try:
            inputs = glue.read_inputs(request, contract.PIPELINE_INPUTS, MODEL)
            segment = SegmentRequest.from_inputs(inputs, self.pipeline.limits)
            result = await self.pipeline.run(segment, request_checkpoint(request.is_cancelled, deadline))
            pb_utils.Logger.log_info(
                f"{MODEL}: {len(result)} masks, {segment.image_size[1]}x{segment.image_size[0]}, "
                + ", ".join(f"{k} {v:.1f} ms" for k, v in result.timings.items())
            )
            wanted = set(segment.settings.outputs())
            requested = set(request.requested_output_names())
            response = pb_utils.InferenceResponse(
                glue.tensors(result.to_outputs(wanted & requested or wanted))
            )
            self.metrics.record(None, len(result), result.timings)
            return response
        except Exception as exc:
            self.metrics.record(exc)
            return glue.error_response(exc, MODEL, request)

    async def execute(self, requests: list) -> list:
        # each request in its own task, so that each has its own DEADLINE context
        return list(await asyncio.gather(*(asyncio.ensure_future(self._respond(r)) for r in requests)))
