"""Container entrypoint: build the TensorRT engines for this container's GPU, then run tritonserver.

TensorRT plans are specific to a GPU model (compute capability) and a TensorRT version, so they are built at
start from the ONNX files of the GPU model repository (``mobilesamv2.export.gpu``) into a cache volume, keyed
by GPU name, compute capability, TensorRT version, the ONNX file's SHA-256 and the build settings of the
model's config. A complete cached engine is reused; a missing, foreign or damaged one (its plan's checksum
is in ``engine.json``) is rebuilt. Builds of one GPU type hold a lock in the cache, so pods that share the
volume build each engine once.

Every engine is then run once on a fixed probe input of its model (``trtexec --loadEngine --loadInputs
--exportOutput``) and compared with ONNX Runtime FP32 on the ONNX file it was built from
(``mobilesamv2.export.verify``): an engine whose outputs are NaN, or differ by more than the tolerance of
its precision (``--verify-max-diff-fp32`` / ``--verify-max-diff-fp16``, scaled by the output's magnitude), or
whose masks (logits > 0) differ from ONNX Runtime's in more than ``--verify-max-mask-disagreement`` of their
pixels or overlap them by less than ``--verify-min-mask-iou`` (masks of at least ``--verify-min-mask-area``),
is not served: the entrypoint prints the numbers and exits with status 3. The numbers of the last check are
kept in the entry's ``engine.json`` (``verification``); a reused engine whose record shows a pass on the same
plan, probe and tolerances is not checked again (a restarted pod starts in seconds).

The server gets CUDA and pinned memory pools sized from the pipeline's configuration
(:mod:`mobilesamv2.runner.memory`), and a warning when ``/dev/shm`` is smaller than that configuration may
fill.

Triton then serves a runtime repository (``--runtime-repository``, a writable scratch folder) that links the
models and top-level files (``BUILD_INFO.json``) of ``--model-repository`` and the cached plans.

tritonserver runs as a child of this process (PID 1 in the container), in a process group of its own that
its Python backend stubs inherit, with the server process and the supervision loop of ``mobilesamv2-serve``
(:mod:`mobilesamv2.runner.server`, :func:`mobilesamv2.runner.supervisor.serve`). The entrypoint forwards
SIGTERM/SIGINT/SIGHUP/SIGQUIT to it, reaps orphaned processes (as PID 1 must), and when tritonserver exits
kills what is left of its group (stubs outlive their server otherwise) and exits with tritonserver's code. It
also counts the stub processes of every Python model (every ``--stub-watch-interval`` seconds once the server
is ready): Triton neither restarts a stub that died nor reports it, so when one is gone or stopped the
entrypoint stops tritonserver and exits with status 4, for the orchestrator to restart the container. Hangs
that leave the processes in place are the liveness probe's (``python3 -m mobilesamv2.runner.probe``: real
inferences with a deadline).

    python3 -m mobilesamv2.runner.entrypoint [--dry-run | --build-only] [its options] [tritonserver options]

Options it does not know go to tritonserver unchanged. ``--dry-run`` prints the decisions and the commands as
JSON and runs nothing but the GPU / TensorRT queries. Runs on the container's Python (3.10).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mobilesamv2.export.tensorrt import (
    ENGINE_META,
    ONNX_FILENAME,
    PLAN_FILENAME,
    EngineBuild,
    GpuInfo,
    cache_entry_state,
    command_fingerprint,
    config_string_parameters,
    engine_cache_key,
    engine_metadata,
    is_tensorrt_config,
    parse_nvidia_smi,
    parse_tensorrt_version,
    sha256_file,
    strip_build_parameters,
)
from mobilesamv2.export.verify import (
    OnnxRuntimeRunner,
    TensorRunner,
    Tolerances,
    TrtexecRunner,
    Verification,
    probe_digest,
    probe_for,
    verify_engine,
)
from mobilesamv2.runner.hardening import HardeningError, Security, add_security_arguments, has_option, redact
from mobilesamv2.runner.memory import PipelineMemory, shm_size, shm_warning
from mobilesamv2.runner.server import TritonProcess
from mobilesamv2.runner.supervisor import Supervisor, serve

DEFAULT_MODEL_REPOSITORY = "/opt/mobilesamv2/model_repository"
DEFAULT_ENGINE_CACHE = "/var/cache/mobilesamv2/engines"
DEFAULT_RUNTIME_REPOSITORY = "/tmp/mobilesamv2/model_repository"
TRTEXEC_CANDIDATES = ("trtexec", "/usr/src/tensorrt/bin/trtexec")
NVIDIA_SMI_QUERY = ["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"]
RUNTIME_MARKER = ".mobilesamv2-runtime-repository"
PIPELINE_MODEL = "segment_everything"  # its configuration sizes the server's memory pools
#: tritonserver options the entrypoint sets unless the caller passes them.
DEFAULT_SERVER_ARGS = (
    "--http-port=8000",
    "--grpc-port=8001",
    "--metrics-port=8002",
    "--allow-metrics=true",
    "--allow-gpu-metrics=true",
    "--exit-timeout-secs=30",
)

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


class EntrypointError(RuntimeError):
    """A condition the container cannot start under; the message says what to change."""


class EngineVerificationError(EntrypointError):
    """An engine disagrees with ONNX Runtime on its probe input (or could not be run): it is not served."""


EXIT_ERROR = 2
EXIT_VERIFICATION_FAILED = 3
EXIT_STUB_LOST = 4
DEFAULT_STUB_WATCH_INTERVAL = 5.0
#: The engine check's tolerances as options: ``--verify-<option>`` / ``$ENGINE_VERIFY_<OPTION>`` -> field.
TOLERANCE_OPTIONS = (
    ("max-diff-fp32", "max_scaled_diff_fp32", "largest difference (scaled by the output's magnitude) of an "
     "FP32/TF32 engine from ONNX Runtime"),
    ("max-diff-fp16", "max_scaled_diff_fp16", "the same for FP16 engines"),
    ("min-mask-iou", "min_mask_iou", "lowest IoU of an engine's masks (logits > 0) with ONNX Runtime's, per "
     "mask of at least --verify-min-mask-area"),
    ("max-mask-disagreement", "max_mask_disagreement", "largest fraction of all mask pixels (logits > 0) "
     "where an engine may differ from ONNX Runtime"),
    ("min-mask-area", "min_mask_area", "masks covering less of their frame are judged by the fraction of "
     "differing pixels only"),
)  # fmt: skip


def run_captured(command: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(command), capture_output=True, text=True, check=False)


def run_streamed(command: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """Run with output to the container log (engine builds take minutes: show their progress)."""
    return subprocess.run(list(command), check=False, text=True)


# --- what runs here: GPU, TensorRT, trtexec -----------------------------------------------------------------


def query_gpus(run: Runner = run_captured, visible_devices: str | None = None) -> list[GpuInfo]:
    command = list(NVIDIA_SMI_QUERY)
    if visible_devices:  # nvidia-smi ignores CUDA_VISIBLE_DEVICES: ask for those GPUs only
        command.append(f"--id={visible_devices}")
    try:
        result = run(command)
    except FileNotFoundError as exc:
        raise EntrypointError(
            "nvidia-smi not found: run the container with a GPU (docker run --gpus=1, "
            "or a nvidia.com/gpu resource in Kubernetes)"
        ) from exc
    if result.returncode != 0:
        raise EntrypointError(
            f"nvidia-smi failed ({result.returncode}): {(result.stderr or result.stdout).strip()}"
        )
    try:
        gpus = parse_nvidia_smi(result.stdout)
    except ValueError as exc:
        raise EntrypointError(f"cannot read nvidia-smi's answer: {exc}") from exc
    if not gpus:
        raise EntrypointError("nvidia-smi lists no GPU: this image needs one")
    return gpus


def select_gpu(gpus: Sequence[GpuInfo]) -> GpuInfo:
    """The one GPU type of this container: Triton loads the same plan on every GPU it uses, so all must
    match."""
    kinds = sorted({(g.name, g.compute_capability) for g in gpus})
    if len(kinds) != 1:
        listed = "; ".join(f"{n} (sm {c})" for n, c in kinds)
        raise EntrypointError(
            f"GPUs of different types in one container ({listed}): TensorRT engines are per GPU "
            "type. Give each pod one type (node selector) or restrict CUDA_VISIBLE_DEVICES."
        )
    return gpus[0]


def find_trtexec(
    which: Callable[[str], str | None] = shutil.which, candidates: Sequence[str] = TRTEXEC_CANDIDATES
) -> str:
    for candidate in candidates:
        found = which(candidate)
        if found:
            return found
    raise EntrypointError(
        f"trtexec not found (looked for {', '.join(candidates)}): use NVIDIA's tritonserver image"
    )


def query_tensorrt_version(
    trtexec: str, run: Runner = run_captured, environ: dict[str, str] | None = None
) -> str:
    """TensorRT version of the library that builds (and that Triton's TensorRT backend loads)."""
    attempts = [[trtexec, "--help"], [sys.executable, "-c", "import tensorrt; print(tensorrt.__version__)"]]
    for command in attempts:
        try:
            result = run(command)
        except OSError:
            continue
        version = parse_tensorrt_version(f"{result.stdout}\n{result.stderr}")
        if version:
            return version
    environ = os.environ if environ is None else environ
    for variable in ("TRT_VERSION", "TENSORRT_VERSION"):
        version = parse_tensorrt_version(environ.get(variable, ""))
        if version:
            return version
    raise EntrypointError("cannot tell the TensorRT version (trtexec banner, python tensorrt, $TRT_VERSION)")


# --- engine decisions ---------------------------------------------------------------------------------------


@dataclass
class EngineJob:
    """One TensorRT model version: where its ONNX is, which cache entry fits, and what to do about it."""

    model: str
    version: str
    onnx: Path
    onnx_sha256: str  # of the ONNX file and its external-data files
    build: EngineBuild
    key: str
    entry: Path
    state: str  # "hit" | "miss" | "corrupt"
    command: list[str] = field(default_factory=list)

    @property
    def plan(self) -> Path:
        return self.entry / PLAN_FILENAME

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "version": self.version,
            "onnx": str(self.onnx),
            "key": self.key,
            "entry": str(self.entry),
            "state": self.state,
            "action": "reuse" if self.state == "hit" else "build",
            "command": self.command if self.state != "hit" else [],
        }


def _version_dirs(model_dir: Path) -> list[Path]:
    return sorted(
        (p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)
    )


def tensorrt_models(repository: Path) -> Iterator[tuple[Path, str]]:
    """``(model_dir, config_text)`` of the TensorRT models that ship an ONNX file to build from."""
    for config_path in sorted(repository.glob("*/config.pbtxt")):
        text = config_path.read_text()
        model_dir = config_path.parent
        if is_tensorrt_config(text) and any((v / ONNX_FILENAME).is_file() for v in _version_dirs(model_dir)):
            yield model_dir, text


def onnx_digest(version_dir: Path) -> str:
    """SHA-256 over the version folder's files except engines: ``model.onnx`` and its external data (a large
    model's weights live beside the graph, which alone may not change when they do)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in version_dir.iterdir() if p.is_file() and p.suffix != ".plan"):
        digest.update(f"{path.name}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def timing_cache_path(cache_dir: Path, gpu: GpuInfo, trt_version: str) -> Path:
    key = engine_cache_key(gpu.name, gpu.compute_capability, trt_version, "timing-cache")
    return cache_dir / "timing" / f"{key}.cache"


def plan_engines(
    repository: Path, cache_dir: Path, gpu: GpuInfo, trt_version: str, trtexec: str
) -> list[EngineJob]:
    """Per TensorRT model version: is its cached engine reusable? Build commands for the others."""
    jobs = []
    timing_cache = timing_cache_path(cache_dir, gpu, trt_version)
    for model_dir, text in tensorrt_models(repository):
        try:
            build = EngineBuild.from_parameters(config_string_parameters(text))
        except ValueError as exc:
            config = model_dir / "config.pbtxt"
            raise EntrypointError(f"{config}: bad engine build parameters: {exc}") from exc
        for version_dir in _version_dirs(model_dir):
            onnx_path = version_dir / ONNX_FILENAME
            if not onnx_path.is_file():
                continue
            try:
                layers = build.layers_in_fp32(onnx_path)
                # the command without its paths is part of the key: other flags or another FP32 layer list
                # (a new version of this package) build another engine, never reuse the old one
                fingerprint = command_fingerprint(
                    build.command(
                        onnx_path,
                        Path(PLAN_FILENAME),
                        trtexec=trtexec,
                        timing_cache=timing_cache,
                        fp32_layers=layers,
                    )
                )
            except ValueError as exc:  # a layer name trtexec cannot take, an unnamed node, a bad profile
                raise EntrypointError(
                    f"cannot make the engine build command of {model_dir.name}/{version_dir.name}: {exc}"
                ) from exc
            onnx_sha = onnx_digest(version_dir)
            key = engine_cache_key(
                gpu.name, gpu.compute_capability, trt_version, onnx_sha, build.fingerprint(), fingerprint
            )
            entry = cache_dir / model_dir.name / key
            plan = entry / PLAN_FILENAME
            command = build.command(
                onnx_path, plan, trtexec=trtexec, timing_cache=timing_cache, fp32_layers=layers
            )
            state = cache_entry_state(entry, gpu, trt_version, onnx_sha, build, command)
            job = EngineJob(model_dir.name, version_dir.name, onnx_path, onnx_sha, build, key, entry, state)
            job.command = command
            jobs.append(job)
    return jobs


@contextlib.contextmanager
def cache_lock(cache_dir: Path, name: str) -> Iterator[None]:
    """An exclusive lock shared by every pod that mounts the same cache (flock on the volume)."""
    import fcntl

    lock_dir = cache_dir / ".locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / f"{name}.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError as exc:  # e.g. ENOLCK on an NFS mount without lock support
            print(
                f"[entrypoint] warning: no lock on {lock_dir} ({exc}); pods may build the same engine twice",
                flush=True,
            )
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_engine(job: EngineJob, gpu: GpuInfo, trt_version: str, run: Runner = run_streamed) -> None:
    """Build into a scratch folder beside the entry, then rename it into place: a killed build leaves no entry
    that looks complete."""
    scratch = job.entry.parent / f".tmp-{job.key}-{socket.gethostname()}-{os.getpid()}"
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    (job.entry.parent.parent / "timing").mkdir(parents=True, exist_ok=True)
    command = [arg.replace(str(job.plan), str(scratch / PLAN_FILENAME)) for arg in job.command]
    started = time.monotonic()
    print(
        f"[entrypoint] building {job.model}/{job.version} for {gpu.name} (sm {gpu.compute_capability}, "
        f"TensorRT {trt_version}):\n  {' '.join(command)}",
        flush=True,
    )
    try:
        result = run(command)
        plan = scratch / PLAN_FILENAME
        if result.returncode != 0 or not plan.is_file() or plan.stat().st_size == 0:
            raise EntrypointError(
                f"engine build of {job.model}/{job.version} failed (exit {result.returncode}); "
                "the trtexec log above says why"
            )
        meta = engine_metadata(gpu, trt_version, job.onnx_sha256, job.build, sha256_file(plan), job.command)
        (scratch / ENGINE_META).write_text(json.dumps(meta, indent=2))
        if job.entry.exists():
            shutil.rmtree(job.entry)  # the corrupt entry this build replaces
        os.replace(scratch, job.entry)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)
    print(f"[entrypoint] built {job.entry} in {time.monotonic() - started:.0f} s", flush=True)


def ensure_engines(
    jobs: list[EngineJob], cache_dir: Path, gpu: GpuInfo, trt_version: str, run: Runner = run_streamed
) -> None:
    """Build what is missing; another pod may have built it while this one waited for the lock."""
    if all(job.state == "hit" for job in jobs):
        return
    lock_name = engine_cache_key(gpu.name, gpu.compute_capability, trt_version, "lock")
    with cache_lock(cache_dir, lock_name):
        for job in jobs:
            if job.state != "hit":
                job.state = cache_entry_state(
                    job.entry, gpu, trt_version, job.onnx_sha256, job.build, job.command
                )
            if job.state == "hit":
                print(f"[entrypoint] reusing {job.entry}", flush=True)
                continue
            build_engine(job, gpu, trt_version, run)
            job.state = "hit"


# --- verification: every engine against ONNX Runtime FP32 before serving -----------------------------------


def record_verification(entry: Path, verification: Verification) -> None:
    """Keep the numbers in the entry's ``engine.json`` (replaced atomically: other pods read it), with the
    checksum of the plan they are about."""
    meta_path = entry / ENGINE_META
    try:
        meta = json.loads(meta_path.read_text())
        meta["verification"] = {
            **verification.to_json(),
            "plan_sha256": meta.get("plan_sha256"),
            "verified_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "host": socket.gethostname(),
        }
        handle, scratch = tempfile.mkstemp(prefix=".engine-", suffix=".json", dir=entry)
        with os.fdopen(handle, "w") as out:
            json.dump(meta, out, indent=2)
        os.replace(scratch, meta_path)
    except (OSError, ValueError) as exc:
        print(f"[entrypoint] warning: could not record the verification in {meta_path}: {exc}", flush=True)


def earlier_pass(job: EngineJob, tolerances: Tolerances) -> dict | None:
    """The entry's recorded verification if it passed on this very plan (the checksum ``cache_entry_state``
    just checked), with these tolerances and the probe this version of the check would run; else None."""
    try:
        meta = json.loads((job.entry / ENGINE_META).read_text())
        record = meta["verification"]
        if not (
            record["passed"] is True
            and record["plan_sha256"] == meta["plan_sha256"]
            and record["tolerances"] == tolerances.to_json()
        ):
            return None
        cases, _ = probe_for(job.onnx, job.build.shapes)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record if record.get("probe") == probe_digest(cases) else None


def verify_engines(
    jobs: Sequence[EngineJob],
    engine_runner: TensorRunner,
    reference_runner: TensorRunner,
    tolerances: Tolerances,
) -> list[Verification]:
    """Check every engine without a recorded pass (:func:`earlier_pass`); raise
    :class:`EngineVerificationError` naming each one that fails, with its numbers and tolerances, after all
    were checked. Returns the checks that ran."""
    results, failed = [], []
    for job in jobs:
        name = f"{job.model}/{job.version}"
        record = earlier_pass(job, tolerances)
        if record is not None:
            print(
                f"[entrypoint] {name}: checked against ONNX Runtime on {record.get('verified_at', '?')} "
                f"(this plan, probe and tolerances): ok, not run again",
                flush=True,
            )
            continue
        started = time.monotonic()
        try:
            verification = verify_engine(
                name,
                job.onnx,
                job.plan,
                job.build.precision,
                job.build.shapes,
                engine_runner,
                reference_runner,
                tolerances,
            )
        except Exception as exc:  # ONNX Runtime or onnx failing on the model: it cannot be served
            raise EntrypointError(f"cannot check the engine of {name} against ONNX Runtime: {exc}") from exc
        record_verification(job.entry, verification)
        print(f"[entrypoint] {verification.summary()} ({time.monotonic() - started:.0f} s)", flush=True)
        results.append(verification)
        if not verification.passed:
            failed.append(verification)
    if failed:
        lines = []
        for verification in failed:
            lines.append(f"engine {verification.model} ({verification.precision}) refused:")
            lines += [f"    {line}" for line in verification.failures()]
        raise EngineVerificationError(
            "\n".join(lines) + "\nAn engine that disagrees with ONNX Runtime FP32 on the probe input is not "
            "served. Build it in a wider precision (python -m mobilesamv2.export.gpu --encoder-precision / "
            "--decoder-precision tf32 or fp32) or, if the difference is acceptable, raise the tolerance "
            "(--verify-max-diff-fp32, --verify-max-diff-fp16, --verify-max-mask-disagreement, "
            "--verify-min-mask-iou). Numbers: engine.json in the engine cache entry."
        )
    return results


# --- the repository Triton serves, and the server command ---------------------------------------------------


def assemble_runtime_repository(source: Path, runtime: Path, jobs: Sequence[EngineJob]) -> Path:
    """``runtime/<model>`` links ``source/<model>``; TensorRT models get their config (without the build
    parameters) and ``<version>/model.plan`` linked to the cached engine."""
    source, runtime = source.resolve(), runtime.resolve()
    if runtime == source or source in runtime.parents:
        raise EntrypointError("--runtime-repository must be outside --model-repository")
    if runtime.exists() and any(runtime.iterdir()):
        if not (runtime / RUNTIME_MARKER).exists():
            raise EntrypointError(
                f"{runtime} is not empty and was not made by this entrypoint: refusing to clear it"
            )
        shutil.rmtree(runtime)
    runtime.mkdir(parents=True, exist_ok=True)
    (runtime / RUNTIME_MARKER).write_text(f"assembled from {source}\n")
    for path in sorted(source.iterdir()):
        # BUILD_INFO.json & co.: the pipeline reads the build's fingerprint (its embedding cache) and whether
        # the weights are random next to its model folder
        if path.is_file() and not path.name.startswith("."):
            (runtime / path.name).symlink_to(path)
    by_model: dict[str, list[EngineJob]] = {}
    for job in jobs:
        by_model.setdefault(job.model, []).append(job)
    for config_path in sorted(source.glob("*/config.pbtxt")):
        model_dir = config_path.parent
        target = runtime / model_dir.name
        if model_dir.name not in by_model:
            target.symlink_to(model_dir, target_is_directory=True)
            continue
        target.mkdir()
        (target / "config.pbtxt").write_text(strip_build_parameters(config_path.read_text()))
        for job in by_model[model_dir.name]:
            (target / job.version).mkdir()
            (target / job.version / PLAN_FILENAME).symlink_to(job.plan)
    return runtime


def tritonserver_command(
    runtime: Path,
    server_args: Sequence[str],
    tritonserver: str = "tritonserver",
    defaults: Sequence[str] = DEFAULT_SERVER_ARGS,
) -> list[str]:
    """The server command: ``defaults`` (``--option=value``) except those ``server_args`` sets itself."""
    if has_option(server_args, "--model-repository") or has_option(server_args, "--model-store"):
        raise EntrypointError(
            "pass the repository as --model-repository to the entrypoint (before the server "
            "options): it serves a runtime copy with the built engines"
        )
    kept = [d for d in defaults if not has_option(server_args, d.split("=")[0])]
    return [tritonserver, f"--model-repository={runtime}", *kept, *server_args]


def pipeline_memory(repository: Path) -> PipelineMemory:
    """The memory the repository's pipeline configuration asks for (defaults without a pipeline model)."""
    config = repository / PIPELINE_MODEL / "config.pbtxt"
    try:
        return PipelineMemory.from_config(config.read_text()) if config.is_file() else PipelineMemory()
    except ValueError as exc:
        raise EntrypointError(f"{config}: {exc}") from exc


# --- main ---------------------------------------------------------------------------------------------------


_FALSE = ("0", "false", "no", "off")


def parse_args(
    argv: Sequence[str] | None, environ: Mapping[str, str] | None = None
) -> tuple[argparse.Namespace, list[str]]:
    env = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument(
        "--model-repository", type=Path, default=Path(env.get("MODEL_REPOSITORY", DEFAULT_MODEL_REPOSITORY))
    )
    parser.add_argument(
        "--engine-cache", type=Path, default=Path(env.get("ENGINE_CACHE_DIR", DEFAULT_ENGINE_CACHE))
    )
    parser.add_argument(
        "--runtime-repository",
        type=Path,
        default=Path(env.get("RUNTIME_MODEL_REPOSITORY", DEFAULT_RUNTIME_REPOSITORY)),
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--dry-run", action="store_true", help="print decisions and commands as JSON; run nothing"
    )
    mode.add_argument(
        "--build-only",
        action="store_true",
        help="build and verify the engines, then exit (cache warm-up job)",
    )
    parser.add_argument(
        "--stub-watch-interval",
        type=float,
        default=float(env.get("STUB_WATCH_INTERVAL", DEFAULT_STUB_WATCH_INTERVAL)),
        help="seconds between counts of the Python models' stub processes; one gone or stopped stops the "
        "container with status 4 (0: off)",
    )
    defaults = Tolerances()
    for option, name, text in TOLERANCE_OPTIONS:
        variable = "ENGINE_VERIFY_" + option.upper().replace("-", "_")
        parser.add_argument(
            f"--verify-{option}",
            dest=name,
            type=float,
            default=env.get(variable, str(getattr(defaults, name))),
            help=f"{text} (${variable})",
        )
    add_security_arguments(parser, env, restrict_by_default=True)
    return parser.parse_known_args(argv)


# --- tritonserver as a supervised child ---------------------------------------------------------------------


def run_server(command: Sequence[str], *, stub_watch_interval: float, environ: Mapping[str, str]) -> int:
    """Run tritonserver as a child in its own process group until it exits; returns the container's exit
    status: tritonserver's, or ``EXIT_STUB_LOST`` when a Python model's stub process died or stopped."""
    server = TritonProcess(command, env=environ)
    server.start(wait=False)
    print(f"[entrypoint] tritonserver pid {server.pid} (own process group)", flush=True)
    supervisor = None
    if stub_watch_interval > 0:
        supervisor = Supervisor(server, probes=False, restart=False)
    ending = serve(server, supervisor, poll=stub_watch_interval or 1.0, reap_children=True)
    if server.reaped:
        print(
            f"[entrypoint] killed {len(server.reaped)} processes left in tritonserver's group: "
            f"{server.reaped}",
            flush=True,
        )
    print(f"[entrypoint] tritonserver exited with status {ending.status}", flush=True)
    if ending.reason == "stub_lost":
        print(
            f"[entrypoint] error: {ending.detail}: Triton does not restart them; stopped tritonserver so "
            "that "
            "the container is restarted",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_STUB_LOST
    return 1 if ending.status is None else ending.status


def _terminate_on_sigterm() -> None:
    # As PID 1, a process without a SIGTERM handler ignores SIGTERM: during a build `kubectl delete pod` would
    # wait out the whole grace period. Exit instead (the trtexec child gets SIGTERM from the runtime too).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def main(
    argv: Sequence[str] | None = None,
    *,
    run_query: Runner = run_captured,
    run_build: Runner = run_streamed,
    which: Callable[[str], str | None] = shutil.which,
    start_server: Callable[[list[str]], int] | None = None,
    environ: dict[str, str] | None = None,
    engine_runner: TensorRunner | None = None,
    reference_runner: TensorRunner | None = None,
    shm_available: Callable[[], int | None] = shm_size,
) -> int:
    """``engine_runner`` (default: trtexec through ``run_query``) and ``reference_runner`` (default: ONNX
    Runtime's CPU provider) run the engines and their ONNX files for the verification. ``start_server`` runs
    the tritonserver command and returns the exit status (default :func:`run_server`). ``shm_available``:
    the size of ``/dev/shm``."""
    environ = dict(os.environ if environ is None else environ)
    args, server_args = parse_args(argv, environ)
    try:
        tolerances = Tolerances(**{name: getattr(args, name) for _, name, _ in TOLERANCE_OPTIONS})
    except ValueError as exc:
        print(f"[entrypoint] error: {exc}", file=sys.stderr, flush=True)
        return EXIT_ERROR
    reference_runner = reference_runner or OnnxRuntimeRunner()
    try:
        if not args.model_repository.is_dir():
            raise EntrypointError(f"model repository {args.model_repository} not found")
        gpus = query_gpus(run_query, environ.get("CUDA_VISIBLE_DEVICES"))
        gpu = select_gpu(gpus)
        memory = pipeline_memory(args.model_repository)
        jobs: list[EngineJob] = []
        trt_version = None  # no TensorRT model to build (e.g. the onnxruntime-trt repository)
        if any(True for _ in tensorrt_models(args.model_repository)):
            trtexec = find_trtexec(which)
            trt_version = query_tensorrt_version(trtexec, run_query, environ)
            jobs = plan_engines(args.model_repository, args.engine_cache, gpu, trt_version, trtexec)
            engine_runner = engine_runner or TrtexecRunner(trtexec, run_query)
        try:
            security = Security.from_args(args, environ)
            security_args = security.args(server_args)
        except HardeningError as exc:
            raise EntrypointError(str(exc)) from exc
        secrets, notes = security.secrets, security.notes()
        command = tritonserver_command(
            args.runtime_repository,
            [*security_args, *server_args],
            defaults=[*DEFAULT_SERVER_ARGS, *memory.server_args(len(gpus))],
        )
        if args.dry_run:
            print(
                json.dumps(
                    {
                        "gpu": {"name": gpu.name, "compute_capability": gpu.compute_capability},
                        "tensorrt": trt_version,
                        "engines": [j.to_json() for j in jobs],
                        "verification": {
                            "engine_runner": engine_runner.name if engine_runner else None,
                            "reference": reference_runner.name,
                            "tolerances": tolerances.to_json(),
                        },
                        "security": notes,
                        "memory": {
                            "cuda_pool_bytes_per_gpu": memory.cuda_pool_bytes(),
                            "dev_shm_needed_bytes": memory.shm_bytes(),
                            "dev_shm_bytes": shm_available(),
                        },
                        "tritonserver": redact(command, secrets),
                    },
                    indent=2,
                )
            )
            return 0
        print(
            f"[entrypoint] GPU {gpu.name} (sm {gpu.compute_capability}), TensorRT {trt_version}, "
            f"{sum(j.state == 'hit' for j in jobs)}/{len(jobs)} engines cached",
            flush=True,
        )
        for note in notes:
            print(f"[entrypoint] {note}", flush=True)
        warning = shm_warning(memory.shm_bytes(), shm_available(), memory)
        if warning:
            print(f"[entrypoint] warning: {warning}", flush=True)
        if jobs:
            ensure_engines(jobs, args.engine_cache, gpu, trt_version, run_build)
            verify_engines(jobs, engine_runner, reference_runner, tolerances)
        if args.build_only:
            return 0
        assemble_runtime_repository(args.model_repository, args.runtime_repository, jobs)
    except EngineVerificationError as exc:
        print(f"[entrypoint] error: {exc}", file=sys.stderr, flush=True)
        return EXIT_VERIFICATION_FAILED
    except EntrypointError as exc:
        print(f"[entrypoint] error: {exc}", file=sys.stderr, flush=True)
        return EXIT_ERROR
    except OSError as exc:  # e.g. an engine cache the server's user cannot write
        print(f"[entrypoint] error: {exc}", file=sys.stderr, flush=True)
        return EXIT_ERROR
    print(f"[entrypoint] run {' '.join(redact(command, secrets))}", flush=True)
    if start_server is None:
        return run_server(command, stub_watch_interval=args.stub_watch_interval, environ=environ)
    return start_server(command)


if __name__ == "__main__":
    _terminate_on_sigterm()
    sys.exit(main())
