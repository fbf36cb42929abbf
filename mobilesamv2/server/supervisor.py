"""Self-healing for a local tritonserver: probe it with real inferences, restart it when it stops serving.

Python backend 24.10 neither restarts a model's stub process that died nor reports it (``/v2/health/ready``
stays 200; every request that reaches that model fails), and a stub that hangs holds its requests forever.
:class:`Supervisor` restarts the server (:meth:`TritonServer.restart`: drain, SIGKILL of the whole process
group, start on the same ports)

- at once when tritonserver exited, or when one of its stub processes is gone or stopped (each model's count
  of running stubs, read from ``/proc`` every ``poll`` seconds, is below what it was after the start);
- after ``failures`` failed probes (:mod:`mobilesamv2.server.probe`: real inferences through every model,
  every ``interval`` seconds, every ``failure_interval`` seconds while failing) among the last
  ``2 * failures - 1``: in a row, or interleaved with successes (one of two instances broken).

A probe refused because the queue is full ("overloaded") counts as alive, unless that happens
``max_overloaded`` times in a row (hung instances fill the queue too). Every decision is logged with its
reason and kept in :attr:`Supervisor.events`.

``mobilesamv2-serve`` runs it in its main loop (``--probe-interval``, ``--probe-timeout``,
``--restart-after``, ``--no-supervise``); tests and benchmarks start it in a thread
(:meth:`Supervisor.start`).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mobilesamv2.server import procs
from mobilesamv2.server.probe import Prober, ProbeResult

if TYPE_CHECKING:
    from mobilesamv2.server.launcher import TritonServer


@dataclass(frozen=True)
class Event:
    """What the supervisor saw or did: ``probe_failed``, ``overloaded``, ``server_exited``, ``stub_lost``,
    ``restarting``, ``restarted``, ``restart_failed``, ``recovered``, ``gave_up``."""

    kind: str
    at: float
    """``time.monotonic()``"""
    detail: str


class GaveUp(RuntimeError):
    """The server could not be brought back (``max_restarts`` restarts in a row without a healthy probe)."""


class Supervisor:
    def __init__(
        self,
        server: TritonServer,
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
        self.expected_stubs: dict[str, int] = self.stub_census() if server.is_running() else {}
        """Running stub processes per model after the last start."""
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
        counts: dict[str, int] = {}
        if self.server.pid is not None:
            for stub in procs.stubs_of(self.server.pid):
                counts[stub.model] = counts.get(stub.model, 0) + int(stub.serving)
        return counts

    def lost_stubs(self) -> str | None:
        """Which model has fewer running stubs than after the start (None: all there)."""
        if not self.expected_stubs:
            return None
        now = self.stub_census()
        lost = [f"{m} {now.get(m, 0)}/{n}" for m, n in self.expected_stubs.items() if now.get(m, 0) < n]
        return ", ".join(lost) or None

    def watch(self) -> bool:
        """The cheap check (every ``poll`` seconds): restart at once when tritonserver exited or (with
        ``watch_stubs``) a stub process died or stopped. Returns whether it restarted."""
        code = self.server.poll()
        if code is not None:
            self._event("server_exited", f"tritonserver exited with code {code}")
            self._restart(f"tritonserver exited with code {code}")
            return True
        lost = self.lost_stubs() if self.watch_stubs else None
        if lost:
            self._event("stub_lost", f"stub processes running (now/after start): {lost}")
            self._restart(f"stub processes dead or stopped: {lost}")
            return True
        return False

    def check(self) -> bool:
        """One full step: :meth:`watch`, then a probe (restart after ``failures`` failed probes among the last
        ``2 * failures - 1``). Returns whether the server served the probe."""
        if self.watch():
            return False
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
            self._restart(f"{failed} failed probes of the last {len(self.recent)}, last: {result.message}")
        return False

    def _restart(self, reason: str) -> None:
        if self.restarts_without_success >= self.max_restarts:
            self._event("gave_up", f"{self.restarts_without_success} restarts without a healthy probe")
            raise GaveUp(f"tritonserver did not recover after {self.restarts_without_success} restarts")
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
            self.expected_stubs = {}
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
        next_probe = time.monotonic() + self.interval
        while not stop.wait(poll):
            if time.monotonic() < next_probe:
                if self.watch():
                    next_probe = time.monotonic() + self.failure_interval
                continue
            healthy = self.check()
            failing = not healthy and self._broken_since is not None
            next_probe = time.monotonic() + (self.failure_interval if failing else self.interval)

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
