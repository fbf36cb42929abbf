"""Start the tritonserver that ships in the ``nvidia-pytriton`` wheel on a model repository.

The wheel holds a real Triton (2.51) with only the Python backend. This module assembles a backend
directory under ``work/triton/backends/``: ``python/`` (the backend library, its utils and the stub built for
the running Python) plus every Python-based backend in ``mobilesamv2/server/backends/<name>/model.py``,
among them ``onnxruntime``, which serves ``backend: "onnxruntime"`` models the way NVIDIA's container does in
C++.

The models run under the launcher's own Python by default. ``python_env`` (``mobilesamv2-serve --python-env``,
or the environment variable ``MOBILESAMV2_SERVER_PYTHON_ENV`` when the argument is not given) names another
virtual environment to serve them from, e.g. ``work/container-venv`` (``scripts/container_env.sh``: the
Docker image's Python 3.10 with only its requirements): the stub built for that Python is installed into a
backend directory of its own and the environment's ``bin/`` goes first on ``PATH`` (the stub takes the first
``python`` there).

>>> with TritonServer("model_repository") as server:  # doctest: +SKIP
...     print(server.http_url)
127.0.0.1:40123
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from mobilesamv2.server import procs
from mobilesamv2.server.hardening import (
    DEFAULT_ADMIN_HEADER,
    GrpcTls,
    HardeningError,
    Restriction,
    generate_key,
    hardened_args,
    read_key,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
WORK_DIR = REPO_ROOT / "work"
BACKENDS_SOURCE = Path(__file__).resolve().parent / "backends"
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
        """The launcher's own interpreter (the default)."""
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


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class TritonServer:
    """A local tritonserver process; use as a context manager or call ``start()``/``stop()``.

    Ports left as ``None`` are picked free. The server log goes to ``log_path`` (default ``work/logs/``).
    ``env`` entries override the inherited environment (e.g. ``{"OMP_NUM_THREADS": "1"}``).
    ``python_env``: the virtual environment the Python models run in (default:
    ``$MOBILESAMV2_SERVER_PYTHON_ENV``, else this interpreter's); its stub goes to a backend directory of its
    own (``work/triton/backends-py3.10``).
    ``restriction``: the management APIs (shared-memory, model-repository, model-config, logging, trace,
    statistics) answer only requests with its header and key; ``grpc_tls``: gRPC over (mutual) TLS. With
    either the server is locked down: model control mode none, and ``extra_args`` may not change those
    settings (:mod:`mobilesamv2.server.hardening`). Without them the model control mode is none unless
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
        self.startup_timeout = startup_timeout
        self.exit_timeout_s = exit_timeout_s
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self._log_path = Path(
            log_path or WORK_DIR / "logs" / f"tritonserver-{stamp}-{self.http_port}.log"
        ).resolve()
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
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.RLock()  # a supervisor thread may restart it while others poll
        self.reaped: list[int] = []
        """Processes of the server's group (its Python stubs) still alive after it exited, killed then."""

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

    @property
    def log_path(self) -> Path:
        return self._log_path

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def poll(self) -> int | None:
        """The server's exit code, None while it runs (or was never started). When it finds the server gone
        it kills what is left of its process group: the Python stubs, which outlive tritonserver otherwise."""
        with self._lock:
            if self._process is None:
                return None
            code = self._process.poll()
            if code is not None:
                self._reap()
            return code

    def is_running(self) -> bool:
        with self._lock:
            return self._process is not None and self.poll() is None

    def _reap(self) -> None:
        """SIGKILL every process left in the server's group (the server leads its own, see ``start``)."""
        if self._process is not None:
            self.reaped += procs.kill_group(self._process.pid)

    def stub_pids(self) -> dict[str, list[int]]:
        """``{model: [pid of each instance's stub]}`` of the running server (Python backend models only)."""
        found: dict[str, list[int]] = {}
        if self.pid is not None:
            for stub in procs.stubs_of(self.pid):
                found.setdefault(stub.model, []).append(stub.pid)
        return found

    # -- lifecycle ---------------------------------------------------------------------------------------
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
            f"--exit-timeout-secs={self.exit_timeout_s}",
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
        # --- allocator (BENCHMARKS.md "Allocator", measured by benchmarks/allocator.py) ------------------
        # $MOBILESAMV2_ALLOCATOR: unset (default): nothing process-wide; the ONNX Runtime stubs tune their own
        # heap (config parameter malloc_keep_large_blocks, glue.keep_large_blocks_in_heap). glibc: nothing
        # anywhere. glibc-tuned: the same tuning for every process (tritonserver and all stubs; measured
        # unsafe for the pipeline stub, whose memory follows the image size). jemalloc, tcmalloc: LD_PRELOAD
        # when the library is installed (else the default, logged). Variables already set are kept.
        import logging
        import platform

        allocator = env.get("MOBILESAMV2_ALLOCATOR", "").strip().lower()
        preload = {"jemalloc": "libjemalloc.so.2", "tcmalloc": "libtcmalloc_minimal.so.4"}
        if allocator in preload:
            library = Path(f"/usr/lib/{platform.machine()}-linux-gnu") / preload[allocator]
            if library.is_file():
                env["LD_PRELOAD"] = " ".join(p for p in (str(library), env.get("LD_PRELOAD")) if p)
            else:
                logging.getLogger(__name__).warning("%s not found: the default allocator instead", library)
                env.pop("MOBILESAMV2_ALLOCATOR")
        elif allocator not in ("", "glibc", "glibc-tuned"):
            logging.getLogger(__name__).warning("unknown MOBILESAMV2_ALLOCATOR %r: the default", allocator)
            env.pop("MOBILESAMV2_ALLOCATOR")
        if allocator == "glibc-tuned":
            from mobilesamv2.server.glue import HEAP_MALLOC_ENV

            for key, value in HEAP_MALLOC_ENV.items():
                env.setdefault(key, value)
        # --- end allocator --------------------------------------------------------------------------------
        return env

    def start(self, wait: bool = True) -> TritonServer:
        """Launch the server; with ``wait`` block until it reports ready."""
        with self._lock:
            return self._start(wait)

    def _start(self, wait: bool) -> TritonServer:
        if self._process is not None:
            raise RuntimeError("server already started")
        if not self.model_repository.is_dir():
            raise FileNotFoundError(f"model repository not found: {self.model_repository}")
        assemble_backend_directory(self.backend_directory, self.python_env.version)
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        (WORK_DIR / "ultralytics").mkdir(parents=True, exist_ok=True)
        with open(self._log_path, "ab") as log:
            # Own session, hence own process group, which its Python stubs inherit: a Ctrl-C in the terminal
            # reaches only the launcher, which then stops the server; stop() and poll() kill the group.
            self._process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.environment(),
                start_new_session=True,
            )
        if wait:
            try:
                self.wait_until_ready()
            except BaseException:
                self.stop()
                raise
        return self

    def wait_until_ready(self, timeout: float | None = None) -> None:
        """Poll ``/v2/health/ready``; raise if the process exits or ``timeout`` passes first."""
        if self._process is None:
            raise RuntimeError("server not started")
        deadline = time.monotonic() + (self.startup_timeout if timeout is None else timeout)
        url = f"http://{self.http_url}/v2/health/ready"
        while True:
            code = self._process.poll()
            if code is not None:
                raise RuntimeError(
                    f"tritonserver exited with code {code} during startup; log {self._log_path}:\n"
                    f"{_tail(self._log_path)}"
                )
            try:
                with urllib.request.urlopen(url, timeout=1.0) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"tritonserver not ready after {self.startup_timeout:.0f} s; log {self._log_path}:\n"
                    f"{_tail(self._log_path)}"
                )
            time.sleep(0.1)

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM (Triton drains in-flight requests for up to ``exit_timeout_s``), wait ``timeout`` (default
        ``exit_timeout_s + 5``), then SIGKILL; then SIGKILL whatever is left of its process group (stubs that
        outlived it). Returns the exit code."""
        with self._lock:
            process = self._process
            if process is None:
                return None
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=self.exit_timeout_s + 5 if timeout is None else timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            self._reap()
            return process.returncode

    def restart(self, drain_timeout: float = 5.0) -> float:
        """Stop (SIGTERM, ``drain_timeout`` seconds for in-flight requests, then SIGKILL of the whole group)
        and start again on the same ports; returns the seconds it took until ready."""
        with self._lock:
            started = time.monotonic()
            self.stop(timeout=drain_timeout)
            self._process = None
            self._start(wait=True)
            return time.monotonic() - started

    def __enter__(self) -> TritonServer:
        if self._process is None:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _build_repository(repository: Path) -> None:
    """Export the ONNX models into ``repository`` (mobilesamv2.export.cli) when they are missing."""
    if (repository / "image_encoder" / "1" / "model.onnx").is_file():
        return
    command = [sys.executable, "-m", "mobilesamv2.export.cli", "--out", str(repository)]
    print(f"model repository incomplete, building it: {' '.join(command)}", flush=True)
    if subprocess.run(command, cwd=REPO_ROOT, check=False).returncode != 0:
        raise SystemExit(
            f"building the model repository {repository} failed (command above); fix it or use --no-build"
        )


ADMIN_KEY_VAR = "MOBILESAMV2_ADMIN_KEY"
GENERATED_KEY_FILE = WORK_DIR / "triton" / "admin-key"


def _restriction(args: argparse.Namespace) -> tuple[Restriction | None, str]:
    """``--restrict-apis``: the key from ``--admin-key-file``, ``$MOBILESAMV2_ADMIN_KEY`` or a new random one
    (written to ``work/triton/admin-key``, mode 600); and a line for the banner."""
    if not args.restrict_apis:
        return None, "management APIs open (--restrict-apis puts them behind a key)"
    if args.admin_key_file is not None:
        key, where = read_key(args.admin_key_file), str(args.admin_key_file)
    elif os.environ.get(ADMIN_KEY_VAR):
        key, where = os.environ[ADMIN_KEY_VAR].strip(), f"${ADMIN_KEY_VAR}"
    else:
        key, where = generate_key(), str(GENERATED_KEY_FILE)
        GENERATED_KEY_FILE.parent.mkdir(parents=True, exist_ok=True)
        GENERATED_KEY_FILE.unlink(missing_ok=True)
        fd = os.open(GENERATED_KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(key + "\n")
    restriction = Restriction(key, args.admin_header)
    grpc_header = next(iter(restriction.grpc_headers()))
    return restriction, f"header {restriction.header} (gRPC metadata {grpc_header}), key in {where}"


def _tls_note(tls: GrpcTls | None) -> str:
    if tls is None:
        return ""
    return " (mutual TLS)" if tls.client_ca else " (TLS)"


def main(argv: Sequence[str] | None = None) -> int:
    """``mobilesamv2-serve``: build the repository if needed, start Triton, serve until Ctrl-C/SIGTERM."""
    parser = argparse.ArgumentParser(prog="mobilesamv2-serve", description=main.__doc__)
    parser.add_argument("--model-repository", type=Path, default=DEFAULT_MODEL_REPOSITORY)
    parser.add_argument("--host", default="127.0.0.1", help="address all endpoints bind to")
    parser.add_argument("--http-port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--grpc-port", type=int, default=8001, help="0 picks a free port")
    parser.add_argument("--metrics-port", type=int, default=8002, help="0 picks a free port")
    parser.add_argument(
        "--build-if-missing",
        dest="build",
        action="store_true",
        default=True,
        help="export the ONNX models first if image_encoder/1/model.onnx is missing (default)",
    )
    parser.add_argument("--no-build", dest="build", action="store_false", help="never run the export step")
    parser.add_argument("--log-verbose", type=int, default=0)
    parser.add_argument("--log-file", type=Path, default=None, help="server log (default: work/logs/...)")
    parser.add_argument("--startup-timeout", type=float, default=300.0)
    parser.add_argument("--exit-timeout-secs", type=int, default=10, help="how long SIGTERM drains requests")
    parser.add_argument(
        "--python-env",
        type=Path,
        default=None,
        help="virtual environment the Python models run in, e.g. work/container-venv "
        f"(scripts/container_env.sh: the image's Python 3.10); default ${PYTHON_ENV_VAR}, else this one",
    )
    security = parser.add_argument_group(
        "locked-down serving (opt-in)",
        "the model control mode is always none. --restrict-apis: the management APIs (shared-memory, "
        "model-repository, model-config, logging, trace, statistics) answer only requests with the admin key "
        "(HTTP header <admin-header>, gRPC metadata triton-grpc-protocol-<admin-header>); inference, health "
        "and metadata stay open",
    )
    security.add_argument("--restrict-apis", action="store_true", help="put the management APIs behind a key")
    security.add_argument(
        "--admin-key-file",
        type=Path,
        default=None,
        help=f"file with the key (else ${ADMIN_KEY_VAR}, else a random key written to {GENERATED_KEY_FILE})",
    )
    security.add_argument("--admin-header", default=DEFAULT_ADMIN_HEADER, help="the key's header name")
    security.add_argument("--grpc-tls-cert", type=Path, default=None, help="PEM server certificate: gRPC TLS")
    security.add_argument("--grpc-tls-key", type=Path, default=None, help="PEM server private key")
    security.add_argument(
        "--grpc-tls-client-ca", type=Path, default=None, help="PEM CA of client certificates: mutual TLS"
    )
    supervision = parser.add_argument_group(
        "self-healing",
        "probe the server with real inferences (python -m mobilesamv2.server.probe) and restart tritonserver "
        "when it stops serving: a model's stub process that died or hangs is not restarted by Triton",
    )
    supervision.add_argument(
        "--no-supervise", dest="supervise", action="store_false", help="only report a dead server and exit"
    )
    supervision.add_argument("--probe-interval", type=float, default=15.0, help="seconds between probes")
    supervision.add_argument(
        "--probe-retry-interval", type=float, default=2.0, help="seconds between probes while failing"
    )
    supervision.add_argument("--probe-timeout", type=float, default=15.0, help="deadline of one probe")
    supervision.add_argument(
        "--restart-after", type=int, default=3, metavar="K", help="restart after K failed probes in a row"
    )
    supervision.add_argument(
        "--max-restarts",
        type=int,
        default=5,
        help="give up (exit 1) after this many restarts without a healthy probe in between",
    )
    supervision.add_argument(
        "--restart-drain", type=float, default=5.0, help="seconds a restart lets in-flight requests finish"
    )
    args = parser.parse_args(argv)

    repository = args.model_repository.resolve()
    if args.build:
        _build_repository(repository)
    try:
        restriction, key_note = _restriction(args)
        tls = None
        if args.grpc_tls_cert or args.grpc_tls_key or args.grpc_tls_client_ca:
            if not (args.grpc_tls_cert and args.grpc_tls_key):
                raise HardeningError("gRPC TLS needs both --grpc-tls-cert and --grpc-tls-key")
            tls = GrpcTls(args.grpc_tls_cert, args.grpc_tls_key, args.grpc_tls_client_ca).check()
    except HardeningError as exc:
        print(f"mobilesamv2-serve: {exc}", file=sys.stderr)
        return 2
    stop_requested = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop_requested.set())
    try:
        server = TritonServer(
            repository,
            host=args.host,
            http_port=args.http_port or None,
            grpc_port=args.grpc_port or None,
            metrics_port=args.metrics_port or None,
            log_verbose=args.log_verbose,
            startup_timeout=args.startup_timeout,
            exit_timeout_s=args.exit_timeout_secs,
            log_path=args.log_file,
            python_env=args.python_env,
            restriction=restriction,
            grpc_tls=tls,
        )
        server.start()
    except (RuntimeError, TimeoutError, FileNotFoundError) as exc:
        print(f"mobilesamv2-serve: {exc}", file=sys.stderr)
        return 1
    print(
        f"Triton ready (pid {server.pid}), model repository {repository}\n"
        f"  python:  {server.python_env.version} ({server.python_env.prefix})\n"
        f"  http:    {server.http_url}\n"
        f"  grpc:    {server.grpc_url}{_tls_note(tls)}\n"
        f"  metrics: {server.metrics_url}\n"
        f"  log:     {server.log_path}\n"
        f"  admin:   {key_note}\n"
        "Ctrl-C or SIGTERM stops it.",
        flush=True,
    )
    code = 0
    if args.supervise:
        from mobilesamv2.server.supervisor import GaveUp, Supervisor

        supervisor = Supervisor(
            server,
            interval=args.probe_interval,
            failure_interval=args.probe_retry_interval,
            probe_timeout=args.probe_timeout,
            failures=args.restart_after,
            max_restarts=args.max_restarts,
            drain_timeout=args.restart_drain,
        )
        print(
            f"mobilesamv2-serve: probing every {args.probe_interval:g} s (deadline {args.probe_timeout:g} s);"
            f" restart after {args.restart_after} failures in a row",
            flush=True,
        )
        try:
            supervisor.run(stop_requested)
        except GaveUp as exc:
            print(
                f"mobilesamv2-serve: {exc}; log {server.log_path}:\n{_tail(server.log_path)}", file=sys.stderr
            )
            code = 1
    else:
        while not stop_requested.wait(1.0):
            exit_code = server.poll()
            if exit_code is not None:
                print(
                    f"mobilesamv2-serve: tritonserver died (exit code {exit_code}); killed "
                    f"{len(server.reaped)} leftover processes of its group; log {server.log_path}:\n"
                    f"{_tail(server.log_path)}",
                    file=sys.stderr,
                )
                code = 1
                break
    server.stop()
    print("mobilesamv2-serve: stopped", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
