"""TensorRT engine builds for the GPU model repository: which layers stay FP32, the ``trtexec`` command line,
and the engine cache the container entrypoint (``mobilesamv2.runner.entrypoint``) keeps per GPU and TensorRT
version.

Why FP32 layers: in FP16, LayerNorm's mean of squares and LiteMLA's normaliser (a sum of ``relu(q).relu(k)``
over every token, divided with an epsilon of 1e-15) overflow or underflow, and the embeddings come out inf/NaN
(EfficientViT-SAM-L2 in plain FP16 was reported at mAP 0.0). Upstream keeps those parts in FP32 under
autocast; a TensorRT engine does the same with per-layer precision constraints. TensorRT names layers after
the ONNX node names, so the list is computed from the ONNX graph that the engine is built from.

That protection is partial: TensorRT's ONNX parser gives a node's name only to the first layer it makes of it
(the others get generated names the list cannot match), and EfficientViT-SAM-L2 was reported to give NaN in
FP16 even with LiteMLA in FP32 (mit-han-lab/efficientvit#184). The GPU repository therefore builds the
image encoder in FP32 (``TF32``: FP32 storage, TF32 tensor-core math, TensorRT's default) and FP16 only on
request, and the entrypoint checks every engine against ONNX Runtime before serving it
(``mobilesamv2.export.verify``).

Imported by the entrypoint inside NVIDIA's container (Python 3.10, ``onnx`` installed; no torch): keep this
module free of torch and of Python 3.11-only features.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

# --- which layers stay FP32 ---------------------------------------------------------------------------------

#: ONNX normalisation ops (LayerNorm of the SAM mask decoder, TinyViT and ViT-H encoders; torch's dynamo
#: exporter writes ``nn.LayerNorm`` as one LayerNormalization node).
NORM_OP_TYPES = frozenset(
    {
        "LayerNormalization",
        "SimplifiedLayerNormalization",
        "RMSNormalization",
        "GroupNormalization",
        "InstanceNormalization",
    }
)
#: Module classes / module scopes whose nodes stay FP32, matched against the node name and the exporter's
#: metadata (``namespace``, ``pkg.torch.onnx.class_hierarchy``, ``pkg.torch.onnx.name_scopes``).
#: ``LayerNorm2d`` is EfficientViT's and SAM's channel LayerNorm (ReduceMean/Sub/Pow/Sqrt/Div ops);
#: ``LiteMLA`` and the ``context_module`` that wraps it are EfficientViT's linear attention.
FP32_SCOPE_MARKERS = ("LiteMLA", "context_module", "LayerNorm2d")
#: Inside those scopes the convolutions (with their folded BatchNorm) may run in FP16, as under upstream's
#: autocast: only the attention arithmetic (matmuls, the normalising division) needs the range.
FP16_SAFE_OPS_IN_SCOPE = frozenset({"Conv", "ConvTranspose", "BatchNormalization"})
#: Nodes that produce no float activation a precision could apply to (constants, shape arithmetic).
NON_COMPUTE_OPS = frozenset({"Constant", "ConstantOfShape", "Shape", "Size", "Range", "NonZero"})
_FLOAT_TYPES = frozenset(
    {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}
)
_SCOPE_METADATA_KEYS = ("namespace", "pkg.torch.onnx.class_hierarchy", "pkg.torch.onnx.name_scopes")
# The ops between a norm's two ReduceMeans and its division (x - mean) / sqrt(mean((x - mean)^2) + eps).
_NORM_CHAIN_OPS = frozenset({"Add", "Sqrt", "Reciprocal", "Cast", "Identity"})


def _load_graph(onnx_model_or_path: onnx.ModelProto | str | os.PathLike[str]) -> onnx.ModelProto:
    if isinstance(onnx_model_or_path, onnx.ModelProto):
        return onnx_model_or_path
    # Only the graph is needed: leave external weights (ViT-H is > 2 GB) on disk.
    return onnx.load(os.fspath(onnx_model_or_path), load_external_data=False)


def _tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    graph = model.graph
    types: dict[str, int] = {}
    for value in [*graph.input, *graph.output, *graph.value_info]:
        if value.type.HasField("tensor_type"):
            types[value.name] = value.type.tensor_type.elem_type
    for init in graph.initializer:
        types[init.name] = init.data_type
    missing = [o for n in graph.node for o in n.output if o and o not in types]
    if missing:
        # The dynamo exporter writes value_info for every tensor; other exporters may not.
        try:
            inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
        except (onnx.shape_inference.InferenceError, ValueError, RuntimeError):  # a help, not a requirement
            return types
        for value in inferred.graph.value_info:
            if value.type.HasField("tensor_type"):
                types.setdefault(value.name, value.type.tensor_type.elem_type)
    return types


def _mentions_scope(node: onnx.NodeProto, markers: Sequence[str]) -> bool:
    texts = [node.name] + [p.value for p in node.metadata_props if p.key in _SCOPE_METADATA_KEYS]
    return any(marker in text for marker in markers for text in texts)


def _reduce_mean_norms(graph: onnx.GraphProto) -> set[str]:
    """Node names of LayerNorms written with ReduceMean: ``d = x - mean(x); d / sqrt(mean(d*d) + eps)``."""
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found: set[str] = set()
    for sub in graph.node:
        if sub.op_type != "Sub" or len(sub.input) != 2:
            continue
        mean = producer.get(sub.input[1])
        if mean is None or mean.op_type != "ReduceMean" or mean.input[0] != sub.input[0]:
            continue
        diff = sub.output[0]
        for square in consumers.get(diff, []):
            is_square = (square.op_type == "Pow") or (
                square.op_type == "Mul" and list(square.input) == [diff, diff]
            )
            if not is_square:
                continue
            for var in consumers.get(square.output[0], []):
                if var.op_type != "ReduceMean":
                    continue
                chain, current = [var], var.output[0]
                # Walk Add(eps) / Sqrt / Reciprocal to the Div (or Mul) that also reads x - mean.
                for _ in range(6):
                    nxt = consumers.get(current, [])
                    if len(nxt) != 1:
                        break
                    step = nxt[0]
                    if step.op_type in ("Div", "Mul") and diff in step.input:
                        found.update(n.name for n in (mean, sub, square, *chain, step))
                        break
                    if step.op_type not in _NORM_CHAIN_OPS:
                        break
                    chain.append(step)
                    current = step.output[0]
    return found


def fp32_layer_names(
    onnx_model_or_path: onnx.ModelProto | str | os.PathLike[str],
    *,
    scope_markers: Sequence[str] = FP32_SCOPE_MARKERS,
    fp16_safe_ops_in_scope: Iterable[str] = FP16_SAFE_OPS_IN_SCOPE,
) -> list[str]:
    """Names of the ONNX nodes (= TensorRT layers) that must run in FP32 in an FP16 engine, in graph order.

    Selected: normalisation ops (LayerNormalization & co.), LayerNorms written as ReduceMean/Sub/Pow/Sqrt/Div,
    and every node whose name or exporter scope metadata mentions one of ``scope_markers`` (LiteMLA), except
    convolutions there. Only nodes with float outputs are listed (shape arithmetic has no precision).

    Raises:
        ValueError: a selected node has no name, or a name that ``trtexec --layerPrecisions`` cannot express
            (it splits the list on ``,`` and treats ``'`` as quoting).
    """
    model = _load_graph(onnx_model_or_path)
    graph = model.graph
    types = _tensor_types(model)
    safe_ops = frozenset(fp16_safe_ops_in_scope)
    norm_nodes = _reduce_mean_norms(graph)
    names: list[str] = []
    seen: set[str] = set()
    for node in graph.node:
        if node.op_type in NON_COMPUTE_OPS:
            continue
        selected = (
            node.op_type in NORM_OP_TYPES
            or (node.name and node.name in norm_nodes)
            or (_mentions_scope(node, scope_markers) and node.op_type not in safe_ops)
        )
        if not selected:
            continue
        outputs = [o for o in node.output if o]
        if not outputs or any(types.get(o) not in _FLOAT_TYPES for o in outputs):
            continue
        if not node.name:
            raise ValueError(
                f"an unnamed {node.op_type} node must stay FP32: name the ONNX nodes before building"
            )
        if "," in node.name or "'" in node.name:
            raise ValueError(f"layer name {node.name!r} cannot be passed to trtexec --layerPrecisions")
        if node.name not in seen:
            seen.add(node.name)
            names.append(node.name)
    return names


# --- trtexec ------------------------------------------------------------------------------------------------

#: Linux caps one argv string at 128 KiB (MAX_ARG_STRLEN); trtexec reads --layerPrecisions only from argv.
MAX_ARGUMENT_BYTES = 128 * 1024 - 1
DEFAULT_WORKSPACE_MB = 4096
ShapeRange = tuple[Sequence[int], Sequence[int], Sequence[int]]


class LayerListTooLong(ValueError):
    """The --layerPrecisions argument would exceed the kernel's per-argument limit."""


def _dims(shape: Sequence[int]) -> str:
    if not shape or any(int(d) < 1 for d in shape):
        raise ValueError(f"profile shapes must be positive, got {list(shape)}")
    return "x".join(str(int(d)) for d in shape)


def shapes_arguments(shapes: Mapping[str, ShapeRange]) -> list[str]:
    """``--minShapes/--optShapes/--maxShapes`` for ``{input: (min, opt, max)}``."""
    for name, (low, opt, high) in shapes.items():
        if not (len(low) == len(opt) == len(high)):
            raise ValueError(f"{name}: min/opt/max shapes have different ranks")
        if any(not (a <= b <= c) for a, b, c in zip(low, opt, high, strict=True)):
            raise ValueError(f"{name}: need min <= opt <= max per dimension, got {low} / {opt} / {high}")
    return [
        f"--{flag}=" + ",".join(f"{name}:{_dims(r[i])}" for name, r in shapes.items())
        for i, flag in enumerate(("minShapes", "optShapes", "maxShapes"))
    ]


def trtexec_command(
    onnx_path: str | os.PathLike[str],
    plan_path: str | os.PathLike[str],
    *,
    fp16: bool = True,
    fp32_layers: Sequence[str] = (),
    shapes: Mapping[str, ShapeRange] | None = None,
    tf32: bool = True,
    workspace_mb: int = DEFAULT_WORKSPACE_MB,
    timing_cache: str | os.PathLike[str] | None = None,
    trtexec: str = "trtexec",
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The ``trtexec`` (TensorRT 10) command line that builds ``plan_path`` from ``onnx_path``.

    FP16 engines keep ``fp32_layers`` in FP32 with ``--precisionConstraints=prefer
    --layerPrecisions=...:fp32``: ``obey`` turns a constraint TensorRT cannot meet (e.g. one that conflicts
    with a fusion it chose) into a hard build failure, so the container could not start; ``prefer`` keeps
    the engine buildable, and the engine check at start (``mobilesamv2.export.verify``) refuses it if the
    precision it ended with disagrees with ONNX Runtime. trtexec has no option that reads the layer list
    from a file, so a list longer than one argv string allows raises :class:`LayerListTooLong`
    (the EfficientViT-SAM-L2 encoder needs about 150 names, ~2 KB). ``tf32=False`` forbids TF32 tensor-core
    math in FP32 layers (``--noTF32``; TensorRT allows it by default on Ampere and newer).
    """
    if workspace_mb < 1:
        raise ValueError("workspace_mb must be positive")
    command = [
        trtexec,
        f"--onnx={os.fspath(onnx_path)}",
        f"--saveEngine={os.fspath(plan_path)}",
        "--skipInference",  # build only (TensorRT 10 spelling of the old --buildOnly)
        f"--memPoolSize=workspace:{int(workspace_mb)}M",
    ]
    if fp16:
        command.append("--fp16")
        if fp32_layers:
            spec = ",".join(f"{name}:fp32" for name in fp32_layers)
            argument = f"--layerPrecisions={spec}"
            if len(argument.encode()) > MAX_ARGUMENT_BYTES:
                raise LayerListTooLong(
                    f"{len(fp32_layers)} FP32 layers make a {len(argument)}-byte --layerPrecisions argument "
                    f"(limit {MAX_ARGUMENT_BYTES})"
                )
            command += ["--precisionConstraints=prefer", argument]
    if not tf32:
        command.append("--noTF32")
    if shapes:
        command += shapes_arguments(shapes)
    if timing_cache is not None:
        command.append(f"--timingCacheFile={os.fspath(timing_cache)}")
    command += list(extra_args)
    return command


# --- what the GPU config asks to build ----------------------------------------------------------------------

#: ``config.pbtxt`` parameters the GPU repository writes for TensorRT models and the entrypoint reads. The
#: TensorRT backend ignores parameters it does not know.
PARAM_PRECISION = "engine_build_precision"  # one of PRECISIONS
PARAM_FP32_LAYERS = "engine_build_fp32_layers"  # "auto" (fp32_layer_names) | "none"
PARAM_WORKSPACE_MB = "engine_build_workspace_mb"
PARAM_MIN_SHAPES = "engine_build_min_shapes"  # "input:1x2x2,other:1x2"
PARAM_OPT_SHAPES = "engine_build_opt_shapes"
PARAM_MAX_SHAPES = "engine_build_max_shapes"
ONNX_FILENAME = "model.onnx"
PLAN_FILENAME = "model.plan"
#: Engine precisions: ``FP16`` (FP16 kernels allowed, the ``fp32_layers`` kept in FP32), ``TF32`` (FP32
#: tensors, TF32 tensor-core math allowed: TensorRT's default) and ``FP32`` (``--noTF32``).
PRECISIONS = ("FP16", "TF32", "FP32")


def format_shapes(shapes: Mapping[str, Sequence[int]]) -> str:
    return ",".join(f"{name}:{_dims(dims)}" for name, dims in shapes.items())


def parse_shapes(text: str) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, dims = item.rpartition(":")
        if not name or not dims:
            raise ValueError(f"bad shape spec {item!r}: expected name:AxBxC")
        shapes[name] = tuple(int(d) for d in dims.split("x"))
    return shapes


@dataclass(frozen=True)
class EngineBuild:
    """How one model's engine is built: everything that changes the plan besides the ONNX file and the GPU."""

    precision: str = "FP16"  # one of PRECISIONS
    fp32_layers: str = "auto"  # "auto" | "none"
    workspace_mb: int = DEFAULT_WORKSPACE_MB
    shapes: dict[str, ShapeRange] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    @property
    def fp16(self) -> bool:
        return self.precision == "FP16"

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, str]) -> EngineBuild:
        precision = parameters.get(PARAM_PRECISION, "FP16").upper()
        if precision not in PRECISIONS:
            raise ValueError(f"{PARAM_PRECISION} must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        fp32_layers = parameters.get(PARAM_FP32_LAYERS, "auto").lower()
        if fp32_layers not in ("auto", "none"):
            raise ValueError(f"{PARAM_FP32_LAYERS} must be 'auto' or 'none', got {fp32_layers!r}")
        low, opt, high = (
            parse_shapes(parameters.get(k, ""))
            for k in (PARAM_MIN_SHAPES, PARAM_OPT_SHAPES, PARAM_MAX_SHAPES)
        )
        if not (low.keys() == opt.keys() == high.keys()):
            raise ValueError("engine_build_{min,opt,max}_shapes must name the same inputs")
        return cls(
            precision=precision,
            fp32_layers=fp32_layers,
            workspace_mb=int(parameters.get(PARAM_WORKSPACE_MB, DEFAULT_WORKSPACE_MB)),
            shapes={name: (low[name], opt[name], high[name]) for name in low},
        )

    def to_parameters(self) -> dict[str, str]:
        params = {
            PARAM_PRECISION: self.precision,
            PARAM_FP32_LAYERS: self.fp32_layers,
            PARAM_WORKSPACE_MB: str(self.workspace_mb),
        }
        if self.shapes:
            for i, key in enumerate((PARAM_MIN_SHAPES, PARAM_OPT_SHAPES, PARAM_MAX_SHAPES)):
                params[key] = format_shapes({name: r[i] for name, r in self.shapes.items()})
        return params

    def layers_in_fp32(self, onnx_path: Path) -> list[str]:
        """The layers an FP16 engine keeps in FP32 (:func:`fp32_layer_names`; none for other precisions)."""
        return fp32_layer_names(onnx_path) if (self.fp16 and self.fp32_layers == "auto") else []

    def command(
        self,
        onnx_path: Path,
        plan_path: Path,
        *,
        trtexec: str = "trtexec",
        timing_cache: Path | None = None,
        fp32_layers: Sequence[str] | None = None,
    ) -> list[str]:
        """The build command; ``fp32_layers`` as computed by :meth:`layers_in_fp32` (computed when None)."""
        layers = self.layers_in_fp32(onnx_path) if fp32_layers is None else list(fp32_layers)
        return trtexec_command(
            onnx_path,
            plan_path,
            fp16=self.fp16,
            fp32_layers=layers,
            shapes=self.shapes or None,
            tf32=self.precision != "FP32",
            workspace_mb=self.workspace_mb,
            timing_cache=timing_cache,
            trtexec=trtexec,
        )

    def fingerprint(self) -> str:
        return json.dumps(self.to_parameters(), sort_keys=True)


# --- GPU / TensorRT identification and the engine cache -----------------------------------------------------


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # "8.0"


def parse_nvidia_smi(output: str) -> list[GpuInfo]:
    """``nvidia-smi --query-gpu=name,compute_cap --format=csv,noheader`` -> one GpuInfo per line."""
    gpus = []
    for line in output.splitlines():
        if not line.strip():
            continue
        name, sep, cap = line.rpartition(",")
        cap = cap.strip()
        if not sep or not re.fullmatch(r"\d+\.\d+", cap):
            raise ValueError(f"unexpected nvidia-smi line {line!r} (want 'name, major.minor')")
        gpus.append(GpuInfo(name.strip(), cap))
    return gpus


def parse_tensorrt_version(text: str) -> str | None:
    """TensorRT version from trtexec's banner (``[TensorRT v100500]``) or a plain ``10.5.0`` string."""
    banner = re.search(r"TensorRT v(\d+)", text)
    if banner:
        code = int(banner.group(1))
        # NV_TENSORRT_VERSION is major*10000 + minor*100 + patch since TensorRT 10, major*1000 + ... before.
        major, rest = (code // 10000, code % 10000) if code >= 100000 else (code // 1000, code % 1000)
        return f"{major}.{rest // 100}.{rest % 100}"
    plain = re.search(r"\b(\d+\.\d+\.\d+(?:\.\d+)?)\b", text)
    return plain.group(1) if plain else None


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


#: trtexec options whose values are paths: where files are, not how the engine is built.
PATH_OPTIONS = ("--onnx", "--saveEngine", "--timingCacheFile", "--loadEngine")


def command_fingerprint(command: Sequence[str]) -> str:
    """The build command without its paths (trtexec's own, the ONNX file, the plan, the timing cache): two
    commands with the same fingerprint build the same engine from the same ONNX bytes, wherever the files are.
    Every other argument counts (flags, the FP32 layer list, the shapes), so a change of any of them is a new
    engine."""
    kept = []
    for argument in list(command)[1:]:
        option = argument.split("=", 1)[0]
        kept.append(f"{option}=<path>" if option in PATH_OPTIONS else argument)
    return json.dumps(kept)


def engine_cache_key(
    gpu_name: str,
    compute_capability: str,
    trt_version: str,
    onnx_sha256: str,
    build_fingerprint: str = "",
    command: str = "",
) -> str:
    """Folder name of one cached engine: readable GPU/TensorRT prefix + a digest of everything the plan
    depends on (GPU model, compute capability, TensorRT version, ONNX bytes, build settings, and the trtexec
    command as :func:`command_fingerprint` gives it)."""
    inputs = [gpu_name, compute_capability, trt_version, onnx_sha256, build_fingerprint, command]
    digest = hashlib.sha256(json.dumps(inputs).encode()).hexdigest()
    return f"{_slug(gpu_name)}_sm{compute_capability.replace('.', '')}_trt{trt_version}_{digest[:16]}"


ENGINE_META = "engine.json"


def engine_metadata(
    gpu: GpuInfo,
    trt_version: str,
    onnx_sha256: str,
    build: EngineBuild,
    plan_sha256: str,
    command: Sequence[str],
) -> dict[str, Any]:
    return {
        "gpu_name": gpu.name,
        "compute_capability": gpu.compute_capability,
        "tensorrt_version": trt_version,
        "onnx_sha256": onnx_sha256,
        "build": build.to_parameters(),
        "plan_sha256": plan_sha256,
        "command": list(command),
    }


def cache_entry_state(
    entry: Path,
    gpu: GpuInfo,
    trt_version: str,
    onnx_sha256: str,
    build: EngineBuild,
    command: Sequence[str] | None = None,
) -> str:
    """``"hit"`` (a complete engine for exactly this GPU/TensorRT/ONNX/build and, when given, build
    command), ``"miss"`` (no entry) or ``"corrupt"`` (an entry that must be rebuilt: unreadable metadata,
    other inputs, missing or altered plan)."""
    if not entry.exists():
        return "miss"
    try:
        meta = json.loads((entry / ENGINE_META).read_text())
        expected = (gpu.name, gpu.compute_capability, trt_version, onnx_sha256, build.to_parameters())
        actual = (
            meta["gpu_name"],
            meta["compute_capability"],
            meta["tensorrt_version"],
            meta["onnx_sha256"],
            meta["build"],
        )
        if command is not None:
            expected += (command_fingerprint(command),)
            actual += (command_fingerprint(meta["command"]),)
        if actual != expected:
            return "corrupt"
        plan = entry / PLAN_FILENAME
        if not plan.is_file() or plan.stat().st_size == 0 or sha256_file(plan) != meta["plan_sha256"]:
            return "corrupt"
    except (OSError, ValueError, KeyError, TypeError):
        return "corrupt"
    return "hit"


# --- reading a GPU config without protobuf (the entrypoint's Python has none) -------------------------------

# Only model parameters have a key with a ``string_value`` (warm-up inputs have data types, accelerator
# parameters plain strings).
_STRING_PARAMETER = re.compile(
    r'key:\s*"(?P<key>[^"]+)"\s*,?\s*value\s*:?\s*\{\s*string_value:\s*"(?P<value>[^"]*)"'
)
_GENERATED_BUILD_PARAMETER = re.compile(
    r'parameters \{\n  key: "engine_build_[a-z0-9_]+"\n  value \{\n    string_value: "[^"]*"\n  \}\n\}\n'
)


def config_string_parameters(config_text: str) -> dict[str, str]:
    """``parameters`` with string values of a ``config.pbtxt`` (generated or hand-written list form)."""
    return {m.group("key"): m.group("value") for m in _STRING_PARAMETER.finditer(config_text)}


def is_tensorrt_config(config_text: str) -> bool:
    return bool(
        re.search(r'^\s*(platform:\s*"tensorrt_plan"|backend:\s*"tensorrt")', config_text, re.MULTILINE)
    )


def strip_build_parameters(config_text: str) -> str:
    """The config without the ``engine_build_*`` parameters (as written by ``mobilesamv2.export.gpu``): the
    served config carries only what Triton's TensorRT backend reads."""
    return _GENERATED_BUILD_PARAMETER.sub("", config_text)
