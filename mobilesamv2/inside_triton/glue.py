"""What the project's Triton Python models have in common: config parameters, request tensors, error answers,
ONNX Runtime session options.

Used by ``model_repository/*/1/model.py`` and the Python-based ``onnxruntime`` backend. Everything but
:func:`error_response`, :func:`read_inputs` and :func:`tensors` is pure Python and unit-tested without Triton;
those three import ``triton_python_backend_utils``, which exists only inside a Triton stub process.
"""

from __future__ import annotations

import ctypes
import os
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from mobilesamv2.runner.server import DRAIN_FILE_VAR
from segment_everything_contract import ContractError, TensorSpec

FALSE_WORDS = ("0", "false", "no", "off")
TRUE_WORDS = ("1", "true", "yes", "on")


class Parameters(Mapping[str, str]):
    """A model config's ``parameters`` as strings, with typed getters; an empty value counts as absent.

    >>> p = Parameters.from_config({"parameters": {"n": {"string_value": " 4 "}, "e": {"string_value": ""}}})
    >>> p.int("n", 1), p.int("e", 7), p.flag("x", True), "e" in p
    (4, 7, True, False)
    """

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = {k: v.strip() for k, v in values.items() if v and v.strip()}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Parameters:
        return cls({k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()})

    def __getitem__(self, key: str) -> str:
        return self._values[key]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def str(self, key: str, default: str) -> str:
        return self._values.get(key, default)

    def int(self, key: str, default: int) -> int:
        try:
            return int(self._values[key]) if key in self._values else default
        except ValueError:
            raise ValueError(f"parameter {key} must be an integer, got {self._values[key]!r}") from None

    def float(self, key: str, default: float) -> float:
        try:
            return float(self._values[key]) if key in self._values else default
        except ValueError:
            raise ValueError(f"parameter {key} must be a number, got {self._values[key]!r}") from None

    def flag(self, key: str, default: bool) -> bool:
        value = self._values.get(key)
        if value is None:
            return default
        if value.lower() in TRUE_WORDS:
            return True
        if value.lower() in FALSE_WORDS:
            return False
        raise ValueError(f"parameter {key} must be true or false, got {value!r}")

    def list(self, key: str) -> list[str]:
        return [item.strip() for item in self._values.get(key, "").split(",") if item.strip()]


# ------------------------------------------------------------------------------------------------ allocator

ALLOCATOR_VAR = "MOBILESAMV2_ALLOCATOR"
# The values of BENCHMARKS.md "Allocator": blocks of any size are served from the heap and reused (no mmap,
# page faults and zeroing per large allocation); the heap's top is returned to the system above 1 GiB.
HEAP_SETTINGS = {"MMAP_THRESHOLD": 32 << 20, "TRIM_THRESHOLD": 1 << 30, "TOP_PAD": 256 << 20, "MMAP_MAX": 0}
# the same for a whole process tree, as glibc reads them at start (the launcher's opt-in ``glibc-tuned``)
HEAP_MALLOC_ENV = {f"MALLOC_{name}_": str(value) for name, value in HEAP_SETTINGS.items()}
_MALLOPT = {"TRIM_THRESHOLD": -1, "TOP_PAD": -2, "MMAP_THRESHOLD": -3, "MMAP_MAX": -4}  # malloc.h's M_*


def keep_large_blocks_in_heap(environ: Mapping[str, str] = os.environ) -> bool:
    """Apply ``HEAP_SETTINGS`` to this process with mallopt(3) (glibc only; True when applied).

    For processes whose allocations are bounded, i.e. the ONNX Runtime stubs behind their input guards
    (config parameter ``malloc_keep_large_blocks``), and the benchmarks' in-process reference. Never
    process-wide: a heap that does not give big blocks back is unsafe where request sizes vary as much as
    images do (with it set for every process, one ``segment_everything`` stub grew to 10 GB during the
    hostile-input suite and was killed for memory). ``$MOBILESAMV2_ALLOCATOR`` ``glibc``, ``jemalloc`` or
    ``tcmalloc`` turns it off.
    """
    if environ.get(ALLOCATOR_VAR, "").strip().lower() in ("glibc", "jemalloc", "tcmalloc"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the process runs on
    except (OSError, AttributeError):  # not glibc (e.g. musl): leave its allocator alone
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(_MALLOPT[name], value) == 1 for name, value in HEAP_SETTINGS.items())


# --------------------------------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class ErrorAnswer:
    """How one failure is answered: a Triton error code name, the caller's message and the log line."""

    code: str  # INVALID_ARG | UNAVAILABLE | INTERNAL | CANCELLED | ...
    message: str
    log: str | None = None


SHUTTING_DOWN = "the server is shutting down; retry on another replica"
# Triton's refusals once it stops (BLS sub-requests are new requests): the default scheduler's and a batcher's
_TRITON_STOPPING = re.compile(r"Server not ready|Server is stopping", re.IGNORECASE)


def draining() -> bool:
    """Whether the runner is stopping this server (:mod:`mobilesamv2.runner.server`): new requests are then
    refused while those in flight finish."""
    path = os.environ.get(DRAIN_FILE_VAR)
    return bool(path) and os.path.exists(path)


def classify_error(exc: BaseException, model: str, request_id: str) -> ErrorAnswer:
    """Caller errors keep their message (it names the input); a server that is shutting down answers
    ``UNAVAILABLE`` (the request may go to another replica); anything else is logged in full and answered
    with the request id only, never library internals."""
    if isinstance(exc, ContractError):
        return ErrorAnswer("INVALID_ARG", str(exc))
    if _TRITON_STOPPING.search(str(exc)):
        return ErrorAnswer("UNAVAILABLE", f"{model}: {SHUTTING_DOWN}", f"{model} [{request_id}]: {exc}")
    code = getattr(exc, "code", None)
    if isinstance(code, str) and code in ("INVALID_ARG", "UNAVAILABLE", "CANCELLED", "UNSUPPORTED"):
        # a sub-model's own verdict (e.g. the decoder refusing its inputs) passes through as it was
        return ErrorAnswer(
            code, str(exc), None if code == "INVALID_ARG" else f"{model} [{request_id}]: {exc}"
        )
    return ErrorAnswer(
        "INTERNAL",
        f"{model}: internal error (request id {request_id}); the server log has the details",
        f"{model} [{request_id}]: {type(exc).__name__}: {exc}",
    )


ERROR_CODES = (
    "INVALID_ARG",
    "UNAVAILABLE",
    "CANCELLED",
    "UNSUPPORTED",
    "INTERNAL",
    "NOT_FOUND",
    "ALREADY_EXISTS",
)


def error_code_name(code: int) -> str | None:
    """The name of a ``pb_utils.TritonError`` code (the stub defines the constants only once it runs)."""
    import triton_python_backend_utils as pb_utils

    return next((n for n in ERROR_CODES if getattr(pb_utils.TritonError, n, None) == code), None)


def request_id(request: Any) -> str:
    """The caller's request id when it set one, else a fresh short one (for the log and the message)."""
    given = ""
    try:
        given = request.request_id() or ""
    except Exception:
        given = ""
    # the caller chose it: printable characters only, so it cannot forge log lines
    given = "".join(c for c in given[:64] if c.isprintable())
    return given or uuid.uuid4().hex[:12]


def error_response(exc: BaseException, model: str, request: Any) -> Any:
    """An error ``InferenceResponse`` for ``exc`` (see :func:`classify_error`); logs what the caller does
    not see."""
    import triton_python_backend_utils as pb_utils

    answer = classify_error(exc, model, request_id(request))
    if answer.log:
        pb_utils.Logger.log_error(answer.log)
    code = getattr(pb_utils.TritonError, answer.code, pb_utils.TritonError.INTERNAL)
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(answer.message, code))


# -------------------------------------------------------------------------------------------------- tensors


def read_inputs(request: Any, specs: Iterable[TensorSpec], model: str) -> dict[str, np.ndarray | None]:
    """The request's inputs as numpy arrays (None when absent), each checked against its contract dtype."""
    import triton_python_backend_utils as pb_utils

    arrays: dict[str, np.ndarray | None] = {}
    for spec in specs:
        tensor = pb_utils.get_input_tensor_by_name(request, spec.name)
        if tensor is None:
            if not spec.optional:
                raise ContractError(f"{model}: missing input '{spec.name}'")
            arrays[spec.name] = None
            continue
        array = tensor.as_numpy()
        check_dtype(array, spec, model)
        arrays[spec.name] = array
    return arrays


def check_dtype(array: np.ndarray, spec: TensorSpec, model: str) -> None:
    if array.dtype != spec.numpy_dtype:
        raise ContractError(f"{model}: input '{spec.name}' must be {spec.datatype}, got {array.dtype}")


def check_shape(array: np.ndarray, spec: TensorSpec, model: str) -> None:
    """Rank and fixed dims as declared (variable dims are the model's own business)."""
    ok = array.ndim == len(spec.dims) and all(
        d in (-1, a) for d, a in zip(spec.dims, array.shape, strict=True)
    )
    if not ok:
        raise ContractError(
            f"{model}: input '{spec.name}' must have shape {list(spec.dims)}, got {list(array.shape)}"
        )


def tensors(outputs: Mapping[str, np.ndarray]) -> list[Any]:
    import triton_python_backend_utils as pb_utils

    return [pb_utils.Tensor(name, array) for name, array in outputs.items()]


# ------------------------------------------------------------------------------------------------------- CPUs


def cgroup_cpu_limit(root: str = "/sys/fs/cgroup") -> float | None:
    """CPUs this container may use by its CFS quota (cgroup v2 ``cpu.max``, else v1), None when unlimited."""
    try:
        with open(os.path.join(root, "cpu.max")) as f:
            quota, period = f.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open(os.path.join(root, "cpu", "cpu.cfs_quota_us")) as f:
            quota_us = int(f.read())
        with open(os.path.join(root, "cpu", "cpu.cfs_period_us")) as f:
            period_us = int(f.read())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def available_cpus(root: str = "/sys/fs/cgroup") -> int:
    """CPUs this process may really use: its affinity mask, capped by the cgroup quota (a Kubernetes CPU
    limit), never the host's core count."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        count = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        count = min(count, max(1, int(limit)))
    return max(1, count)


# ------------------------------------------------------------------------------------------------ onnxruntime

GRAPH_LEVELS = {0: "ORT_DISABLE_ALL", 1: "ORT_ENABLE_BASIC", 2: "ORT_ENABLE_EXTENDED", 99: "ORT_ENABLE_ALL"}


def ort_settings(params: Parameters, default_threads: int | None = None) -> dict[str, Any]:
    """ONNX Runtime settings from config parameters (the names of NVIDIA's onnxruntime backend where it has
    them), with their defaults. The intra-op pool defaults to ``$OMP_NUM_THREADS`` if set, else
    ``default_threads``, else every CPU this process may use (:func:`available_cpus`: ONNX Runtime's own
    default counts the host's cores, which oversubscribes a container with a CPU limit)."""
    env_threads = os.environ.get("OMP_NUM_THREADS", "")
    threads = int(env_threads) if env_threads else (default_threads or available_cpus())
    settings = {
        "intra_op_thread_count": params.int("intra_op_thread_count", threads),
        "inter_op_thread_count": params.int("inter_op_thread_count", 0),
        "execution_mode": params.int("execution_mode", 0),
        "graph_optimization_level": params.int("graph_optimization_level", 99),
        "enable_mem_pattern": params.flag("enable_mem_pattern", True),
        "enable_cpu_mem_arena": params.flag("enable_cpu_mem_arena", True),
        "allow_spinning": params.flag("allow_spinning", True),
        "disabled_optimizers": params.list("disabled_optimizers"),
    }
    if settings["graph_optimization_level"] not in GRAPH_LEVELS:
        raise ValueError(f"graph_optimization_level must be one of {sorted(GRAPH_LEVELS)}")
    return settings


def ort_session_options(settings: Mapping[str, Any]) -> Any:
    """``onnxruntime.SessionOptions`` for :func:`ort_settings`."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = settings["intra_op_thread_count"]
    options.inter_op_num_threads = settings["inter_op_thread_count"]
    options.execution_mode = (
        ort.ExecutionMode.ORT_PARALLEL
        if settings["execution_mode"] == 1
        else ort.ExecutionMode.ORT_SEQUENTIAL
    )
    options.graph_optimization_level = getattr(
        ort.GraphOptimizationLevel, GRAPH_LEVELS[settings["graph_optimization_level"]]
    )
    options.enable_mem_pattern = settings["enable_mem_pattern"]
    options.enable_cpu_mem_arena = settings["enable_cpu_mem_arena"]
    # Spinning intra-op threads busy-wait between ops; when models share few cores they steal each other's.
    options.add_session_config_entry(
        "session.intra_op.allow_spinning", "1" if settings["allow_spinning"] else "0"
    )
    return options


def ort_providers(params: Parameters, args: Mapping[str, str]) -> list[Any]:
    """Execution providers from the ``execution_provider`` parameter (``cpu`` default, or ``cuda``).

    CUDA runs on the GPU of this model instance (``model_instance_device_id``, not always GPU 0), with a
    bounded cuDNN algorithm search: the default exhaustive search reruns on every new input shape, and each
    letterbox aspect ratio is a new shape. There is no CPU fall-back: :func:`check_providers` refuses a
    session that silently runs on the CPU.
    """
    kind = params.str("execution_provider", "cpu").lower()
    if kind == "cpu":
        return ["CPUExecutionProvider"]
    if kind != "cuda":
        raise ValueError(f"parameter execution_provider must be cpu or cuda, got {kind!r}")
    options = {
        "device_id": int(args.get("model_instance_device_id") or 0),
        "cudnn_conv_algo_search": params.str("cudnn_conv_algo_search", "HEURISTIC"),
        "arena_extend_strategy": "kSameAsRequested",
    }
    limit_mb = params.int("gpu_mem_limit_mb", 0)
    if limit_mb > 0:
        options["gpu_mem_limit"] = limit_mb << 20
    return [("CUDAExecutionProvider", options)]


def check_providers(session: Any, providers: list[Any], model: str) -> None:
    """Fail loudly when ONNX Runtime did not get the first provider asked for (CUDA libraries missing?)."""
    wanted = providers[0] if isinstance(providers[0], str) else providers[0][0]
    got = session.get_providers()[0]
    if got != wanted:
        raise RuntimeError(
            f"{model}: ONNX Runtime runs on {got}, not {wanted} (CUDA/cuDNN libraries missing or not "
            "matching onnxruntime-gpu?); refusing to serve on the wrong device"
        )
