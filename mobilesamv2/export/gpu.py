"""The GPU model repository: the CPU repository with each ``config.pbtxt`` rewritten for NVIDIA's container.

Only what a GPU needs changes (tests/deploy/test_gpu_config.py pins the list):

- ONNX models (``backend: "onnxruntime"``: image encoder, prompt decoder) become TensorRT engines
  (``backend="tensorrt"``, the default: ``platform: "tensorrt_plan"`` plus ``engine_build_*`` parameters that
  the container's entrypoint turns into a ``trtexec`` build on the GPU it runs on, and checks against ONNX
  Runtime before serving) or stay ONNX Runtime models with the TensorRT execution accelerator
  (``backend="onnxruntime-trt"``: LayerNorm FP32 fallback, optimisation profile; ONNX Runtime cannot keep
  LiteMLA in FP32, so prefer ``tensorrt`` for EfficientViT).
  Precision: the image encoder is FP32 with TF32 math (``encoder_precision="tf32"``; FP16 only on request:
  EfficientViT-SAM-L2 was reported to give NaN in FP16, mit-han-lab/efficientvit#184), the decoder FP16 with
  its LayerNorms in FP32 (``decoder_precision``); the entrypoint refuses an engine that disagrees with ONNX
  Runtime FP32. Each model gets the optimisation profile of what the pipeline sends it (TensorRT sizes an
  engine's activation memory for its profile's largest shape): the prompt decoder 1..``max_prompts``
  prompts, the interactive decoder 1..``INTERACTIVE_DECODER_MAX_PROMPTS`` (the pipeline splits above it),
  both of 1..``DECODER_MAX_POINTS`` points (the contract's largest point prompt plus SAM's padding point),
  and every profile is optimised for the common call: a batch of one image for the encoder, one click for
  the interactive decoder.
- ``instance_group`` becomes ``KIND_GPU`` with ``instances_per_gpu`` instances on every visible GPU for the
  ONNX models and the object-discovery Python model (which switches ONNX Runtime to its CUDA provider through
  its ``execution_provider`` parameter); the BLS model stays on CPU, it only orchestrates.
- Batched models get ``preferred_batch_size`` (and ``max_queue_delay_us`` when given); warm-ups are kept, and
  object discovery gets one (the CUDA provider initialises on its first run).
- CPU-only parameters (``max_rows_per_run``, ``sliced_inputs``, ``disabled_optimizers``, ``allow_spinning``,
  ``EXECUTION_ENV_PATH``) are dropped; the BLS
  model sends up to ``max_prompts`` prompts per decoder call.

    python -m mobilesamv2.export.gpu --cpu-repo model_repository --out model_repository_gpu
"""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Sequence
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

import segment_everything_contract as contract

from .tensorrt import DEFAULT_WORKSPACE_MB, EngineBuild, format_shapes

BACKENDS = ("tensorrt", "onnxruntime-trt")
PLAIN_ONNX = "plain.onnx"  # written by the build next to a model.onnx whose formulation is tuned for CPU
DEFAULT_MAX_PROMPTS = 320  # the reference decodes in batches of 320 (and keeps at most 300 boxes)
DEFAULT_OPT_PROMPTS = 64
#: The interactive decoder's opt shape: one click (a point and SAM's padding point).
INTERACTIVE_OPT_PROMPTS = 1
#: The encoder's opt batch: each pipeline request encodes one image; larger batches form only when several
#: pipeline instances encode at the same moment.
ENCODER_OPT_BATCH = 1
#: min / opt (a box is 2 corner points) / max points per decoder prompt. The max is the contract's: its
#: largest point prompt plus the padding point SAM appends (``processing.boxes.points_to_prompts``).
DEFAULT_POINTS_PER_PROMPT = (1, 2, contract.DECODER_MAX_POINTS)
#: Engine precisions (``tensorrt.PRECISIONS``, lower case on the command line).
PRECISIONS = ("tf32", "fp32", "fp16")
#: FP32 storage with TF32 tensor-core math (TensorRT's default for FP32): FP16 EfficientViT-SAM-L2 engines
#: were reported to produce NaN (mit-han-lab/efficientvit#184), and the FP32 layer list of an FP16 engine is
#: matched by ONNX node names, which TensorRT gives only to the first layer it makes of a node.
DEFAULT_ENCODER_PRECISION = "tf32"
#: FP16 with LayerNorm in FP32; the entrypoint checks the engine against ONNX Runtime FP32 before serving it.
DEFAULT_DECODER_PRECISION = "fp16"
#: Precision of ONNX models that are neither the encoder nor the decoder.
DEFAULT_OTHER_PRECISION = "tf32"
#: Where ONNX Runtime's TensorRT provider keeps its engines (``backend="onnxruntime-trt"``); the Helm chart
#: mounts the engine cache volume there.
DEFAULT_ORT_ENGINE_CACHE = "/var/cache/mobilesamv2/engines/onnxruntime"

#: Parameters that only the CPU deployment uses: the Python-based ONNX runner's row slicing and CPU tuning
#: (measured for 2 shared cores), and a local venv.
CPU_ONLY_PARAMETERS = frozenset(
    {"max_rows_per_run", "sliced_inputs", "disabled_optimizers", "allow_spinning", "EXECUTION_ENV_PATH"}
)
#: Parameters of the ONNX Runtime backend, meaningless once a model is a TensorRT plan.
ORT_PARAMETERS = frozenset(
    {
        "intra_op_thread_count",
        "inter_op_thread_count",
        "execution_mode",
        "graph_optimization_level",
        "enable_mem_pattern",
        "enable_cpu_mem_arena",
        "cudnn_conv_algo_search",
        "gpu_mem_limit",
        "arena_extend_strategy",
        "do_copy_in_default_stream",
    }
)
#: Python models that run a network and so move to the GPU.
GPU_PYTHON_MODELS = frozenset({"object_discovery"})
EXECUTION_PROVIDER_PARAMETER = "execution_provider"
#: Present on the BLS model: how many prompts it sends to the decoder per call.
DECODER_PROMPTS_PARAMETER = "decoder_max_prompts_per_call"
#: Present on the BLS model: run encoder and discovery concurrently (GPU) or one after the other (CPU)?
OVERLAP_PARAMETER = "overlap_encoder_and_discovery"
#: Pipeline (BLS) instances on a GPU server, and requests admitted to wait per instance (CPU config: 2, 2).
BLS_INSTANCES = 4
QUEUE_PER_INSTANCE = 2
#: Present on the BLS model: where the mask postprocess runs (host numpy/OpenCV, or device torch).
POSTPROCESS_PARAMETER = "mask_postprocess"
#: Present on the BLS model: does SegEvery store its embedding for later clicks (a copy off the device)?
SEGEVERY_CACHE_PARAMETER = "embedding_cache_segevery"
#: Warm-up shapes for inputs declared with variable dims (object discovery's letterboxed image: at most 1024).
WARMUP_DIMS = {"images": [1024, 1024, 3]}
HEADER = (
    "# Generated by `python -m mobilesamv2.export.gpu` from the CPU model repository's config:\n"
    "# edit that one and regenerate. Differences from the CPU config: see mobilesamv2/export/gpu.py.\n"
)


def _is_onnx_model(config: mc.ModelConfig) -> bool:
    return config.backend == "onnxruntime" or config.platform == "onnxruntime_onnx"


def _set_parameter(config: mc.ModelConfig, key: str, value: str) -> None:
    config.parameters[key].string_value = value


def _drop_parameters(config: mc.ModelConfig, keys: frozenset[str]) -> None:
    for key in [k for k in config.parameters if k in keys]:
        del config.parameters[key]


def _gpu_instances(config: mc.ModelConfig, count: int, gpus: Sequence[int] | None) -> None:
    del config.instance_group[:]
    group = config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_GPU, count=count)
    if gpus:
        group.gpus.extend(gpus)


def default_preferred_batch_sizes(max_batch_size: int) -> list[int]:
    """Powers of two from 2 up to ``max_batch_size``, and ``max_batch_size`` itself."""
    sizes = [b for b in (2, 4, 8, 16, 32, 64, 128) if b < max_batch_size]
    return [*sizes, max_batch_size] if max_batch_size > 1 else []


def profile_shapes(
    config: mc.ModelConfig,
    *,
    max_prompts: int,
    opt_prompts: int,
    points_per_prompt: Sequence[int],
    opt_batch: int | None = None,
) -> dict[str, tuple[list[int], list[int], list[int]]]:
    """The TensorRT optimisation profile ``{input: (min, opt, max)}`` over full tensor shapes.

    Batched models (``max_batch_size`` > 0) get a leading batch axis 1..max_batch_size. In unbatched models
    (the decoder), a variable axis 0 is the prompt axis (1..``max_prompts``) and a variable axis 1 the points
    per prompt; any other variable axis has no known range and raises ``ValueError``.
    """
    min_points, opt_points, max_points = points_per_prompt
    if not (1 <= opt_prompts <= max_prompts and 1 <= min_points <= opt_points <= max_points):
        raise ValueError("need 1 <= opt_prompts <= max_prompts and 1 <= min <= opt <= max points per prompt")
    shapes = {}
    for tensor in config.input:
        ranges = []  # (min, opt, max) per axis
        if config.max_batch_size > 0:
            ranges.append((1, opt_batch or config.max_batch_size, config.max_batch_size))
        for axis, dim in enumerate(tensor.dims):
            if dim > 0:
                ranges.append((dim, dim, dim))
            elif config.max_batch_size == 0 and axis == 0:
                ranges.append((1, opt_prompts, max_prompts))
            elif config.max_batch_size == 0 and axis == 1:
                ranges.append((min_points, opt_points, max_points))
            else:
                raise ValueError(f"{config.name}: no profile range for variable axis {axis} of {tensor.name}")
        low, opt, high = ([r[i] for r in ranges] for i in range(3))
        shapes[tensor.name] = (low, opt, high)
    return shapes


def _warmup_for(config: mc.ModelConfig) -> mc.ModelWarmup | None:
    warmup = mc.ModelWarmup(name="zeros", batch_size=1 if config.max_batch_size > 0 else 0)
    for tensor in config.input:
        if tensor.optional:
            continue
        dims = list(tensor.dims)
        if any(d < 0 for d in dims):
            if tensor.name not in WARMUP_DIMS:
                return None
            dims = WARMUP_DIMS[tensor.name]
        warmup.inputs[tensor.name].CopyFrom(
            mc.ModelWarmup.Input(data_type=tensor.data_type, dims=dims, zero_data=True)
        )
    return warmup


def model_precision(model: str, encoder_precision: str, decoder_precision: str) -> str:
    """The engine precision of one model (lower case, one of :data:`PRECISIONS`)."""
    precision = {contract.ENCODER_MODEL: encoder_precision, contract.DECODER_MODEL: decoder_precision}.get(
        model, DEFAULT_OTHER_PRECISION
    )
    if precision not in PRECISIONS:
        raise ValueError(f"{model}: precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def gpu_model_config(
    cpu_config_text: str,
    *,
    instances_per_gpu: int = 1,
    gpus: Sequence[int] | None = None,
    max_prompts: int = DEFAULT_MAX_PROMPTS,
    opt_prompts: int = DEFAULT_OPT_PROMPTS,
    points_per_prompt: Sequence[int] = DEFAULT_POINTS_PER_PROMPT,
    backend: str = "tensorrt",
    encoder_precision: str = DEFAULT_ENCODER_PRECISION,
    decoder_precision: str = DEFAULT_DECODER_PRECISION,
    preferred_batch_sizes: Sequence[int] | None = None,
    max_queue_delay_us: int | None = None,
    workspace_mb: int = DEFAULT_WORKSPACE_MB,
    ort_engine_cache: str = DEFAULT_ORT_ENGINE_CACHE,
) -> str:
    """The GPU ``config.pbtxt`` for one CPU ``config.pbtxt`` (see the module docstring for what changes).

    ``instances_per_gpu`` instances run on each GPU in ``gpus`` (default: every GPU the server sees).
    ``preferred_batch_sizes`` defaults to powers of two up to ``max_batch_size``; ``max_queue_delay_us``
    ``None`` keeps the CPU config's delay. ``encoder_precision`` / ``decoder_precision``: see
    :data:`PRECISIONS` and the defaults' comments.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if instances_per_gpu < 1:
        raise ValueError("instances_per_gpu must be >= 1")
    config = text_format.Parse(cpu_config_text, mc.ModelConfig())

    if _is_onnx_model(config):
        precision = model_precision(config.name, encoder_precision, decoder_precision)
        fp16 = precision == "fp16"
        _drop_parameters(config, CPU_ONLY_PARAMETERS)
        _gpu_instances(config, instances_per_gpu, gpus)
        preferred = list(preferred_batch_sizes or default_preferred_batch_sizes(config.max_batch_size))
        model_max, model_opt = max_prompts, opt_prompts
        if config.name == contract.INTERACTIVE_DECODER_MODEL:
            model_max = min(max_prompts, contract.INTERACTIVE_DECODER_MAX_PROMPTS)
            model_opt = INTERACTIVE_OPT_PROMPTS
        shapes = profile_shapes(
            config,
            max_prompts=model_max,
            opt_prompts=min(model_opt, model_max),
            points_per_prompt=points_per_prompt,
            opt_batch=ENCODER_OPT_BATCH,
        )
        if backend == "tensorrt":
            _drop_parameters(config, ORT_PARAMETERS)
            config.backend, config.platform = "tensorrt", "tensorrt_plan"
            build = EngineBuild(
                precision=precision.upper(),
                fp32_layers="auto" if fp16 else "none",
                workspace_mb=workspace_mb,
                shapes={k: (tuple(a), tuple(b), tuple(c)) for k, (a, b, c) in shapes.items()},
            )
            for key, value in build.to_parameters().items():
                _set_parameter(config, key, value)
        else:
            accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(
                name="tensorrt"
            )
            trt = {
                "precision_mode": "FP16" if fp16 else "FP32",
                "trt_layer_norm_fp32_fallback": "1",
                "max_workspace_size_bytes": str(workspace_mb * 2**20),
                "trt_engine_cache_enable": "1",
                "trt_engine_cache_path": ort_engine_cache,
                "trt_timing_cache_enable": "1",
                "trt_timing_cache_path": ort_engine_cache,
            }
            for i, key in enumerate(
                ("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes")
            ):
                trt[key] = format_shapes({name: r[i] for name, r in shapes.items()})
            accelerator.parameters.update(trt)
        if config.max_batch_size > 0:
            batching = config.dynamic_batching
            del batching.preferred_batch_size[:]
            batching.preferred_batch_size.extend(preferred)
            if max_queue_delay_us is not None:
                batching.max_queue_delay_microseconds = max_queue_delay_us
    elif config.backend == "python" and config.name in GPU_PYTHON_MODELS:
        _drop_parameters(config, CPU_ONLY_PARAMETERS)
        _gpu_instances(config, instances_per_gpu, gpus)
        _set_parameter(config, EXECUTION_PROVIDER_PARAMETER, "cuda")
        if not config.model_warmup:
            warmup = _warmup_for(config)
            if warmup is not None:
                config.model_warmup.append(warmup)
    else:
        _drop_parameters(config, CPU_ONLY_PARAMETERS)
        if DECODER_PROMPTS_PARAMETER in config.parameters:
            _set_parameter(config, DECODER_PROMPTS_PARAMETER, str(max_prompts))
            # more pipelines in flight keep a GPU busy while others post-process; the admission queue follows
            for group in config.instance_group:
                group.count = BLS_INSTANCES
            if config.dynamic_batching.HasField("default_queue_policy"):
                policy = config.dynamic_batching.default_queue_policy
                policy.max_queue_size = QUEUE_PER_INSTANCE * BLS_INSTANCES
        if OVERLAP_PARAMETER in config.parameters:
            # encoder and discovery each use a fraction of a GPU: at once (on CPU each takes all cores)
            _set_parameter(config, OVERLAP_PARAMETER, "true")
        if POSTPROCESS_PARAMETER in config.parameters:
            # resizes, threshold and RLE runs where the logits are: kilobytes, not 79 MB, reach the host
            _set_parameter(config, POSTPROCESS_PARAMETER, "device")
        if SEGEVERY_CACHE_PARAMETER in config.parameters:
            # no 4 MiB device-to-host copy and /dev/shm file per SegEvery: a later click re-encodes in ms
            _set_parameter(config, SEGEVERY_CACHE_PARAMETER, "false")
    return HEADER + text_format.MessageToString(config)


def write_gpu_repository(cpu_repo: Path, out: Path, **settings) -> list[Path]:
    """Copy every model of ``cpu_repo`` (configs, Python files, ONNX files) and its top-level files to
    ``out``, with GPU configs.

    Each ``out/<model>`` folder is replaced whole; other folders in ``out`` are left alone. TensorRT models
    keep their ``1/model.onnx``: the container's entrypoint builds ``model.plan`` from it on the GPU it runs
    on. ``settings`` are :func:`gpu_model_config`'s keyword arguments. Returns the written config paths.
    """
    cpu_repo, out = Path(cpu_repo), Path(out)
    if cpu_repo.resolve() == out.resolve():
        raise ValueError("the GPU repository must be written to another folder than the CPU one")
    models = sorted(p.parent for p in cpu_repo.glob("*/config.pbtxt"))
    if not models:
        raise FileNotFoundError(f"{cpu_repo}: no <model>/config.pbtxt found")
    out.mkdir(parents=True, exist_ok=True)
    for path in cpu_repo.iterdir():  # BUILD_INFO.json & co.; Triton only looks at folders
        if path.is_file():
            shutil.copy2(path, out / path.name)
    written = []
    for model in models:
        target = out / model.name
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(model, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.plan"))
        plain = target / "1" / PLAIN_ONNX
        if plain.exists():  # the decoder's plain formulation is the TensorRT source; same inputs and outputs
            plain.replace(target / "1" / "model.onnx")
        config_path = target / "config.pbtxt"
        config_path.write_text(gpu_model_config((model / "config.pbtxt").read_text(), **settings))
        written.append(config_path)
    return written


def _int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the GPU model repository from the CPU one.")
    parser.add_argument("--cpu-repo", type=Path, default=Path("model_repository"))
    parser.add_argument("--out", type=Path, default=Path("model_repository_gpu"))
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="tensorrt",
        help="TensorRT plans built at container start (default), or ONNX Runtime + TensorRT EP",
    )
    parser.add_argument("--instances-per-gpu", type=int, default=1)
    parser.add_argument("--gpus", type=_int_list, default=None, help="GPU ids, e.g. 0,1 (default: all)")
    parser.add_argument(
        "--max-prompts",
        type=int,
        default=DEFAULT_MAX_PROMPTS,
        help="decoder profile maximum and prompts per decoder call",
    )
    parser.add_argument("--opt-prompts", type=int, default=DEFAULT_OPT_PROMPTS)
    parser.add_argument("--preferred-batch-sizes", type=_int_list, default=None, help="e.g. 2,4")
    parser.add_argument("--max-queue-delay-us", type=int, default=None)
    parser.add_argument(
        "--encoder-precision",
        choices=PRECISIONS,
        default=DEFAULT_ENCODER_PRECISION,
        help="image encoder engine: tf32 (FP32 tensors, TF32 math; default), fp32 (no TF32) or fp16 "
        "(opt-in: EfficientViT-SAM-L2 was reported to give NaN in FP16; the entrypoint refuses an engine "
        "that disagrees with ONNX Runtime)",
    )
    parser.add_argument(
        "--decoder-precision",
        choices=PRECISIONS,
        default=DEFAULT_DECODER_PRECISION,
        help="prompt decoder engine (default fp16, LayerNorm in FP32; checked at container start)",
    )
    parser.add_argument(
        "--fp32",
        action="store_true",
        help="FP32 engines (TF32 math) for every model: overrides the two above",
    )
    parser.add_argument("--workspace-mb", type=int, default=DEFAULT_WORKSPACE_MB)
    args = parser.parse_args(argv)
    written = write_gpu_repository(
        args.cpu_repo,
        args.out,
        backend=args.backend,
        instances_per_gpu=args.instances_per_gpu,
        gpus=args.gpus,
        max_prompts=args.max_prompts,
        opt_prompts=args.opt_prompts,
        preferred_batch_sizes=args.preferred_batch_sizes,
        max_queue_delay_us=args.max_queue_delay_us,
        encoder_precision="tf32" if args.fp32 else args.encoder_precision,
        decoder_precision="tf32" if args.fp32 else args.decoder_precision,
        workspace_mb=args.workspace_mb,
    )
    for path in written:
        print(path)


if __name__ == "__main__":
    main()
