"""Replica scenarios under load: one bounded load test through four phases on :class:`LocalReplicas`, the
measurement behind ``tests/integration/test_replicas.py`` and ``benchmarks/replicas.py``.

One ``loadtest.run`` (locust users of the project's client, gRPC ``round_robin`` over the replicas' DNS name)
runs while the replicas change; each phase lasts until the replicas it has answered ``phase_requests``
requests (read from their own metrics), and uses what the one before left:

1. ``steady``: three replicas (the first three the :class:`LocalReplicas` runs);
2. ``replica loss``: kill -9 of the third, which stays in the DNS (as a dead node's address does for a while);
3. ``rollout``: the second leaves the DNS and stops as the runner stops on SIGTERM (drain, then Triton's
   stop), taken while it has a request running, to see it finish;
4. ``scale-up``: a fourth starts and joins the DNS; the phase ends once it has answered
   ``scale_up_requests`` requests.

Failures and latencies per phase come from the load test's per-request samples (by start time).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mobilesamv2.runner.server import metric_total, scrape

from .replicas import LocalReplicas, ReplicaCounts, answered_ok, read_counts
from .run import LoadTestResult, LoadTestSettings, percentile, read_samples, run_locust

PHASES = ("steady", "replica loss", "rollout", "scale-up")


@dataclass
class ScenarioRun:
    """What the load test and the servers recorded."""

    hosts: dict[str, str]
    """Role (``kept``, ``rolled``, ``killed``, ``added``) -> loopback address."""
    phases: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Phase -> (start, end), epoch seconds."""
    served: dict[str, dict[str, int]] = field(default_factory=dict)
    """Phase -> replica -> requests it answered (its own metrics)."""
    drain: dict[str, float] = field(default_factory=dict)
    """The rollout: requests ``running`` on the replica when it began to stop, how many it ``answered`` after
    that, ``drained_after_s`` (until nothing ran), its ``exit_status``."""
    joined_to_first_answer_s: float = math.nan
    """Scale-up: seconds from the new replica joining the DNS to its first answered request."""
    result: LoadTestResult | None = None

    def samples(self, phase: str) -> list[dict]:
        start, end = self.phases[phase]
        return [s for s in self.result.samples if start <= s["t"] < end] if self.result else []

    def summary(self) -> dict[str, dict]:
        """Per phase: requests and failures seen by the clients, p50/p95 ms of the successful ones, and each
        replica's share of the requests answered."""
        out = {}
        for phase in self.phases:
            samples = self.samples(phase)
            ok = [s["ms"] for s in samples if s["ok"]]
            served = self.served[phase]
            total = sum(served.values())
            out[phase] = {
                "requests": len(samples),
                "failed": len(samples) - len(ok),
                "p50_ms": percentile(ok, 50),
                "p95_ms": percentile(ok, 95),
                "served": served,
                "shares": {h: n / total for h, n in served.items()} if total else {},
            }
        return out


def _ok(replicas: LocalReplicas, hosts: list[str]) -> dict[str, ReplicaCounts | None]:
    counts = read_counts([replicas.metrics_address(h) for h in hosts])
    return {h: counts[replicas.metrics_address(h)] for h in hosts}


def _wait(predicate: Callable[[], object], what: str, timeout: float, interval: float = 0.1) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)


def run_scenarios(
    replicas: LocalReplicas,
    settings: LoadTestSettings,
    out_dir: Path,
    *,
    phase_requests: int,
    scale_up_requests: int = 1,
    phase_limit_s: float = 90.0,
    warmup: int = 3,
) -> ScenarioRun:
    """Run the four phases (the module's docstring) against ``replicas``, which must run three servers;
    ``settings.host`` is set to their DNS name and the load runs until the phases are done. A phase that
    takes more than ``phase_limit_s`` raises ``TimeoutError``."""
    a, b, c = replicas.running()
    record = ScenarioRun(hosts={"kept": a, "rolled": b, "killed": c})
    settings.host = replicas.grpc_target
    stop = threading.Event()
    outcome: dict[str, object] = {}

    def load() -> None:
        try:
            outcome["result"] = run_locust(
                settings,
                out_dir,
                warmup=warmup,
                replica_metrics=lambda: [replicas.metrics_address(h) for h in replicas.servers],
                stop=stop,
            )
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=load, name="load", daemon=True)

    def loaded() -> bool:
        if not thread.is_alive():
            raise RuntimeError(f"the load test ended early: {outcome.get('error')}")
        return True

    def answered(before: dict[str, ReplicaCounts | None], enough: Callable[[dict[str, int]], bool]):
        """Poll until the requests each replica answered since ``before`` are ``enough``; those counts."""

        def check() -> dict[str, int] | None:
            loaded()
            now = _ok(replicas, list(before))
            served = {h: (now[h] - before[h]).ok for h in before if now[h] is not None}
            return served if enough(served) else None

        return _wait(check, f"requests answered by {list(before)}", phase_limit_s, 0.2)

    def phase(name: str, hosts: list[str], action: Callable[[], None] = lambda: None) -> None:
        start, before = time.time(), _ok(replicas, hosts)
        action()
        record.served[name] = answered(before, lambda served: sum(served.values()) >= phase_requests)
        record.phases[name] = (start, time.time())

    thread.start()
    try:
        _wait(
            lambda: loaded() and len(read_samples(out_dir / "samples.jsonl")) >= settings.users, "load", 120
        )
        phase("steady", [a, b, c])
        phase("replica loss", [a, b], lambda: replicas.kill(c))
        _wait(lambda: loaded() and (replicas.servers[b].in_flight() or 0) >= 1, "a request running on b", 30)
        phase("rollout", [a], lambda: _roll(replicas, b, record))
        start, before = time.time(), _ok(replicas, [a])
        (d,) = replicas.start(1)  # in the DNS once ready
        record.hosts["added"] = d
        joined = time.monotonic()
        before[d] = None  # counted from its start
        answered(before, lambda served: served.get(d, 0) >= 1)
        record.joined_to_first_answer_s = time.monotonic() - joined
        record.served["scale-up"] = answered(before, lambda served: served.get(d, 0) >= scale_up_requests)
        record.phases["scale-up"] = (start, time.time())
    finally:
        stop.set()
        thread.join(timeout=settings.stop_timeout + 60)
    if "error" in outcome:
        raise outcome["error"]
    record.result = outcome["result"]
    return record


def _roll(replicas: LocalReplicas, host: str, record: ScenarioRun) -> None:
    """Stop ``host`` as a rollout does, watching its metrics until it is gone (fills ``record.drain``)."""
    start = time.monotonic()
    replicas.terminate(host)
    url = f"http://{replicas.metrics_address(host)}/metrics"
    text = scrape(url) or ""
    running = metric_total(text, "segevery_requests_in_flight")
    ok_then = last_ok = answered_ok(text)
    drained_after = math.inf
    while (text := scrape(url)) is not None:
        # a counter; its model's metrics vanish when Triton unloads the model at the end
        last_ok = max(last_ok, answered_ok(text))
        if math.isinf(drained_after) and metric_total(text, "segevery_requests_in_flight") == 0:
            drained_after = time.monotonic() - start
        time.sleep(0.05)
    record.drain = {
        "running": running,
        "answered": last_ok - ok_then,
        "drained_after_s": drained_after,
        "exit_status": replicas.wait_exit(host),
    }
