"""Object discovery: MobileSAMv2's object-aware model (YOLOv8-seg on SA-1B) as a Triton Python model.

Runs the detector's exported network (``detector.onnx``, letterboxed uint8 in, ``(1, 4 + nc, A)`` out) with
ONNX Runtime and returns the candidates whose best class score is above ``conf_threshold`` (boxes in letterbox
pixels), before NMS: NMS belongs to the pipeline, which needs the geometry of the letterbox it made anyway.
Anyone who can reach the port can call this model directly, so it checks its own inputs against the contract.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

import segment_everything_contract as contract
from mobilesamv2.inside_triton import glue
from mobilesamv2.processing.boxes import select_candidates

MODEL = contract.DISCOVERY_MODEL
IMAGES, CONF = contract.DISCOVERY_INPUTS


def check_letterbox(images: np.ndarray) -> None:
    """uint8 ``HxWx3`` with sides multiples of the stride and at most the pipeline's letterbox (1024)."""
    glue.check_shape(images, IMAGES, MODEL)
    h, w = images.shape[:2]
    stride, most = contract.DETECTOR_STRIDE, contract.DETECTOR_MAX_SIDE
    if h % stride or w % stride or not (stride <= h <= most and stride <= w <= most):
        raise contract.ContractError(
            f"{MODEL}: 'images' must be a letterbox with sides multiples of {stride} in [{stride}, {most}], "
            f"got {w}x{h}"
        )


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        import onnxruntime as ort

        params = glue.Parameters.from_config(json.loads(args["model_config"]))
        path = (
            Path(args["model_repository"])
            / args["model_version"]
            / params.str("detector_file", "detector.onnx")
        )
        if not path.is_file():
            raise pb_utils.TritonModelException(f"{path} not found: build the repository (mobilesamv2-build)")
        options = glue.ort_session_options(glue.ort_settings(params))
        providers = glue.ort_providers(params, args)
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        glue.check_providers(self.session, providers, MODEL)
        self.input_name = self.session.get_inputs()[0].name
        pb_utils.Logger.log_info(f"{MODEL}: {path.name} on {self.session.get_providers()}")

    def _run(self, request) -> list:
        inputs = glue.read_inputs(request, contract.DISCOVERY_INPUTS, MODEL)
        images = inputs[IMAGES.name]
        check_letterbox(images)
        conf = contract.Settings().conf
        if inputs[CONF.name] is not None:
            conf = contract.Settings.from_inputs({CONF.name: inputs[CONF.name]}).conf
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
            except Exception as exc:
                responses.append(glue.error_response(exc, MODEL, request))
        return responses
