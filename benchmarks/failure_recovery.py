"""Failure recovery: how long the supervised service takes to serve again after a model's stub process is
killed or hung, or tritonserver itself is killed, under light load.

    MOBILESAMV2_SERVER_PYTHON_ENV=work/container-venv \
        flock /tmp/heavy.lock .venv/bin/python -m benchmarks.failure_recovery      # ~10 min on 2 cores
    flock /tmp/heavy.lock .venv/bin/python -m benchmarks.failure_recovery --repeats 1 --scenarios tritonserver
    .venv/bin/python -m benchmarks.failure_recovery --render                        # re-render, no measuring

The service is what ``mobilesamv2-serve`` runs: :class:`~mobilesamv2.runner.local.TritonServer` with its
:class:`~mobilesamv2.runner.supervisor.Supervisor` (stub census every second, a probe every ``--interval``
seconds, every second while failing, restart after 2 failed probes of the last 3). For every scenario a thread
sends SegAny box, SegAny multimask point and SegEvery requests (client deadline ``--client-timeout``); the
fault is injected into the first stub of the model (``kill -9`` or ``SIGSTOP``) or into tritonserver, and the
clock runs until a restarted server (new pid) passes a full probe. ``tests/server/test_self_healing.py``
asserts the same bound (60 s) in CI; this script only measures.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from benchmarks import common, serving
from benchmarks.common import fmt, median, table

NAME = "failure_recovery"
MODELS = ("image_encoder", "prompt_decoder", "interactive_decoder", "object_discovery", "segment_everything")
# The goal of BENCHMARKS.md's Targets table, the bound tests/server/test_self_healing.py asserts
RECOVERY_GOAL_S = 60.0


@dataclass(frozen=True)
class Scenario:
    name: str
    target: str  # a model (its first stub) or "tritonserver"
    sig: int
    watch_stubs: bool = True


SCENARIOS = (
    *(Scenario(f"{m} stub kill -9", m, signal.SIGKILL) for m in MODELS),
    Scenario("image_encoder stub SIGSTOP", "image_encoder", signal.SIGSTOP),
    Scenario(
        "image_encoder stub SIGSTOP, probes only (no stub census)", "image_encoder", signal.SIGSTOP, False
    ),
    Scenario("tritonserver kill -9", "tritonserver", signal.SIGKILL),
)


@dataclass
class Run:
    scenario: str
    recovery_s: float
    detect_s: float | None
    restart_s: float | None
    detected_by: str | None
    requests: int
    failed: int
    slowest_s: float
    errors: list[str] = field(default_factory=list)


@dataclass
class Outcome:
    kind: str
    seconds: float
    error: BaseException | None


class WrongAnswer(AssertionError):
    """A request that succeeded with an answer that does not fit it."""


class Load:
    """One client thread sending SegAny box, SegAny multimask point and SegEvery requests in turn, 0.3 s
    apart, each answer checked (a wrong success is an error too); ``tests/server/test_self_healing.py`` runs
    it as well."""

    def __init__(self, url: str, timeout: float) -> None:
        import numpy as np

        self.url, self.timeout = url, timeout
        self.image = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def durations(self) -> list[float]:
        return [o.seconds for o in self.outcomes]

    @property
    def errors(self) -> list[str]:
        return [type(o.error).__name__ for o in self.outcomes if o.error is not None]

    def _one(self, client, kind: str) -> None:
        if kind == "box":
            seg, prompts = client.segment_anything(self.image, boxes=[[10, 10, 60, 50]]), [0]
        elif kind == "points":
            seg, prompts = client.segment_anything(self.image, points=[[[40, 30]]], multimask=True), [0, 0, 0]
        else:
            seg = client.segment_everything(self.image, max_prompts=2)
            prompts = seg.prompt_index.tolist()[:2]
        size = [*self.image.shape[:2]]
        if seg.prompt_index.tolist() != prompts or list(seg.image_size) != size:
            raise WrongAnswer(f"{kind}: prompts {seg.prompt_index.tolist()}, image size {seg.image_size}")
        if any(list(rle["size"]) != size for rle in seg.rles):
            raise WrongAnswer(f"{kind}: masks of the wrong size")

    def _run(self) -> None:
        from segment_everything_client import SegmentEverythingClient

        kinds = ("box", "points", "everything")
        with SegmentEverythingClient(self.url, timeout=self.timeout, retries=3, backoff=0.2) as client:
            i = 0
            while not self._stop.is_set():
                started, error = time.monotonic(), None
                try:
                    self._one(client, kinds[i % len(kinds)])
                except Exception as exc:  # typed client errors, wrong answers and anything else: recorded
                    error = exc
                self.outcomes.append(Outcome(kinds[i % len(kinds)], time.monotonic() - started, error))
                i += 1
                self._stop.wait(0.3)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(self.timeout + 10)


def _serving(server, probe_timeout: float, limit: float) -> None:
    from mobilesamv2.runner.probe import Prober

    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if server.is_running() and Prober(server.http_url, probe_timeout).run().ok:
            return
        time.sleep(0.5)
    raise RuntimeError(f"not serving after {limit:.0f} s")


def run_scenario(supervisor, scenario: Scenario, client_timeout: float, limit: float = 120.0) -> Run:
    from mobilesamv2.runner.probe import Prober

    server = supervisor.server
    _serving(server, 10.0, limit)
    supervisor.watch_stubs = scenario.watch_stubs
    old_pid = server.pid
    try:
        with Load(server.grpc_url, client_timeout) as load:
            time.sleep(2.0)
            if scenario.target == "tritonserver":
                victim = old_pid
            else:
                victim = server.stub_pids()[scenario.target][0]
            first_event = len(supervisor.events)
            os.kill(victim, scenario.sig)
            started = time.monotonic()
            while True:
                if time.monotonic() - started > limit:
                    raise RuntimeError(f"{scenario.name}: not serving again after {limit:.0f} s")
                if server.pid != old_pid and server.is_running() and Prober(server.http_url, 10.0).run().ok:
                    recovery = time.monotonic() - started
                    break
                time.sleep(0.25)
            time.sleep(2.0)
    finally:
        supervisor.watch_stubs = True
    events = supervisor.events[first_event:]
    restarting = next((e for e in events if e.kind == "restarting"), None)
    restarted = next((e for e in events if e.kind == "restarted"), None)
    # the first of these says what noticed the fault (a probe-triggered restart has no event before it)
    first = next((e for e in events if e.kind in ("server_exited", "stub_lost", "restarting")), None)
    detected_by = (
        None
        if first is None
        else {"server_exited": "exit", "stub_lost": "stub census"}.get(first.kind, "probes")
    )
    return Run(
        scenario=scenario.name,
        recovery_s=recovery,
        detect_s=None if restarting is None else restarting.at - started,
        restart_s=None if restarting is None or restarted is None else restarted.at - restarting.at,
        detected_by=detected_by,
        requests=len(load.durations),
        failed=len(load.errors),
        slowest_s=max(load.durations, default=0.0),
        errors=sorted(set(load.errors)),
    )


def summarize(runs: list[Run]) -> list[dict]:
    """Per scenario: median and max of each duration over its runs, requests failed and sent."""
    rows = []
    for name in dict.fromkeys(r.scenario for r in runs):
        mine = [r for r in runs if r.scenario == name]

        def stats(values: list[float | None]) -> dict[str, float | None]:
            known = [v for v in values if v is not None]
            return {"median": median(known), "max": max(known)} if known else {"median": None, "max": None}

        rows.append({
            "scenario": name, "runs": len(mine),
            "recovery_s": stats([r.recovery_s for r in mine]),
            "detected_by": sorted({r.detected_by or "?" for r in mine}),
            "detect_s": stats([r.detect_s for r in mine]), "restart_s": stats([r.restart_s for r in mine]),
            "failed": sum(r.failed for r in mine), "sent": sum(r.requests for r in mine),
            "slowest_s": max(r.slowest_s for r in mine),
            "errors": sorted({e for r in mine for e in r.errors}),
        })  # fmt: skip
    return rows


def render(results: dict) -> str:
    def cell(stats: dict) -> str:
        return f"{fmt(stats['median'], 1)} ({fmt(stats['max'], 1)})"

    rows = [
        [s["scenario"], cell(s["recovery_s"]), ", ".join(s["detected_by"]), cell(s["detect_s"]),
         cell(s["restart_s"]), f"{s['failed']} / {s['sent']}", fmt(s["slowest_s"], 1)]
        for s in results["scenarios"]
    ]  # fmt: skip
    header = ["fault", "serving again after (s)", "detected by", "detection (s)", "restart (s)",
              "requests failed / sent", "slowest request (s)"]  # fmt: skip
    errors = sorted({e for s in results["scenarios"] for e in s["errors"]})
    settings = results["settings"]
    worst = table(
        ["worst recovery (s)", "slowest request (s)", "client deadline (s)",
         "errors the failed requests raised"],
        [[fmt(max(s["recovery_s"]["max"] for s in results["scenarios"]), 1),
          fmt(max(s["slowest_s"] for s in results["scenarios"]), 1), f"{settings['client_timeout']:g}",
          ", ".join(f"`{e}`" for e in errors) or "none"]],
    )  # fmt: skip
    return "\n\n".join([common.provenance(results), table(header, rows), worst])


def values(results: dict) -> dict[str, str]:
    """The Targets table's cells."""
    worst = max(s["recovery_s"]["max"] for s in results["scenarios"])
    return {
        "worst": f"worst {fmt(worst, 1)} s over {len(results['scenarios'])} faults",
        "worst-status": common.verdict(worst < RECOVERY_GOAL_S),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = common.argument_parser(NAME, __doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--interval", type=float, default=3.0, help="supervisor: seconds between probes")
    parser.add_argument("--client-timeout", type=float, default=15.0)
    parser.add_argument("--drain", type=float, default=3.0, help="seconds a restart lets requests finish")
    parser.add_argument("--scenarios", default="", help="comma-separated substrings of scenario names")
    args = parser.parse_args(argv)
    if args.render:
        return common.rerender(NAME, render, values=values)

    from mobilesamv2.runner.local import TritonServer
    from mobilesamv2.runner.supervisor import Supervisor

    chosen = [
        s for s in SCENARIOS if not args.scenarios or any(p in s.name for p in args.scenarios.split(","))
    ]
    settings = {k: getattr(args, k) for k in ("interval", "client_timeout", "drain", "repeats")}
    results = common.new_results(repository=args.repository, **settings)
    log_path = serving.WORK / NAME / "tritonserver.log"
    server = TritonServer(args.repository, env={"OMP_NUM_THREADS": "1"}, exit_timeout_s=5, log_path=log_path)
    server.start()
    results["settings"]["server_python"] = server.python_env.version
    supervisor = Supervisor(
        server, interval=args.interval, failure_interval=1.0, probe_timeout=10.0, failures=2,
        drain_timeout=args.drain,
    ).start()  # fmt: skip
    runs: list[Run] = []
    try:
        for repeat in range(args.repeats):
            for scenario in chosen:
                runs.append(run_scenario(supervisor, scenario, args.client_timeout))
                serving.log(f"[{repeat + 1}/{args.repeats}] {asdict(runs[-1])}")
    finally:
        supervisor.stop()
        server.stop()
    results["scenarios"] = summarize(runs)
    common.publish(NAME, results, render, values=values)
    return 0


if __name__ == "__main__":
    sys.exit(main())
