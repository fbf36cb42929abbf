"""Overload, deadlines and soak: capacity, then twice the capacity (open loop), then a soak at capacity, on
one server.

    flock /tmp/heavy.lock .venv/bin/python -m benchmarks.overload      # ~18 min on 2 cores
    flock /tmp/heavy.lock .venv/bin/python -m benchmarks.overload --capacity-s 30 --overload-s 60 --soak-s 60
    .venv/bin/python -m benchmarks.overload --render                    # re-render, no measuring

Requests: SegEvery on bus.jpg and zidane.jpg alternating, ``--max-prompts`` 16, each image different (a few
pixels changed: cold embeddings), gRPC, the client's timeout travels with the request, no retries.

1. Capacity: closed loop, ``--workers`` clients for ``--capacity-s``; successful requests per second.
2. Overload: open loop at ``--factor`` x capacity, requests sent on a fixed schedule whatever the answers (64
   sender threads), for ``--overload-s``. Hung = no answer within the timeout + 5 s.
3. Soak: closed loop at capacity for ``--soak-s``; the server tree's RSS sampled every 5 s.
"""

from __future__ import annotations

import math
import queue
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence

from benchmarks import common, serving
from benchmarks.common import fmt, percentile, table

NAME = "overload"
SENDERS = 64
# The goals of BENCHMARKS.md's Targets table
REJECTION_P95_GOAL_MS = 100.0
SOAK_RSS_GROWTH_GOAL = 0.10


class Requests:
    """SegEvery requests on unique images: the i-th alternates bus.jpg / zidane.jpg with its corner pixels set
    from ``i`` (cold embeddings)."""

    def __init__(self, client, max_prompts: int, salt: int) -> None:
        import cv2

        self.client, self.max_prompts, self.salt = client, max_prompts, salt
        self.images = [cv2.imread(str(serving.sample_image(name))) for name in ("bus.jpg", "zidane.jpg")]

    def image(self, i: int) -> bytes:
        return serving.unique_jpeg(self.images[i % len(self.images)], i + self.salt * 1_000_003)

    def send(self, i: int, data: bytes | None = None) -> dict:
        """One request: its outcome and latency."""
        from segment_everything_client.errors import DeadlineExceededError, OverloadedError

        data = data or self.image(i)
        record: dict = {"t": time.time()}
        start = time.perf_counter()
        try:
            seg = self.client.segment_everything(data, max_prompts=self.max_prompts, timings=True)
            record.update(outcome="ok", masks=len(seg), server_ms=(seg.timings or {}).get("total"))
        except OverloadedError:
            record["outcome"] = "rejected"
        except DeadlineExceededError:
            record["outcome"] = "deadline"
        except Exception as exc:
            record.update(outcome="error", error=f"{type(exc).__name__}: {str(exc)[:120]}")
        record["ms"] = (time.perf_counter() - start) * 1e3
        return record


class RssSamples(threading.Thread):
    """The server tree's RSS every ``interval`` s until stopped: ``samples`` = [(epoch s, MB)]."""

    def __init__(self, pid: int, interval: float = 5.0) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval, self.stopped = pid, interval, threading.Event()
        self.samples: list[tuple[float, float]] = []

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            self.samples.append((time.time(), serving.tree_rss_mb(self.pid)))


def closed_loop(requests: Requests, first: int, workers: int, seconds: float) -> tuple[list[dict], int]:
    """``workers`` threads, each sending its next request when the previous one returns, for ``seconds``."""
    records: list[dict] = []
    lock = threading.Lock()
    counter = [first]
    deadline = time.monotonic() + seconds

    def worker() -> None:
        while time.monotonic() < deadline:
            with lock:
                i, counter[0] = counter[0], counter[0] + 1
            record = requests.send(i)
            with lock:
                records.append(record)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return records, counter[0]


def open_loop(
    requests: Requests, first: int, rate: float, seconds: float, timeout: float
) -> tuple[list[dict], int]:
    """Requests at a fixed rate whatever the answers; those without an answer within ``timeout`` + 5 s after
    the last was sent count as hung."""
    count = int(rate * seconds)
    prepared = [requests.image(first + k) for k in range(count)]
    jobs: queue.Queue = queue.Queue()
    records: list[dict] = []

    def sender() -> None:
        while (job := jobs.get()) is not None:
            k, scheduled = job
            record = requests.send(first + k, prepared[k])
            record["start_delay_ms"] = (record["t"] - scheduled) * 1e3
            records.append(record)

    threads = [threading.Thread(target=sender, daemon=True) for _ in range(SENDERS)]
    for t in threads:
        t.start()
    t0 = time.time()
    for k in range(count):
        time.sleep(max(0.0, t0 + k / rate - time.time()))
        jobs.put((k, t0 + k / rate))
    grace = time.time() + timeout + 5.0
    while len(records) < count and time.time() < grace:
        time.sleep(0.2)
    snapshot = list(records)
    for _ in threads:
        jobs.put(None)
    return snapshot + [{"outcome": "hung"}] * (count - len(snapshot)), first + count


def summarize(records: list[dict], timeout: float) -> dict:
    answered = [r for r in records if r["outcome"] != "hung"]
    ok = [r for r in answered if r["outcome"] == "ok"]
    rejected = [r["ms"] for r in answered if r["outcome"] == "rejected"]
    window = (
        max(r["t"] + r["ms"] / 1e3 for r in answered) - min(r["t"] for r in answered) if answered else 0.0
    )
    return {
        "requests": len(records), "ok": len(ok), "rejected": len(rejected),
        "deadline": sum(r["outcome"] == "deadline" for r in answered),
        "other_errors": sum(r["outcome"] == "error" for r in answered),
        "errors": dict(Counter(r["error"] for r in answered if r["outcome"] == "error")),
        "hung": len(records) - len(answered) + sum(r["ms"] > (timeout + 5.0) * 1e3 for r in answered),
        "goodput_rps": len(ok) / window if window else math.nan,
        "ok_p50_ms": percentile([r["ms"] for r in ok], 50),
        "ok_p95_ms": percentile([r["ms"] for r in ok], 95),
        "ok_max_ms": max((r["ms"] for r in ok), default=math.nan),
        "rejected_p50_ms": percentile(rejected, 50), "rejected_p95_ms": percentile(rejected, 95),
        "server_p50_ms": percentile([r.get("server_ms") for r in ok], 50),
        "masks_mean": sum(r["masks"] for r in ok) / len(ok) if ok else math.nan,
        "start_delay_max_ms": max((r.get("start_delay_ms", 0.0) for r in answered), default=0.0),
    }  # fmt: skip


def render(results: dict) -> str:
    cap, over, soak, s = results["capacity"], results["overload"], results["soak"], results["settings"]
    loads = {
        "capacity": f"closed loop, {cap['workers']} clients, {cap['seconds']:.0f} s",
        "overload": f"open loop, {over['rate']:.2f} req/s = {s['factor']:g} x capacity, "
        f"{over['seconds']:.0f} s",
        "soak": f"closed loop, {soak['workers']} clients, {soak['seconds'] / 60:.0f} min",
    }
    rows = [
        [phase, load, p["requests"], p["ok"], p["rejected"], p["deadline"], p["other_errors"], p["hung"],
         fmt(p["goodput_rps"], 3), fmt(p["ok_p50_ms"]), fmt(p["ok_p95_ms"]), fmt(p["ok_max_ms"]),
         fmt(p["rejected_p50_ms"], 1), fmt(p["rejected_p95_ms"], 1), fmt(p["server_p50_ms"]),
         fmt(p["masks_mean"], 1), fmt(p["start_delay_max_ms"])]
        for phase, load in loads.items()
        for p in [results[phase]["summary"]]
    ]  # fmt: skip
    header = ["phase", "load", "requests", "ok", "rejected (overloaded)", "deadline exceeded", "other errors",
              "hung (> timeout + 5 s)", "goodput req/s", "admitted p50 ms", "admitted p95 ms",
              "admitted max ms", "rejection p50 ms", "rejection p95 ms", "server total p50 ms",
              "masks/request", "latest start ms"]  # fmt: skip
    rss = soak["rss"]
    memory = table(
        ["server RSS (tritonserver + stubs)", "MB"],
        [["after start, idle", fmt(results["idle_rss_mb"])],
         ["before the overload", fmt(results["rss_before_overload_mb"])],
         ["soak start", fmt(rss["start_mb"])],
         ["soak end", fmt(rss["end_mb"])], ["soak max", fmt(rss["max_mb"])],
         ["soak's second half, per minute", f"{rss['second_half_mb_per_min']:+.1f}"]],
    )  # fmt: skip
    errors = {**cap["summary"]["errors"], **over["summary"]["errors"], **soak["summary"]["errors"]}
    parts = [common.provenance(results), table(header, rows), memory]
    if errors:
        parts.append(table(["other error", "count"], [[f"`{e}`", n] for e, n in errors.items()]))
    return "\n\n".join(parts)


def values(results: dict) -> dict[str, str]:
    """The Targets table's cells."""
    over, soak, rss = results["overload"]["summary"], results["soak"]["summary"], results["soak"]["rss"]
    growth = rss["end_mb"] / rss["start_mb"] - 1
    return {
        "hung": f"{over['hung']} hung of {over['requests']}; {over['other_errors']} other errors, "
        f"{over['deadline']} deadline exceeded",
        "hung-status": common.verdict(over["hung"] == 0),
        "rejection": f"{over['rejected']} rejected, p50 {fmt(over['rejected_p50_ms'], 1)} ms, p95 "
        f"{fmt(over['rejected_p95_ms'], 1)} ms; goodput {fmt(over['goodput_rps'], 3)} req/s",
        "rejection-status": common.verdict(
            over["rejected"] > 0 and over["rejected_p95_ms"] <= REJECTION_P95_GOAL_MS
        ),
        "soak": f"{soak['requests'] - soak['ok']} failed of {soak['requests']}; RSS "
        f"{fmt(rss['start_mb'])} -> {fmt(rss['end_mb'])} MB ({growth:+.1%})",
        "soak-status": common.verdict(soak["ok"] == soak["requests"] and growth <= SOAK_RSS_GROWTH_GOAL),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = common.argument_parser(NAME, __doc__)
    parser.add_argument("--max-prompts", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=30.0, help="client timeout (s)")
    parser.add_argument("--workers", type=int, default=4, help="the pipeline's 2 instances busy + 2 waiting")
    parser.add_argument("--capacity-s", type=float, default=120.0)
    parser.add_argument("--factor", type=float, default=2.0)
    parser.add_argument("--overload-s", type=float, default=300.0)
    parser.add_argument("--soak-s", type=float, default=600.0)
    args = parser.parse_args(argv)
    if args.render:
        return common.rerender(NAME, render, values=values)
    import numpy as np

    results = common.results_for(args)
    with serving.serve(args.repository, NAME, timeout=args.timeout) as (server, client):
        results["settings"]["allocator_env"] = serving.allocator_env(server.pid)
        requests = Requests(client, args.max_prompts, salt=int(time.time()) % 10_000)
        sampler = RssSamples(server.pid)
        sampler.start()
        results["idle_rss_mb"] = serving.tree_rss_mb(server.pid)
        requests.send(10**6), requests.send(10**6 + 1)  # warm-up, one per image
        serving.log(f"capacity: closed loop, {args.workers} clients, {args.capacity_s:.0f} s")
        records, nxt = closed_loop(requests, 0, args.workers, args.capacity_s)
        capacity = summarize(records, args.timeout)
        results["capacity"] = {"workers": args.workers, "seconds": args.capacity_s, "summary": capacity}
        results["rss_before_overload_mb"] = serving.tree_rss_mb(server.pid)
        rate = args.factor * capacity["goodput_rps"]
        serving.log(f"overload: open loop at {rate:.3f} req/s for {args.overload_s:.0f} s")
        records, nxt = open_loop(requests, nxt, rate, args.overload_s, args.timeout)
        results["overload"] = {
            "rate": rate,
            "seconds": args.overload_s,
            "summary": summarize(records, args.timeout),
        }
        serving.log(f"soak: closed loop, {args.workers} clients, {args.soak_s:.0f} s")
        start_mb, t0 = serving.tree_rss_mb(server.pid), time.time()
        records, _ = closed_loop(requests, nxt, args.workers, args.soak_s)
        end_mb = serving.tree_rss_mb(server.pid)
        sampler.stopped.set()
    during = [(t, mb) for t, mb in sampler.samples if t >= t0] + [(time.time(), end_mb)]
    late = [(t / 60, mb) for t, mb in during if t >= t0 + args.soak_s / 2]
    slope = float(np.polyfit(*zip(*late, strict=True), 1)[0]) if len(late) > 2 else math.nan
    results["soak"] = {
        "workers": args.workers, "seconds": args.soak_s, "summary": summarize(records, args.timeout),
        "rss": {"start_mb": start_mb, "end_mb": end_mb, "max_mb": max(mb for _, mb in during),
                "second_half_mb_per_min": slope},
    }  # fmt: skip
    common.publish(NAME, results, render, values=values)
    return 0


if __name__ == "__main__":
    sys.exit(main())
