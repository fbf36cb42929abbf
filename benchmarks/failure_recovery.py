"""Failure recovery: how long the supervised service takes to serve again after a model's stub process is
killed or hung, or tritonserver itself is killed, under light load. Writes the "Failure recovery" section of
``BENCHMARKS.md`` (other sections are kept).

    flock /tmp/heavy.lock .venv/bin/python benchmarks/failure_recovery.py                 # ~10 min on 2 cores
    flock /tmp/heavy.lock .venv/bin/python benchmarks/failure_recovery.py --repeats 1 --out work/fr.md
    .venv/bin/python benchmarks/failure_recovery.py --render work/benchmarks/failure-recovery-<t>/results.json

The service is what ``mobilesamv2-serve`` runs: :class:`~mobilesamv2.runner.local.TritonServer` with its
:class:`~mobilesamv2.runner.supervisor.Supervisor` (stub census every second, a probe every ``--interval``
seconds, every second while failing, restart after 2 failed probes of the last 3). For every scenario a thread
sends SegAny box, SegAny multimask point and SegEvery requests (client deadline ``--client-timeout``); the
fault is injected into the first stub of the model (``kill -9`` or ``SIGSTOP``) or into tritonserver, and the
clock runs until a restarted server (new pid) passes a full probe. ``tests/server/test_self_healing.py``
asserts the same bounds (< 60 s) in CI; this script only measures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a file: python benchmarks/failure_recovery.py
    sys.path.insert(0, str(REPO_ROOT))

DEFAULT_REPOSITORY = REPO_ROOT / "work" / "test-cache" / "model_repository"
DEFAULT_OUT = REPO_ROOT / "BENCHMARKS.md"
START, END = "<!-- failure-recovery:start -->", "<!-- failure-recovery:end -->"
MODELS = ("image_encoder", "prompt_decoder", "interactive_decoder", "object_discovery", "segment_everything")


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


class Load:
    """One client thread: SegAny box, SegAny multimask point, SegEvery in turn, 0.3 s apart."""

    def __init__(self, url: str, timeout: float) -> None:
        import numpy as np

        self.url, self.timeout = url, timeout
        self.image = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
        self.durations: list[float] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from segment_everything_client import SegmentEverythingClient

        calls = (
            lambda c: c.segment_anything(self.image, boxes=[[10, 10, 60, 50]]),
            lambda c: c.segment_anything(self.image, points=[[[40, 30]]], multimask=True),
            lambda c: c.segment_everything(self.image, max_prompts=2),
        )
        with SegmentEverythingClient(self.url, timeout=self.timeout, retries=3, backoff=0.2) as client:
            i = 0
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    calls[i % len(calls)](client)
                except Exception as exc:
                    self.errors.append(type(exc).__name__)
                self.durations.append(time.monotonic() - started)
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


def render(results: dict) -> str:
    """The markdown section (between its markers) from the results dict."""
    settings = results["settings"]
    intro = (
        "Supervised service (`mobilesamv2-serve`'s supervisor: stub census every second, a probe every "
        f"{settings['interval']:g} s, every second while failing, restart after 2 failed probes of the "
        "last 3) under light load (one client: SegAny box, SegAny multimask point, SegEvery in turn, "
        f"deadline {settings['client_timeout']:g} s). Recovery = from the fault until a restarted server "
        "passes a full probe (real requests through every model); "
        f"{settings['repeats']} run(s) per scenario, median (max). Machine: {results['machine']}."
    )
    header = (
        "| fault | serving again after (s) | detected by | detection (s) | restart (s) "
        "| requests failed / sent | slowest request (s) |"
    )
    lines = [START, "## Failure recovery", "", intro, "", header, "|---|---|---|---|---|---|---|"]
    by_scenario: dict[str, list[dict]] = {}
    for run in results["runs"]:
        by_scenario.setdefault(run["scenario"], []).append(run)

    def cell(values: list[float | None]) -> str:
        values = [v for v in values if v is not None]
        if not values:
            return "–"
        return f"{statistics.median(values):.1f} ({max(values):.1f})"

    for name, runs in by_scenario.items():
        detected = ", ".join(sorted({r["detected_by"] or "?" for r in runs}))
        failed = sum(r["failed"] for r in runs)
        sent = sum(r["requests"] for r in runs)
        recovery, detect = cell([r["recovery_s"] for r in runs]), cell([r["detect_s"] for r in runs])
        restart, slowest = cell([r["restart_s"] for r in runs]), max(r["slowest_s"] for r in runs)
        lines.append(
            f"| {name} | {recovery} | {detected} | {detect} | {restart} | {failed} / {sent} | {slowest:.1f} |"
        )
    worst = max(r["recovery_s"] for r in results["runs"])
    slowest = max(r["slowest_s"] for r in results["runs"])
    kinds = ", ".join(f"`{k}`" for k in sorted({e for r in results["runs"] for e in r["errors"]})) or "none"
    summary = (
        f"Worst recovery {worst:.1f} s (bound asserted by `tests/server/test_self_healing.py`: 60 s). "
        f"Slowest request {slowest:.1f} s against its {settings['client_timeout']:g} s deadline; the failed "
        f"requests raised {kinds} (the client's typed errors: refused while restarting, models loading, the "
        f"broken model's error). Restart = SIGTERM with {settings['drain']:g} s to drain, SIGKILL of the "
        "server's process group (stubs included), start on the same ports with the models' warm-up."
    )
    reproduce = f"Reproduce: `{results['command']}` (repository: `{results['repository']}`)."
    lines += ["", summary, "", reproduce, END]
    return "\n".join(lines) + "\n"


def merge_into(document: str, block: str) -> str:
    """``document`` with ``block`` in place of its previous failure-recovery section, or appended."""
    if START in document and END in document:
        head, rest = document.split(START, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        return head + block + ("\n" + tail if tail else "")
    return document.rstrip("\n") + "\n\n" + block


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--interval", type=float, default=3.0, help="supervisor: seconds between probes")
    parser.add_argument("--client-timeout", type=float, default=15.0)
    parser.add_argument("--drain", type=float, default=3.0, help="seconds a restart lets requests finish")
    parser.add_argument("--scenarios", default="", help="comma-separated substrings of scenario names")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--render", type=Path, default=None, help="re-render a results.json, measure nothing")
    args = parser.parse_args(argv)
    if args.render is not None:
        return write(json.loads(args.render.read_text()), args.out)

    from mobilesamv2.runner.local import TritonServer
    from mobilesamv2.runner.supervisor import Supervisor

    chosen = [
        s for s in SCENARIOS if not args.scenarios or any(p in s.name for p in args.scenarios.split(","))
    ]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = REPO_ROOT / "work" / "benchmarks" / f"failure-recovery-{stamp}"
    work.mkdir(parents=True, exist_ok=True)
    server = TritonServer(
        args.repository, env={"OMP_NUM_THREADS": "1"}, exit_timeout_s=5, log_path=work / "tritonserver.log"
    ).start()
    supervisor = Supervisor(
        server, interval=args.interval, failure_interval=1.0, probe_timeout=10.0, failures=2,
        drain_timeout=args.drain,
    ).start()  # fmt: skip
    runs: list[Run] = []
    try:
        for repeat in range(args.repeats):
            for scenario in chosen:
                run = run_scenario(supervisor, scenario, args.client_timeout)
                runs.append(run)
                print(
                    f"[{repeat + 1}/{args.repeats}] {scenario.name}: serving again after "
                    f"{run.recovery_s:.1f} s (detected by {run.detected_by} after {run.detect_s or 0:.1f} s, "
                    f"restart {run.restart_s or 0:.1f} s; {run.failed}/{run.requests} requests failed)",
                    flush=True,
                )
    finally:
        supervisor.stop()
        server.stop()
    from mobilesamv2.runner.local import PYTHON_ENV_VAR

    env = f"{PYTHON_ENV_VAR}={os.environ[PYTHON_ENV_VAR]} " if os.environ.get(PYTHON_ENV_VAR) else ""
    repeats = f" --repeats {args.repeats}" if args.repeats != 3 else ""
    command = f"{env}flock /tmp/heavy.lock .venv/bin/python benchmarks/failure_recovery.py{repeats}"
    results = {
        "settings": {
            "interval": args.interval,
            "client_timeout": args.client_timeout,
            "drain": args.drain,
            "repeats": args.repeats,
        },
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python models on "
        f"Python {server.python_env.version}",
        "repository": str(args.repository.relative_to(REPO_ROOT) if args.repository.is_relative_to(REPO_ROOT)
                          else args.repository),
        "command": command,
        "runs": [asdict(r) for r in runs],
    }  # fmt: skip
    (work / "results.json").write_text(json.dumps(results, indent=2))
    print(f"raw results: {work / 'results.json'}")
    return write(results, args.out)


def write(results: dict, out: Path) -> int:
    block = render(results)
    existing = out.read_text() if out.exists() else ""
    out.write_text(merge_into(existing, block))
    print(block)
    print(f"section written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
