"""The tritonserver that ships in the ``nvidia-pytriton`` wheel, on a model repository of this project.

The wheel holds a real Triton (2.51) with only the Python backend. :class:`TritonServer` assembles a backend
directory under ``work/triton/backends/``: ``python/`` (the backend library, its utils and the stub built for
the models' Python) plus every Python-based backend in ``mobilesamv2/inside_triton/backends/<name>/model.py``,
among them ``onnxruntime``, which serves ``backend: "onnxruntime"`` models the way NVIDIA's container does in
C++. The process itself (own process group, death with the runner, stop, restart, stub census) is
:class:`mobilesamv2.runner.server.TritonProcess`, shared with the container entrypoint.

The models run under this Python by default. ``python_env`` (``mobilesamv2-serve --python-env``, or the
environment variable ``MOBILESAMV2_SERVER_PYTHON_ENV`` when the argument is not given) names another virtual
environment to serve them from, e.g. ``work/container-venv`` (``scripts/container_env.sh``: the Docker image's
Python 3.10 with only its requirements): the stub built for that Python is installed into a backend directory
of its own and the environment's ``bin/`` goes first on ``PATH`` (the stub takes the first ``python`` there).

>>> with TritonServer("model_repository") as server:  # doctest: +SKIP
...     print(server.http_url)
127.0.0.1:40123
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mobilesamv2.inside_triton.glue import ALLOCATOR_VAR, HEAP_MALLOC_ENV
from mobilesamv2.runner.hardening import GrpcTls, Restriction, hardened_args
from mobilesamv2.runner.server import TritonProcess

REPO_ROOT = Path(__file__).resolve().parents[2]
WORK_DIR = REPO_ROOT / "work"
BACKENDS_SOURCE = Path(__file__).resolve().parents[1] / "inside_triton" / "backends"
DEFAULT_BACKEND_DIR = WORK_DIR / "triton" / "backends"
DEFAULT_MODEL_REPOSITORY = REPO_ROOT / "model_repository"
PYTHON_ENV_VAR = "MOBILESAMV2_SERVER_PYTHON_ENV"
"""Serve the Python models from this virtual environment when ``TritonServer(python_env=...)`` is None."""


@dataclass(frozen=True)
class PythonEnv:
    """A Python environment the models run in: the stub for its version, its ``bin/`` first on ``PATH``."""

    prefix: Path
    """The environment's root (a venv's folder, or a Python installation's prefix)."""
    version: str
    """``major.minor``: picks ``python_backend_stubs/<version>``."""
    libdir: Path | None
    """Where its ``libpython<version>.so`` lies (the stub links it); None when the system linker finds it."""

    @property
    def bin_dir(self) -> Path:
        return self.prefix / "bin"

    @classmethod
    def current(cls) -> PythonEnv:
        """This interpreter (the default)."""
        return cls(Path(sys.executable).parent.parent, f"{sys.version_info[0]}.{sys.version_info[1]}", None)

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> PythonEnv:
        """Inspect the environment at ``path`` (its ``bin/python`` is run once)."""
        prefix = Path(path).expanduser()
        if not prefix.is_absolute() and not prefix.exists() and (REPO_ROOT / prefix).exists():
            prefix = REPO_ROOT / prefix  # a relative path from the repository root (e.g. work/container-venv)
        python = prefix / "bin" / "python"
        if not python.exists():
            raise FileNotFoundError(
                f"python environment {prefix}: no bin/python (make it with scripts/container_env.sh)"
            )
        probe = (
            "import json, sys, sysconfig; print(json.dumps({'version': '%d.%d' % sys.version_info[:2], "
            "'libdir': sysconfig.get_config_var('LIBDIR'), 'numpy': __import__('numpy').__version__}))"
        )
        result = subprocess.run([str(python), "-I", "-c", probe], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(
                f"python environment {prefix} is unusable for the Python backend (it needs numpy):\n"
                f"{result.stderr.strip()}"
            )
        info = json.loads(result.stdout)
        libdir = Path(info["libdir"]) if info.get("libdir") else None
        if libdir is not None and not any(libdir.glob(f"libpython{info['version']}*.so*")):
            libdir = None  # a static build: nothing for the stub to link there
        return cls(prefix.absolute(), info["version"], libdir)


def find_pytriton() -> Path:
    """Directory of the installed ``pytriton`` package (holds ``tritonserver/``)."""
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("nvidia-pytriton is not installed: pip install 'nvidia-pytriton==0.7.0'")
    return Path(next(iter(spec.submodule_search_locations)))


def _install(source: Path, target: Path) -> None:
    # Copy beside the target, then rename: another server may be running the old stub right now, and
    # overwriting an executing file in place fails ("Text file busy").
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}")
    shutil.copy2(source, tmp)
    os.replace(tmp, target)


def assemble_backend_directory(target: Path = DEFAULT_BACKEND_DIR, python_version: str | None = None) -> Path:
    """Fill ``target`` with the Python backend for ``python_version`` (default: this interpreter's) and the
    project's Python backends."""
    pytriton = find_pytriton()
    python_backend = pytriton / "tritonserver" / "backends" / "python"
    version = python_version or f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = pytriton / "tritonserver" / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise RuntimeError(f"pytriton ships no Python backend stub for Python {version}: {stub}")
    # The Python backend looks for its stub only next to libtriton_python.so.
    for source in (
        python_backend / "libtriton_python.so",
        python_backend / "triton_python_backend_utils.py",
        stub,
    ):
        _install(source, target / "python" / source.name)
    for model_py in sorted(BACKENDS_SOURCE.glob("*/model.py")):
        _install(model_py, target / model_py.parent.name / "model.py")
    return target


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the usual race applies)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class TritonServer(TritonProcess):
    """The wheel's tritonserver on ``model_repository``; a context manager, or ``start()`` / ``stop()``.

    Ports left as ``None`` are picked free. The server log goes to ``log_path`` (default ``work/logs/``).
    ``env`` entries override the inherited environment (e.g. ``{"OMP_NUM_THREADS": "1"}``).
    ``python_env``: the virtual environment the Python models run in (default:
    ``$MOBILESAMV2_SERVER_PYTHON_ENV``, else this interpreter's); its stub goes to a backend directory of its
    own (``work/triton/backends-py3.10``).
    ``restriction``: the management APIs (shared-memory, model-repository, model-config, logging, trace,
    statistics) answer only requests with its header and key; ``grpc_tls``: gRPC over (mutual) TLS. With
    either the server is locked down: model control mode none, and ``extra_args`` may not change those
    settings (:mod:`mobilesamv2.runner.hardening`). Without them the model control mode is none unless
    ``extra_args`` says otherwise.
    """

    def __init__(
        self,
        model_repository: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        log_verbose: int = 0,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 180.0,
        exit_timeout_s: int = 10,
        log_path: str | os.PathLike[str] | None = None,
        backend_directory: str | os.PathLike[str] | None = None,
        python_env: str | os.PathLike[str] | None = None,
        restriction: Restriction | None = None,
        grpc_tls: GrpcTls | None = None,
    ) -> None:
        self.model_repository = Path(model_repository).resolve()
        self.host = host
        ports: list[int] = []
        for requested in (http_port, grpc_port, metrics_port):
            port = requested
            while port is None or port in ports:  # three distinct ports
                port = free_port(host)
            ports.append(port)
        self.http_port, self.grpc_port, self.metrics_port = ports
        self.log_verbose = log_verbose
        self.extra_args = list(extra_args)
        self.env = dict(env or {})
        self._exit_timeout_s = exit_timeout_s
        stamp = time.strftime("%Y%m%d-%H%M%S")
        super().__init__(
            log_path=log_path or WORK_DIR / "logs" / f"tritonserver-{stamp}-{self.http_port}.log",
            startup_timeout=startup_timeout,
        )
        if python_env is None:
            python_env = os.environ.get(PYTHON_ENV_VAR) or None
        self.python_env = PythonEnv.of(python_env) if python_env is not None else PythonEnv.current()
        if backend_directory is None:
            backend_directory = (
                DEFAULT_BACKEND_DIR
                if python_env is None
                else DEFAULT_BACKEND_DIR.with_name(f"backends-py{self.python_env.version}")
            )
        self.backend_directory = Path(backend_directory).resolve()
        self.restriction = restriction
        self.grpc_tls = grpc_tls
        if restriction is not None or grpc_tls is not None:
            hardened_args(self.extra_args, restriction, None)  # refuse conflicting extra_args now

    # -- endpoints ---------------------------------------------------------------------------------------
    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"{self.host}:{self.metrics_port}"

    # -- what runs -----------------------------------------------------------------------------------------
    def command(self) -> list[str]:
        """The tritonserver command line."""
        binary = find_pytriton() / "tritonserver" / "bin" / "tritonserver"
        return [
            str(binary),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={self.backend_directory}",
            f"--http-address={self.host}",
            f"--grpc-address={self.host}",
            f"--metrics-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            f"--exit-timeout-secs={self._exit_timeout_s}",
            f"--log-verbose={self.log_verbose}",
            *self.security_args(),
            *self.extra_args,
        ]

    def security_args(self) -> list[str]:
        """Model control mode none, plus the restricted APIs and gRPC TLS when asked for."""
        if self.restriction is None and self.grpc_tls is None:
            mode_given = any(a.startswith("--model-control-mode") for a in self.extra_args)
            return [] if mode_given else ["--model-control-mode=none"]
        return hardened_args(self.extra_args, self.restriction, self.grpc_tls)

    def environment(self) -> dict[str, str]:
        """Environment of the server and, through it, of every Python stub."""
        env = dict(os.environ)
        libs = find_pytriton().parent / "nvidia_pytriton.libs"
        libdir = self.python_env.libdir
        lib_path = (str(libs), str(libdir) if libdir else None, env.get("LD_LIBRARY_PATH"))
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in lib_path if p)
        # The stub runs Python in isolated mode (PYTHONPATH ignored) and takes its environment from the
        # first python on PATH: put the models' environment's bin/ first so they import what it has.
        venv_bin = str(self.python_env.bin_dir)
        env["PATH"] = os.pathsep.join(p for p in (venv_bin, env.get("PATH")) if p)
        env.pop("PYTHONHOME", None)
        env.update(
            YOLO_OFFLINE="1",
            YOLO_AUTOINSTALL="False",
            YOLO_CONFIG_DIR=str(WORK_DIR / "ultralytics"),
            PYTHONIOENCODING="utf-8",
        )
        env.update(self.env)
        # --- allocator (BENCHMARKS.md "Allocator") -------------------------------------------------------
        # $MOBILESAMV2_ALLOCATOR: unset (default): nothing process-wide; the ONNX Runtime stubs tune their own
        # heap (config parameter malloc_keep_large_blocks, glue.keep_large_blocks_in_heap). glibc: nothing
        # anywhere. glibc-tuned: the same tuning for every process (tritonserver and all stubs; measured
        # unsafe for the pipeline stub, whose memory follows the image size). jemalloc, tcmalloc: LD_PRELOAD
        # when the library is installed (else the default, logged). Variables already set are kept.
        allocator = env.get(ALLOCATOR_VAR, "").strip().lower()
        preload = {"jemalloc": "libjemalloc.so.2", "tcmalloc": "libtcmalloc_minimal.so.4"}
        if allocator in preload:
            library = Path(f"/usr/lib/{platform.machine()}-linux-gnu") / preload[allocator]
            if library.is_file():
                env["LD_PRELOAD"] = " ".join(p for p in (str(library), env.get("LD_PRELOAD")) if p)
            else:
                logging.getLogger(__name__).warning("%s not found: the default allocator instead", library)
                env.pop(ALLOCATOR_VAR)
        elif allocator not in ("", "glibc", "glibc-tuned"):
            logging.getLogger(__name__).warning("unknown %s %r: the default", ALLOCATOR_VAR, allocator)
            env.pop(ALLOCATOR_VAR)
        if allocator == "glibc-tuned":
            for key, value in HEAP_MALLOC_ENV.items():
                env.setdefault(key, value)
        return env

    def prepare(self) -> None:
        if not self.model_repository.is_dir():
            raise FileNotFoundError(f"model repository not found: {self.model_repository}")
        assemble_backend_directory(self.backend_directory, self.python_env.version)
        (WORK_DIR / "ultralytics").mkdir(parents=True, exist_ok=True)


def build_repository_if_missing(repository: Path) -> None:
    """Export the ONNX models into ``repository`` (mobilesamv2.export.cli) when they are missing."""
    if (repository / "image_encoder" / "1" / "model.onnx").is_file():
        return
    command = [sys.executable, "-m", "mobilesamv2.export.cli", "--out", str(repository)]
    print(f"model repository incomplete, building it: {' '.join(command)}", flush=True)
    if subprocess.run(command, cwd=REPO_ROOT, check=False).returncode != 0:
        raise SystemExit(
            f"building the model repository {repository} failed (command above); fix it or use --no-build"
        )
