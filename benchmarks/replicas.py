"""Replicas under load: requests per replica, failed requests and latency while a replica is killed, one is
rolled out and one is added (``loadtest.scenarios``).

    flock /tmp/heavy.lock .venv/bin/python -m benchmarks.replicas      # ~4 min on 2 cores
    .venv/bin/python -m benchmarks.replicas --render                    # re-render, no measuring

Three tritonservers of one model repository on 127.0.0.1, .2, .3 (the same ports) behind a DNS name on
loopback (``loadtest.replicas``), closing gRPC connections after the Helm chart's 30 s. ``--users`` locust
users of the project's client (gRPC ``round_robin`` over the name, its default retry policy and 10 s resolve
interval) send SegEvery on bus.jpg and zidane.jpg (``--max-prompts``) through four phases of
``--phase-requests`` answered requests each: steady; kill -9 of 127.0.0.3; 127.0.0.2 drained and stopped as
on SIGTERM; 127.0.0.4 added.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from benchmarks import common, serving
from benchmarks.common import fmt, table

NAME = "replicas"
EVENTS = {
    "steady": "three replicas",
    "replica loss": "kill -9 of {killed}",
    "rollout": "{rolled} drained and stopped (SIGTERM)",
    "scale-up": "{added} started, joins the DNS",
}


def render(results: dict) -> str:
    hosts, phases = results["hosts"], results["phases"]
    rows = []
    for phase, p in phases.items():
        shares = " · ".join(f"{h} {fmt(100 * share)}%" for h, share in sorted(p["shares"].items()))
        rows.append(
            [phase, EVENTS[phase].format(**hosts), p["requests"], p["failed"], fmt(p["p50_ms"]),
             fmt(p["p95_ms"]), shares]
        )  # fmt: skip
    drain, total = results["drain"], results["total"]
    events = [
        [f"requests running on {hosts['rolled']} when it began to stop", fmt(drain["running"])],
        [f"of those, answered by {hosts['rolled']}", fmt(drain["answered"])],
        ["drained after (nothing running), s", fmt(drain["drained_after_s"], 2)],
        [f"exit status of {hosts['rolled']}", drain["exit_status"]],
        [f"first request answered by {hosts['added']}, s after it joined the DNS",
         fmt(results["joined_to_first_answer_s"], 1)],
        ["requests in the whole run / failed (client's view)", f"{total['requests']} / {total['failures']}"],
    ]  # fmt: skip
    header = ["phase", "event", "requests", "failed", "p50 ms", "p95 ms", "share of answered requests"]
    return "\n\n".join([common.provenance(results), table(header, rows), table(["", "measured"], events)])


def main(argv: Sequence[str] | None = None) -> int:
    parser = common.argument_parser(NAME, __doc__)
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--max-prompts", type=int, default=8)
    parser.add_argument("--phase-requests", type=int, default=100, help="answered requests per phase")
    parser.add_argument("--max-connection-age-s", type=float, default=30.0, help="the Helm chart's")
    args = parser.parse_args(argv)
    if args.render:
        return common.rerender(NAME, render)
    from loadtest.replicas import LocalReplicas
    from loadtest.run import LoadTestSettings
    from loadtest.scenarios import run_scenarios

    results = common.results_for(args)
    load = LoadTestSettings(
        users=args.users,
        spawn_rate=args.users,
        run_time="1h",  # stopped once the phases are done
        max_prompts=args.max_prompts,
        request_timeout=60,
        stop_timeout=30,
    )
    with LocalReplicas(
        args.repository,
        log_dir=serving.WORK / NAME / "logs",
        env={"OMP_NUM_THREADS": "1"},
        max_connection_age_s=args.max_connection_age_s,
    ) as replicas:
        serving.log("starting 3 replicas")
        replicas.start(3)
        serving.log(f"load: {args.users} users, {args.phase_requests} answered requests per phase")
        run = run_scenarios(
            replicas,
            load,
            serving.WORK / NAME / "load",
            phase_requests=args.phase_requests,
            scale_up_requests=10,
            phase_limit_s=600,
        )
    summary = run.result.summary
    results.update(
        hosts=run.hosts,
        phases=run.summary(),
        drain=run.drain,
        joined_to_first_answer_s=run.joined_to_first_answer_s,
        total={"requests": summary.requests, "failures": summary.failures, "errors": summary.errors},
    )
    common.publish(NAME, results, render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
