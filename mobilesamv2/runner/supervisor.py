"""Supervision of a tritonserver: count its stubs, probe it with real inferences, restart it (or stop) when it
stops serving; and :func:`serve`, the one main loop of ``mobilesamv2-serve`` and the container entrypoint.

Python backend 24.10 neither restarts a model's stub process that died nor reports it (``/v2/health/ready``
stays 200; every request that reaches that model fails), and a stub that hangs holds its requests forever.
:class:`Supervisor` restarts the server (:meth:`TritonProcess.restart`: drain, SIGKILL of the whole process
group, start the same command again)

- at once when tritonserver exited, or when one of its stub processes is gone or stopped (each model's count
  of running stubs, read from ``/proc`` every ``poll`` seconds, is below what it was after the start);
- after ``failures`` failed probes (:mod:`mobilesamv2.runner.probe`: real inferences through every model,
  every ``interval`` seconds, every ``failure_interval`` seconds while failing) among the last
  ``2 * failures - 1``: in a row, or interleaved with successes (one of two instances broken).

A probe refused because the queue is full ("overloaded") counts as alive, unless that happens
``max_overloaded`` times in a row (hung instances fill the queue too). Every decision is logged with its
reason and kept in :attr:`Supervisor.events`.

With ``restart=False`` (the container entrypoint: the orchestrator restarts the container) the first failure
raises :class:`GaveUp` instead, and with ``probes=False`` (the container: Kubernetes runs the probe) only the
stub census and the server's exit are watched. The stub census starts once the server is ready.

``mobilesamv2-serve`` and the entrypoint run it in :func:`serve` (``--probe-interval``, ``--probe-timeout``,
``--restart-after``, ``--no-supervise``, ``--stub-watch-interval``); tests and benchmarks start it in a thread
(:meth:`Supervisor.start`).
"""

from __future__ import annotations

import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from mobilesamv2.runner import procs
from mobilesamv2.runner.probe import Prober, ProbeResult
from mobilesamv2.runner.server import FORWARDED_SIGNALS, TritonProcess, reap_orphans


@dataclass(frozen=True)
class Event:
    """What the supervisor saw or did: ``probe_failed``, ``overloaded``, ``server_exited``, ``stub_lost``,
    ``restarting``, ``restarted``, ``restart_failed``, ``recovered``, ``gave_up``."""

    kind: str
    at: float
    """``time.monotonic()``"""
    detail: str


class GaveUp(RuntimeError):
    """The server could not be brought back (``max_restarts`` restarts in a row without a healthy probe), or
    failed while restarts are off; ``kind`` is the last failure's event (``server_exited``, ``stub_lost``,
    ``probe_failed``)."""

    def __init__(self, message: str, kind: str = "") -> None:
        super().__init__(message)
        self.kind = kind


class Supervisor:
    def __init__(
        self,
        server: TritonProcess,
        *,
        interval: float = 15.0,
        failure_interval: float = 2.0,
        probe_timeout: float = 15.0,
        failures: int = 3,
        max_overloaded: int = 20,
        drain_timeout: float = 5.0,
        max_restarts: int = 5,
        interactive: bool = True,
        watch_stubs: bool = True,
        probes: bool = True,
        restart: bool = True,
        headers: dict[str, str] | None = None,
        log: Callable[[str], None] = lambda line: print(line, flush=True),
    ) -> None:
        if failures < 1 or interval <= 0 or failure_interval <= 0 or probe_timeout <= 0:
            raise ValueError("failures must be >= 1 and the intervals and the timeout > 0")
        self.server = server
        self.interval = interval
        self.failure_interval = failure_interval
        self.probe_timeout = probe_timeout
        self.failures = failures
        self.max_overloaded = max_overloaded
        self.drain_timeout = drain_timeout
        self.max_restarts = max_restarts
        self.interactive = interactive
        self.watch_stubs = watch_stubs
        """Count stub processes every ``poll``; off: only probes find a dead or hung model."""
        self.probes = probes
        """Probe with real inferences every ``interval``; off: only the census and the server's exit."""
        self.restart = restart
        """Restart on failure; off: raise :class:`GaveUp` at the first one."""
        self.headers = dict(headers or {})
        self._log = log
        self.events: list[Event] = []
        self.consecutive_failures = 0
        self.recent: deque[bool] = deque(maxlen=2 * failures - 1)
        """Outcomes of the last probes (True: failed)."""
        self.consecutive_overloaded = 0
        self.restarts_without_success = 0
        self.restarts = 0
        self._broken_since: float | None = None
        self.expected_stubs: dict[str, int] | None = None
        """Running stub processes per model once the server was ready after its last start (None: not yet)."""
        self._next_probe: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    # -- one step ----------------------------------------------------------------------------------------
    def _event(self, kind: str, detail: str) -> None:
        self.events.append(Event(kind, time.monotonic(), detail))
        self._log(f"[supervisor] {kind}: {detail}")

    def probe(self) -> ProbeResult:
        return Prober(self.server.http_url, self.probe_timeout, self.interactive, self.headers).run()

    def stub_census(self) -> dict[str, int]:
        """Running (not stopped, not zombie) stub processes per model."""
        return self.server.stub_census()

    def lost_stubs(self) -> str | None:
        """Which model has fewer running stubs than once it was ready (None: all there). The first call after
        the server became ready takes that count."""
        if self.expected_stubs is None:
            if self.server.is_ready():
                self.expected_stubs = self.stub_census()
                self._log(f"[supervisor] serving; Python stub processes per model: {self.expected_stubs}")
            return None
        return procs.lost_stubs(self.expected_stubs, self.stub_census())

    def watch(self) -> bool:
        """The cheap check (every ``poll`` seconds): restart at once when tritonserver exited or (with
        ``watch_stubs``) a stub process died or stopped. Returns whether it restarted."""
        code = self.server.poll()
        if code is not None:
            self._event("server_exited", f"tritonserver exited with status {code}")
            self._restart(f"tritonserver exited with status {code}", "server_exited")
            return True
        lost = self.lost_stubs() if self.watch_stubs else None
        if lost:
            self._event("stub_lost", f"stub processes running (now/after start): {lost}")
            self._restart(f"stub processes dead or stopped ({lost} running)", "stub_lost")
            return True
        return False

    def check(self) -> bool:
        """One full step: :meth:`watch`, then a probe (restart after ``failures`` failed probes among the last
        ``2 * failures - 1``). Returns whether the server served the probe."""
        if self.watch():
            return False
        if not self.probes:
            return True
        result = self.probe()
        if result.ok:
            if self._broken_since is not None:
                down = time.monotonic() - self._broken_since
                self._event("recovered", f"serving again {down:.1f} s after the first failure")
            self._broken_since = None
            self.consecutive_failures = self.consecutive_overloaded = self.restarts_without_success = 0
            self.recent.append(False)
            return True
        if result.overloaded:
            self.consecutive_overloaded += 1
            if not self.max_overloaded or self.consecutive_overloaded < self.max_overloaded:
                self._event("overloaded", f"{result.line()}: alive, not counted as a failure")
                return False
        self.consecutive_failures += 1
        self.recent.append(True)
        if self._broken_since is None:
            self._broken_since = time.monotonic()
        failed = sum(self.recent)
        self._event(
            "probe_failed", f"{failed}/{self.failures} of the last {len(self.recent)}: {result.line()}"
        )
        if failed >= self.failures:
            self._restart(
                f"{failed} failed probes of the last {len(self.recent)}, last: {result.message}",
                "probe_failed",
            )
        return False

    def _restart(self, reason: str, kind: str) -> None:
        if not self.restart:
            self._event("gave_up", f"{reason}; restarts are off")
            raise GaveUp(reason, kind)
        if self.restarts_without_success >= self.max_restarts:
            self._event("gave_up", f"{self.restarts_without_success} restarts without a healthy probe")
            raise GaveUp(f"tritonserver did not recover after {self.restarts_without_success} restarts", kind)
        if self._broken_since is None:
            self._broken_since = time.monotonic()
        self.restarts_without_success += 1
        self.restarts += 1
        self.consecutive_failures = self.consecutive_overloaded = 0
        self.recent.clear()
        self._event("restarting", reason)
        try:
            seconds = self.server.restart(self.drain_timeout)
        except (RuntimeError, TimeoutError, OSError) as exc:
            self.expected_stubs = None
            self._event("restart_failed", str(exc).splitlines()[0])
            return
        self.expected_stubs = self.stub_census()
        reaped = f", killed {len(self.server.reaped)} leftover processes so far" if self.server.reaped else ""
        self._event("restarted", f"tritonserver pid {self.server.pid} ready in {seconds:.1f} s{reaped}")

    # -- loop ----------------------------------------------------------------------------------------------
    def run(self, stop: threading.Event | None = None, poll: float = 1.0) -> None:
        """Probe every ``interval`` seconds (``failure_interval`` while failing) and check that tritonserver
        still runs every ``poll`` seconds, until ``stop`` is set. Raises :class:`GaveUp`."""
        stop = stop or self._stop
        while not stop.wait(poll):
            self.step()

    def step(self) -> None:
        """What :meth:`run` does every ``poll`` seconds: the cheap :meth:`watch`, or :meth:`check` when a
        probe is due."""
        now = time.monotonic()
        if self._next_probe is None:
            self._next_probe = now + self.interval
        if now < self._next_probe or not self.probes:
            if self.watch():
                self._next_probe = time.monotonic() + self.failure_interval
            return
        healthy = self.check()
        failing = not healthy and self._broken_since is not None
        self._next_probe = time.monotonic() + (self.failure_interval if failing else self.interval)

    def start(self) -> Supervisor:
        """Run in a daemon thread (``stop()`` ends it); a :class:`GaveUp` ends up in :attr:`error`."""

        def target() -> None:
            try:
                self.run(self._stop, poll=min(1.0, self.failure_interval))
            except BaseException as exc:
                self.error = exc

        self._thread = threading.Thread(target=target, name="triton-supervisor", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 60.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)


@dataclass(frozen=True)
class Ending:
    """How :func:`serve` ended: ``reason`` is ``stopped`` (a signal asked), ``exited`` (tritonserver exited
    on its own, unsupervised) or the :class:`GaveUp` kind; ``status`` is tritonserver's exit status."""

    reason: str
    status: int | None
    detail: str = ""


def serve(
    server: TritonProcess,
    supervisor: Supervisor | None,
    *,
    poll: float = 1.0,
    reap_children: bool = False,
    log: Callable[[str], None] = lambda line: print(line, flush=True),
) -> Ending:
    """Run until tritonserver ends, from the main thread: every ``poll`` seconds a :meth:`Supervisor.step`
    (or, unsupervised, a look whether the server still runs). SIGTERM (an orchestrator stopping this replica)
    first drains the pipeline (:meth:`TritonProcess.begin_drain`: new requests are refused, those in flight
    finish) and passes on to tritonserver once nothing is left in flight; SIGINT, SIGHUP, SIGQUIT and a
    second SIGTERM are passed on at once. tritonserver drains what is still in flight, and is killed once the
    exit timeout + 5 s have passed since the first signal. When it has exited, what is left of its process
    group is killed. ``reap_children``: as PID 1 in a container, also reap the orphans re-parented to this
    process."""
    stopping: list[float] = []  # when tritonserver is killed, once it was signalled
    draining: list[float] = []  # when the drain gives up, once SIGTERM came

    def forward(signum: int, _frame: object) -> None:
        now = time.monotonic()
        if signum == signal.SIGTERM and not draining and not stopping:
            server.begin_drain()
            draining.append(now + server.exit_timeout_s)
            return
        server.send_signal(signum)
        if not stopping:
            stopping.append((draining[0] if draining else now + server.exit_timeout_s) + 5)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED_SIGNALS}
    tick = min(poll, 0.2)
    next_step = time.monotonic() + poll
    try:
        while True:
            if reap_children:
                reap_orphans(server.pid)
            status = server.poll()
            now = time.monotonic()
            if draining and not stopping:
                if status is not None:
                    return Ending("stopped", status)
                left = server.in_flight()
                if not left or now > draining[0]:  # drained, unobservable (None) or out of time
                    server.send_signal(signal.SIGTERM)
                    stopping.append(draining[0] + 5)
            elif stopping:
                if status is not None:
                    return Ending("stopped", status)
                if now > stopping[0]:
                    server.send_signal(signal.SIGKILL)
            elif status is not None and (supervisor is None or not supervisor.restart):
                log(f"tritonserver exited with status {status}")
                return Ending("exited", status, f"tritonserver exited with status {status}")
            elif supervisor is not None and (now >= next_step or status is not None):
                next_step = now + poll
                try:
                    supervisor.step()
                except GaveUp as exc:
                    return Ending(exc.kind or "gave_up", server.stop(), str(exc))
            time.sleep(tick)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.stop(timeout=0)
