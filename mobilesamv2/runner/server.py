"""One tritonserver process, whoever runs it: ``mobilesamv2-serve`` (the binary of the ``nvidia-pytriton``
wheel, :class:`mobilesamv2.runner.local.TritonServer`) and the container entrypoint (NVIDIA's binary,
:mod:`mobilesamv2.runner.entrypoint`).

tritonserver starts in a session (hence a process group) of its own, which its Python backend stubs
inherit: a Ctrl-C in a terminal reaches only the runner, which then stops the server. Python backend 24.10
stubs outlive their server when it dies, so once tritonserver has exited the runner kills what is left of
its group (:func:`procs.kill_group`). When the runner itself dies, even of SIGKILL, the kernel kills
tritonserver (``PR_SET_PDEATHSIG``), and the stubs, which check every 300 ms whether their parent lives,
exit after it: no orphan keeps the ports. What the runner reads from the command line (readiness URL, drain
time) comes from the command itself (:func:`hardening.option_value`): runner and server cannot disagree.

Stopping drains first (:meth:`TritonProcess.shutdown`, and the serve loop on SIGTERM). Triton's own SIGTERM
handling lets the requests in flight finish but refuses every new request, the sub-requests of a BLS model
included: a ``segment_everything`` request still running would fail at its next stage. So the runner first
creates the server's drain file (:data:`DRAIN_FILE_VAR`): the pipeline then refuses new requests with
``UNAVAILABLE`` (clients retry on another replica) while those in flight still reach the sub-models; once
none is left (the pipeline's ``segevery_requests_in_flight`` and Triton's pending count on the metrics
port), or after the exit timeout, tritonserver gets its SIGTERM.

Standard library only: the container's entrypoint (Python 3.10) imports this.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

from mobilesamv2.runner import procs
from mobilesamv2.runner.hardening import option_value

#: Signals a runner passes on to tritonserver (which stops on each of them).
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
DEFAULT_EXIT_TIMEOUT_S = 30  # tritonserver's own default for --exit-timeout-secs
_PR_SET_PDEATHSIG = 1
DRAIN_FILE_VAR = "MOBILESAMV2_DRAIN_FILE"
"""Environment variable of the server (and so of its Python models): the file whose existence tells the
pipeline to refuse new requests."""
#: What is still in flight in a server: requests running in the pipeline, and those waiting in its queue.
IN_FLIGHT_METRICS = (
    ("segevery_requests_in_flight", {}),
    ("nv_inference_pending_request_count", {"model": "segment_everything"}),
)


def tail(path: Path | None, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file."""
    if path is None:
        return "(log on the console)"
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def exit_code(status: int) -> int:
    """A wait status as a shell reports it: the exit code, or 128 + the signal that killed the process."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def shell_code(returncode: int) -> int:
    """``Popen.returncode`` (negative: killed by that signal) as a shell reports it."""
    return 128 - returncode if returncode < 0 else returncode


def ready_url(command: Sequence[str]) -> str | None:
    """Triton's readiness URL from its command line (None when HTTP is off)."""
    if (option_value(command, "--allow-http") or "true").lower() in ("false", "0", "no"):
        return None
    address = option_value(command, "--http-address") or "127.0.0.1"
    if address in ("0.0.0.0", "::", ""):
        address = "127.0.0.1"
    return f"http://{address}:{option_value(command, '--http-port') or '8000'}/v2/health/ready"


def metrics_url(command: Sequence[str]) -> str | None:
    """Triton's Prometheus endpoint from its command line (None when metrics are off)."""
    if (option_value(command, "--allow-metrics") or "true").lower() in ("false", "0", "no"):
        return None
    address = option_value(command, "--metrics-address") or option_value(command, "--http-address")
    if address in (None, "0.0.0.0", "::", ""):
        address = "127.0.0.1"
    return f"http://{address}:{option_value(command, '--metrics-port') or '8002'}/metrics"


def scrape(url: str, timeout: float = 2.0) -> str | None:
    """The text of a Prometheus endpoint, None when it does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError):
        return None


def metric_total(text: str, name: str, **labels: str) -> float:
    r"""The sum of the samples of metric ``name`` whose labels include ``labels``, in Prometheus text.

    >>> metric_total('x{model="a",v="1"} 2\nx{model="b",v="1"} 3\nxy{model="a"} 9', "x", model="a")
    2.0
    """
    total = 0.0
    for line in text.splitlines():
        named = line.startswith((name + "{", name + " "))
        if named and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def is_ready(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _child_setup() -> Callable[[], None]:
    """What the child runs between fork and exec: the signals a runner forwards at their defaults (even if the
    runner inherited them ignored, as a shell's background job does), and, when started from the main thread,
    death with the runner (``PR_SET_PDEATHSIG`` follows the thread that forked: a server started from a
    worker thread would die with that thread)."""
    prctl = None
    if threading.current_thread() is threading.main_thread():
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here, not in the forked child
    parent = os.getpid()

    def setup() -> None:
        for sig in FORWARDED_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
            if os.getppid() != parent:  # the runner died before the line above: follow it now
                os._exit(1)

    return setup


class TritonProcess:
    """A tritonserver command run as a child in its own process group; use as a context manager or call
    :meth:`start` / :meth:`stop`.

    ``command`` is the full command line (``None``: a subclass builds it in :meth:`command`); ``env`` the
    complete environment (default: this process's); ``log_path`` where its output goes (default: this
    process's stdout and stderr).
    """

    def __init__(
        self,
        command: Sequence[str] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
        startup_timeout: float = 180.0,
    ) -> None:
        self._command = list(command) if command is not None else None
        self._env = dict(env) if env is not None else None
        self._log_path = Path(log_path).resolve() if log_path is not None else None
        self.startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.RLock()  # a supervisor thread may restart it while others poll
        self.reaped: list[int] = []
        """Processes of the server's group (its Python stubs) still alive after it exited, killed then."""
        self.drain_file = Path(tempfile.gettempdir()) / f"mobilesamv2-drain-{uuid.uuid4().hex}"
        """Exists while the server drains (see the module's docstring); its path is in the server's
        environment as :data:`DRAIN_FILE_VAR`."""

    # -- what runs -----------------------------------------------------------------------------------------
    def command(self) -> list[str]:
        """The tritonserver command line."""
        if self._command is None:
            raise NotImplementedError("give a command or override command()")
        return list(self._command)

    def environment(self) -> dict[str, str]:
        """Environment of the server and, through it, of every Python stub."""
        return dict(os.environ if self._env is None else self._env)

    def prepare(self) -> None:
        """Called before every start (a subclass assembles what the command refers to)."""

    @property
    def exit_timeout_s(self) -> int:
        """How long tritonserver drains in-flight requests after SIGTERM (``--exit-timeout-secs``)."""
        return int(option_value(self.command(), "--exit-timeout-secs") or DEFAULT_EXIT_TIMEOUT_S)

    @property
    def ready_url(self) -> str | None:
        return ready_url(self.command())

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    # -- state ----------------------------------------------------------------------------------------------
    def poll(self) -> int | None:
        """The server's exit status (as a shell reports it), None while it runs or before it started. When it
        finds the server gone it kills what is left of its process group: the Python stubs, which outlive
        tritonserver otherwise."""
        with self._lock:
            if self._process is None:
                return None
            code = self._process.poll()
            if code is None:
                return None
            self._reap()
            return shell_code(code)

    def is_running(self) -> bool:
        with self._lock:
            return self._process is not None and self.poll() is None

    def is_ready(self) -> bool:
        url = self.ready_url
        return url is not None and self.is_running() and is_ready(url)

    def _reap(self) -> None:
        if self._process is not None:
            self.reaped += procs.kill_group(self._process.pid)

    def stub_pids(self) -> dict[str, list[int]]:
        """``{model: [pid of each instance's stub]}`` of the running server (Python backend models only)."""
        found: dict[str, list[int]] = {}
        if self.pid is not None:
            for stub in procs.stubs_of(self.pid):
                found.setdefault(stub.model, []).append(stub.pid)
        return found

    def stub_census(self) -> dict[str, int]:
        """Running (not stopped, not zombie) stub processes per model."""
        return procs.stub_census(self.pid) if self.pid is not None else {}

    # -- lifecycle -----------------------------------------------------------------------------------------
    def start(self, wait: bool = True) -> TritonProcess:
        """Launch the server; with ``wait`` block until it reports ready (stopping it if it does not)."""
        with self._lock:
            return self._start(wait)

    def _start(self, wait: bool) -> TritonProcess:
        if self._process is not None:
            raise RuntimeError("server already started")
        self.prepare()
        self.drain_file.unlink(missing_ok=True)
        environment = {**self.environment(), DRAIN_FILE_VAR: str(self.drain_file)}
        log = None
        if self._log_path is not None:
            self._log_path.parent.mkdir(parents=True, exist_ok=True)
            log = open(self._log_path, "ab")  # noqa: SIM115 (closed below: the child holds its own copy)
        try:
            self._process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT if log is not None else None,
                env=environment,
                start_new_session=True,
                preexec_fn=_child_setup(),  # noqa: PLW1509 (no lock is taken in it)
            )
        finally:
            if log is not None:
                log.close()
        if wait:
            try:
                self.wait_until_ready()
            except BaseException:
                self.stop()
                raise
        return self

    def wait_until_ready(self, timeout: float | None = None) -> None:
        """Poll the readiness URL; raise if the process exits or ``timeout`` passes first."""
        if self._process is None:
            raise RuntimeError("server not started")
        url = self.ready_url
        timeout = self.startup_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            code = self._process.poll()
            if code is not None:
                raise RuntimeError(
                    f"tritonserver exited with status {shell_code(code)} during startup; log "
                    f"{self._log_path}:\n{tail(self._log_path)}"
                )
            if url is None or is_ready(url):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"tritonserver not ready after {timeout:.0f} s; log {self._log_path}:\n"
                    f"{tail(self._log_path)}"
                )
            time.sleep(0.1)

    # -- draining --------------------------------------------------------------------------------------------
    def begin_drain(self) -> None:
        """From now on the pipeline refuses new requests (``UNAVAILABLE``); those in flight go on."""
        self.drain_file.touch()

    def in_flight(self) -> int | None:
        """Requests still running or queued in the pipeline; None when the metrics do not answer."""
        url = metrics_url(self.command())
        text = scrape(url) if url is not None and self.is_running() else None
        if text is None:
            return None
        return int(sum(metric_total(text, name, **labels) for name, labels in IN_FLIGHT_METRICS))

    def drain(self, timeout: float | None = None) -> bool:
        """:meth:`begin_drain`, then wait until nothing is in flight (True) or ``timeout`` seconds (default:
        the exit timeout) pass, the metrics stop answering or the server exits (False)."""
        self.begin_drain()
        deadline = time.monotonic() + (self.exit_timeout_s if timeout is None else timeout)
        while True:
            left = self.in_flight()
            if left == 0:
                return True
            if left is None or time.monotonic() > deadline:
                return False
            time.sleep(0.1)

    def shutdown(self, drain_timeout: float | None = None) -> int | None:
        """What an orchestrator's SIGTERM does (the serve loop): :meth:`drain`, then :meth:`stop`."""
        if self.is_running():
            self.drain(drain_timeout)
        return self.stop()

    def send_signal(self, sig: int) -> None:
        with self._lock:
            if self._process is not None and self._process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    self._process.send_signal(sig)

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM (tritonserver drains in-flight requests for up to its exit timeout), wait ``timeout``
        (default: the exit timeout + 5 s), then SIGKILL; then SIGKILL whatever is left of its process group.
        Returns the exit status."""
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
            self.drain_file.unlink(missing_ok=True)
            return shell_code(process.returncode)

    def restart(self, drain_timeout: float = 5.0) -> float:
        """Stop (SIGTERM, ``drain_timeout`` seconds for in-flight requests, then SIGKILL of the whole group)
        and start the same command again; returns the seconds it took until ready."""
        with self._lock:
            started = time.monotonic()
            self.stop(timeout=drain_timeout)
            self._process = None
            self._start(wait=True)
            return time.monotonic() - started

    def __enter__(self) -> TritonProcess:
        if self._process is None:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def reap_orphans(keep: int | None) -> None:
    """As PID 1: reap every exited child except ``keep`` (tritonserver, reaped by its :class:`TritonProcess`):
    processes orphaned inside the container are re-parented to PID 1."""
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if info is None or info.si_pid == keep:
            return
        with contextlib.suppress(ChildProcessError):
            os.waitpid(info.si_pid, 0)
