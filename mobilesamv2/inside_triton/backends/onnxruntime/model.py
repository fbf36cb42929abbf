"""Python-based Triton backend named ``onnxruntime``: runs ``model.onnx`` with ONNX Runtime on CPU.

Installed as ``<backend-directory>/onnxruntime/model.py``, it serves every model whose ``config.pbtxt``
says ``backend: "onnxruntime"``: the same repository that NVIDIA's container serves with its C++ ONNX Runtime
backend runs unchanged on the pip-installed tritonserver, which ships no ONNX Runtime backend.

Config ``parameters`` read here (all optional, string values):
    intra_op_thread_count, inter_op_thread_count   ORT thread pools (0 = ORT decides; default for intra:
                                                   $OMP_NUM_THREADS if set, else 0)
    execution_mode                                 0 sequential (default), 1 parallel
    graph_optimization_level                       0 none, 1 basic, 2 extended, 99 all (default)
    enable_mem_pattern, enable_cpu_mem_arena       "true"/"false" (default true)
    allow_spinning                                 "true"/"false" (default true): ORT threads busy-wait
    disabled_optimizers                            comma-separated ORT graph transformers to skip (measured
                                                   per model, e.g. SkipLayerNormFusion; see BENCHMARKS.md)
    max_rows_per_run                               run at most this many rows of axis 0 per ORT call and
                                                   concatenate the outputs (bounds CPU memory of huge batches)
    sliced_inputs                                  comma-separated inputs that max_rows_per_run slices; they
                                                   must share their axis-0 length (default: all inputs when
                                                   max_batch_size > 0; required when max_batch_size is 0)
    max_dims, same_dims, finite_inputs, value_ranges
                                                   input guards (mobilesamv2/inside_triton/input_guards.py):
                                                   every request is checked against them before ORT runs
                                                   and refused with INVALID_ARG naming the model, the
                                                   input, the value and the limit:
        max_dims       "input=d0,d1,...;input=..."  largest size per axis (batch axis first when
                                                   max_batch_size > 0), "*" = unbounded; shape only
        same_dims      "input:axis,input:axis;..."  each group of axes must agree in length
        finite_inputs  "input,input"               float inputs without NaN or infinity
        value_ranges   "input=low:high;..."         inclusive, an empty side unbounded, NaN always outside
    e.g. (interactive_decoder)
        max_dims      "point_coords=64,33,2;point_labels=64,33;mask_input=64,1,256,256;has_mask_input=64"
        finite_inputs "image_embeddings,point_coords,point_labels,mask_input,has_mask_input"
        value_ranges  "point_coords=-1024:2048;point_labels=-1:3;has_mask_input=0:1"
    A malformed guard parameter (bad syntax, unknown input, wrong number of axes, a bound below a dim the
    config fixes, finite_inputs on an integer input) fails the model load with a message naming the parameter.

Errors: a request that breaks the config or a guard gets INVALID_ARG with a message naming the input; a
failure inside ONNX Runtime (or anything else unexpected) gets INTERNAL "<model>: internal error (request id
...)" and the details (exception, node names) go to the server log only (glue.classify_error).

The C++ backend ignores max_rows_per_run, sliced_inputs and the guard parameters, so a config stays valid in
NVIDIA's container; there the TensorRT optimisation profiles bound the shapes (docs/hostile-input.md).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

from mobilesamv2.inside_triton import glue
from mobilesamv2.inside_triton.input_guards import GuardConfigError, InputGuards, InputInfo
from segment_everything_contract import ContractError

_ORT_TO_NUMPY: dict[str, type] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
    "tensor(string)": np.object_,
}


class BadRequest(ContractError):
    """A request whose inputs do not fit the model; answered with INVALID_ARG."""


def _error(message: str, code: int) -> pb_utils.InferenceResponse:
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message, code))


def _answer(exc: BaseException, model: str, request_ids: list[str]) -> list[pb_utils.InferenceResponse]:
    """Error responses for the requests of one failure, with glue.classify_error's semantics: a caller error
    keeps its message, anything else is INTERNAL with the request id only and the details in the log (logged
    once for all the requests that shared the ORT call)."""
    answers = [glue.classify_error(exc, model, rid) for rid in request_ids]
    if answers and answers[0].log:
        pb_utils.Logger.log_error(f"{model} [{', '.join(request_ids)}]: {type(exc).__name__}: {exc}")
    codes = [getattr(pb_utils.TritonError, a.code, pb_utils.TritonError.INTERNAL) for a in answers]
    return [_error(a.message, code) for a, code in zip(answers, codes, strict=True)]


class TritonPythonModel:
    """Serves one ONNX model; batches compatible requests into one ORT call."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.name: str = config["name"]
        filename = config.get("default_model_filename") or "model.onnx"
        if filename.endswith(".py"):  # the python backend's own default, not an ONNX file
            filename = "model.onnx"
        path = os.path.join(args["model_repository"], args["model_version"], filename)
        if not os.path.isfile(path):
            raise pb_utils.TritonModelException(f"{self.name}: ONNX file not found: {path}")

        params = glue.Parameters.from_config(config)
        if params.flag("malloc_keep_large_blocks", False):
            glue.keep_large_blocks_in_heap()
        settings = glue.ort_settings(params)
        self.session = ort.InferenceSession(
            path,
            sess_options=glue.ort_session_options(settings),
            providers=["CPUExecutionProvider"],
            disabled_optimizers=settings["disabled_optimizers"] or None,
        )
        self.max_batch_size = int(config.get("max_batch_size", 0))
        self._check_io(config)
        try:
            self.guards = InputGuards.from_parameters(
                self.name,
                params,
                {n: InputInfo(dtype, tuple(shape)) for n, (dtype, _, shape) in self.inputs.items()},
            )
        except GuardConfigError as exc:
            raise pb_utils.TritonModelException(f"{self.name}: {exc}") from None

        self.max_rows_per_run = params.int("max_rows_per_run", 0)
        self.sliced_inputs = params.list("sliced_inputs")
        if self.max_rows_per_run > 0 and not self.sliced_inputs:
            if self.max_batch_size == 0:
                raise pb_utils.TritonModelException(
                    f"{self.name}: max_rows_per_run needs parameter sliced_inputs when max_batch_size is 0"
                )
            self.sliced_inputs = list(self.inputs)
        unknown = [n for n in self.sliced_inputs if n not in self.inputs]
        if unknown:
            raise pb_utils.TritonModelException(f"{self.name}: sliced_inputs {unknown} are not config inputs")

        settings.update(
            max_rows_per_run=self.max_rows_per_run or None,
            sliced_inputs=self.sliced_inputs or None,
            guards=self.guards.describe() or None,
        )
        pb_utils.Logger.log_info(
            f"onnxruntime(python) {self.name}: {path} on CPUExecutionProvider, {settings}"
        )

    def _check_io(self, config: dict[str, Any]) -> None:
        """Match config inputs/outputs to the graph; keep each input's dtype and expected full shape."""
        graph_inputs = {node.name: node for node in self.session.get_inputs()}
        graph_outputs = {node.name: node for node in self.session.get_outputs()}
        problems: list[str] = []
        self.inputs: dict[str, tuple[np.dtype, str, list[int]]] = {}
        for entry in config.get("input", []):
            name, triton_type = entry["name"], entry["data_type"]
            node = graph_inputs.get(name)
            if node is None:
                problems.append(
                    f"config input '{name}' is not a graph input (graph inputs: {sorted(graph_inputs)})"
                )
                continue
            dtype = np.dtype(pb_utils.triton_string_to_numpy(triton_type))
            if np.dtype(_ORT_TO_NUMPY.get(node.type, np.void)) != dtype:
                problems.append(f"input '{name}' is {triton_type} in the config but {node.type} in the graph")
            dims = [int(d) for d in entry.get("dims", [])]
            shape = ([-1] if self.max_batch_size > 0 else []) + dims
            if len(shape) != len(node.shape):
                problems.append(
                    f"input '{name}' has rank {len(shape)} in the config but {len(node.shape)} in the graph"
                )
                continue
            # The graph may fix a dimension the config leaves variable: check it here, not deep inside ORT.
            shape = [
                g if c == -1 and isinstance(g, int) and g > 0 else c
                for c, g in zip(shape, node.shape, strict=True)
            ]
            self.inputs[name] = (dtype, triton_type, shape)
        configured = {entry["name"] for entry in config.get("input", [])}
        problems += [
            f"graph input '{n}' is missing from the config inputs"
            for n in graph_inputs
            if n not in configured
        ]
        self.outputs = [entry["name"] for entry in config.get("output", [])]
        problems += [
            f"config output '{n}' is not a graph output (graph outputs: {sorted(graph_outputs)})"
            for n in self.outputs
            if n not in graph_outputs
        ]
        if problems:
            raise pb_utils.TritonModelException(
                f"{self.name}: config does not match the ONNX graph: " + "; ".join(problems)
            )

    def _read_inputs(self, request: Any) -> dict[str, np.ndarray]:
        feeds: dict[str, np.ndarray] = {}
        for name, (dtype, triton_type, shape) in self.inputs.items():
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise BadRequest(f"{self.name}: missing input '{name}'")
            array = tensor.as_numpy()
            if array.dtype != dtype:
                raise BadRequest(
                    f"{self.name}: input '{name}' must be {triton_type} ({dtype}), got {array.dtype}"
                )
            if array.ndim != len(shape) or any(
                e not in (-1, a) for e, a in zip(shape, array.shape, strict=True)
            ):
                raise BadRequest(
                    f"{self.name}: input '{name}' must have shape {shape}, got {list(array.shape)}"
                )
            feeds[name] = array
        return feeds

    def _check_rows(self, feeds: dict[str, np.ndarray]) -> None:
        rows = {feeds[n].shape[0] for n in (self.inputs if self.max_batch_size > 0 else self.sliced_inputs)}
        if len(rows) > 1:
            which = "batched inputs" if self.max_batch_size > 0 else f"sliced inputs {self.sliced_inputs}"
            raise BadRequest(f"{self.name}: {which} must share their axis-0 length, got {sorted(rows)}")

    def _run(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        """One ORT call, or several of at most max_rows_per_run rows whose outputs are concatenated."""
        rows = feeds[self.sliced_inputs[0]].shape[0] if self.sliced_inputs else 0
        step = self.max_rows_per_run
        if step <= 0 or rows <= step:
            return self.session.run(outputs, feeds)
        parts = []
        for start in range(0, rows, step):
            chunk = {n: a[start : start + step] if n in self.sliced_inputs else a for n, a in feeds.items()}
            parts.append(self.session.run(outputs, chunk))
        return [np.concatenate(pieces, axis=0) for pieces in zip(*parts, strict=True)]

    def execute(self, requests: list[Any]) -> list[pb_utils.InferenceResponse]:
        responses: list[pb_utils.InferenceResponse | None] = [None] * len(requests)
        # Triton's dynamic batcher hands over several requests; only same-shaped ones can share one ORT call
        # (ragged batching may mix shapes), and a bad request is answered alone.
        groups: dict[tuple, list[tuple[int, dict[str, np.ndarray], list[str], str]]] = {}
        for index, request in enumerate(requests):
            rid = glue.request_id(request)
            try:
                feeds = self._read_inputs(request)
                self.guards.check(feeds)  # shapes first, then values: refused before ORT sees them
                self._check_rows(feeds)
                wanted = list(request.requested_output_names()) or self.outputs
            except Exception as exc:  # a bad request is answered alone
                responses[index] = _answer(exc, self.name, [rid])[0]
                continue
            key = tuple((n, a.shape[1:]) for n, a in feeds.items()) if self.max_batch_size > 0 else (index,)
            groups.setdefault(key, []).append((index, feeds, wanted, rid))

        for members in groups.values():
            for index, response in self._run_group(members):
                responses[index] = response
        return responses

    def _run_group(
        self, members: list[tuple[int, dict[str, np.ndarray], list[str], str]]
    ) -> list[tuple[int, pb_utils.InferenceResponse]]:
        names = [n for n in self.outputs if any(n in wanted for _, _, wanted, _ in members)]
        try:
            if len(members) == 1:
                feeds = members[0][1]
            else:
                feeds = {n: np.concatenate([m[1][n] for m in members], axis=0) for n in self.inputs}
            # ORT failures (shape inference, OOM, ...) are the server's fault: INTERNAL, details in the log
            results = dict(zip(names, self._run(feeds, names), strict=True))
            if len(members) == 1:
                pieces = {n: [a] for n, a in results.items()}
            else:
                sizes = [next(iter(m[1].values())).shape[0] for m in members]
                bad = [n for n, a in results.items() if a.shape[:1] != (sum(sizes),)]
                if bad:
                    raise RuntimeError(
                        f"outputs {bad} do not have one row per batch row; cannot split the batch"
                    )
                cuts = np.cumsum(sizes)[:-1]
                pieces = {n: np.split(a, cuts, axis=0) for n, a in results.items()}
            return [
                (
                    index,
                    pb_utils.InferenceResponse(
                        [pb_utils.Tensor(n, pieces[n][i]) for n in names if n in wanted]
                    ),
                )
                for i, (index, _, wanted, _) in enumerate(members)
            ]
        except Exception as exc:  # every request of the group gets an answer
            errors = _answer(exc, self.name, [rid for _, _, _, rid in members])
            return [(index, error) for (index, _, _, _), error in zip(members, errors, strict=True)]

    def finalize(self) -> None:
        self.session = None
