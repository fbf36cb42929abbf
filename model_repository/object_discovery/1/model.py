"""Object discovery: MobileSAMv2's object-aware model (YOLOv8-seg on SA-1B) as a Triton Python model.

Runs the detector's exported network (``detector.onnx``, letterboxed uint8 in, ``(1, 4 + nc, A)`` out) with
ONNX Runtime and returns the candidates whose best class score is above ``conf_threshold`` (boxes in letterbox
pixels), before NMS: NMS belongs to the pipeline, which needs the geometry of the letterbox it made anyway.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from mobilesamv2.processing.boxes import CONF_THRESHOLD, select_candidates
from mobilesamv2.processing.image import DETECTOR_STRIDE


class BadRequest(ValueError):
    pass


def _parameters(config: dict) -> dict[str, str]:
    return {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        import onnxruntime as ort

        config = json.loads(args["model_config"])
        params = _parameters(config)
        path = (
            Path(args["model_repository"])
            / args["model_version"]
            / params.get("detector_file", "detector.onnx")
        )
        if not path.is_file():
            raise pb_utils.TritonModelException(f"{path} not found: build the repository (mobilesamv2-build)")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_thread_count", "0") or 0)
        if params.get("allow_spinning", "true").lower() in ("0", "false", "no", "off"):
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        if params.get("execution_provider", "cpu").lower() == "cuda":
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self.default_conf = float(params.get("default_conf_threshold", CONF_THRESHOLD) or CONF_THRESHOLD)
        pb_utils.Logger.log_info(f"object_discovery: {path.name} on {self.session.get_providers()[0]}")

    def _run(self, request) -> list:
        images = pb_utils.get_input_tensor_by_name(request, "images").as_numpy()
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[2] != 3:
            raise BadRequest(f"images must be uint8 HxWx3, got {images.dtype} {list(images.shape)}")
        if images.shape[0] % DETECTOR_STRIDE or images.shape[1] % DETECTOR_STRIDE:
            raise BadRequest(
                f"letterboxed images must have sides that are multiples of 32, got {list(images.shape[:2])}"
            )
        conf_tensor = pb_utils.get_input_tensor_by_name(request, "conf_threshold")
        conf = self.default_conf if conf_tensor is None else float(conf_tensor.as_numpy().reshape(-1)[0])
        if not 0.0 <= conf < 1.0:
            raise BadRequest(f"conf_threshold must be in [0, 1), got {conf}")
        prediction = self.session.run(None, {self.input_name: np.ascontiguousarray(images)[None]})[0][0]
        boxes, scores, classes = select_candidates(prediction, conf)
        return [
            pb_utils.Tensor("boxes", boxes),
            pb_utils.Tensor("scores", scores),
            pb_utils.Tensor("classes", classes),
        ]

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            try:
                responses.append(pb_utils.InferenceResponse(output_tensors=self._run(request)))
            except BadRequest as exc:
                error = pb_utils.TritonError(f"object_discovery: {exc}", pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
            except Exception as exc:
                responses.append(
                    pb_utils.InferenceResponse(error=pb_utils.TritonError(f"object_discovery: {exc}"))
                )
        return responses
