"""Overload, deadlines and soak: capacity, then twice the capacity for 5 minutes (open loop), then a 10-minute
soak at capacity, on one server.

    flock /tmp/heavy.lock .venv/bin/python -m benchmarks.overload           # ~18 min
    flock /tmp/heavy.lock .venv/bin/python -m benchmarks.overload --capacity-s 30 --overload-s 60 --soak-s 60

Requests: SegEvery on bus.jpg and zidane.jpg alternating, max_prompts 16, RLE output, each request's image
different (the JPEG re-encoded with a few pixels changed, so the server's embedding cache never helps: cold
embeddings), gRPC, the client's timeout 30 s (it travels with the request: the server drops work whose
deadline passed), no client retries.

1. Capacity: closed loop, ``--workers`` (4: the pipeline's 2 instances busy plus 2 waiting) for
   ``--capacity-s``; successful requests per second.
2. Overload: open loop at ``--factor`` (2) x capacity, requests sent on a fixed schedule whatever the answers
   (a pool of 64 sender threads), for ``--overload-s``. The pipeline admits 2 running + 4 queued and refuses
   the rest at once (``OverloadedError``, gRPC UNAVAILABLE "Exceeds maximum queue size"). Reported: admitted
   requests' latency, rejections and their latency, goodput, hung requests (no answer within timeout + 5 s),
   other errors.
3. Soak: closed loop at capacity (``--workers``) for ``--soak-s``; the server's RSS (tritonserver + stubs)
   sampled every 5 s.

Raw numbers: ``benchmarks/results/overload.json``; the tables go into BENCHMARKS.md between their markers.
"""

from __future__ import annotations

import argparse
import math
import os
import queue
import shlex
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a file
    sys.path.insert(0, str(REPO_ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import e2e  # noqa: E402
from benchmarks.sections import publish, rerender  # noqa: E402
from loadtest.run import percentile  # noqa: E402

START, END = "<!-- overload:start -->", "<!-- overload:end -->"
RESULTS = REPO_ROOT / "benchmarks" / "results" / "overload.json"
DEFAULT_REPOSITORY = REPO_ROOT / "work" / "test-cache" / "model_repository"
SENDERS = 64


class Images:
    """Unique JPEGs: sample ``i`` alternates bus.jpg / zidane.jpg with a 4x4 corner block set from ``i``."""

    def __init__(self, paths: Sequence[Path], salt: int) -> None:
        self.images = [(p.name, cv2.imread(str(p))) for p in paths]
        self.salt = salt

    def get(self, i: int) -> tuple[str, bytes]:
        name, bgr = self.images[i % len(self.images)]
        image = bgr.copy()
        n = i + self.salt * 1_000_003
        image[:4, :4] = np.array([n & 255, (n >> 8) & 255, (n >> 16) & 255], np.uint8)
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 92])
        assert ok
        return name, data.tobytes()

    def batch(self, start: int, count: int) -> list[tuple[str, bytes]]:
        return [self.get(i) for i in range(start, start + count)]


def one_request(client, name: str, data: bytes, max_prompts: int) -> dict:
    from segment_everything_client.errors import DeadlineExceededError, OverloadedError

    started = time.time()
    t0 = time.perf_counter()
    record: dict = {"t": started, "image": name}
    try:
        seg = client.segment_everything(data, max_prompts=max_prompts, timings=True)
        record.update(outcome="ok", masks=len(seg), server_total_ms=(seg.timings or {}).get("total"))
    except OverloadedError as exc:
        record.update(outcome="rejected", error=str(exc)[:200])
    except DeadlineExceededError as exc:
        record.update(outcome="deadline", error=str(exc)[:200])
    except Exception as exc:
        record.update(outcome="error", error=f"{type(exc).__name__}: {str(exc)[:200]}")
    record["ms"] = (time.perf_counter() - t0) * 1e3
    return record


class RssSampler:
    """The server tree's RSS every ``interval`` s, in a thread: ``samples`` = [(epoch s, MB)]."""

    def __init__(self, pid: int, interval: float = 5.0) -> None:
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> float:
        mb = e2e.tree_counters(self.pid)["rss_mb"]
        self.samples.append((time.time(), mb))
        return mb

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def closed_loop(client, images: Images, first: int, workers: int, seconds: float, max_prompts: int) -> dict:
    """``workers`` threads, each sending its next request when the previous one returns, for ``seconds``."""
    records: list[dict] = []
    lock = threading.Lock()
    counter = [first]
    deadline = time.monotonic() + seconds
    prepared = dict(enumerate(images.batch(first, int(seconds * 1.5) + workers * 4), start=first))

    def worker() -> None:
        while time.monotonic() < deadline:
            with lock:
                i = counter[0]
                counter[0] += 1
            name, data = prepared[i] if i in prepared else images.get(i)
            record = one_request(client, name, data, max_prompts)
            with lock:
                records.append(record)

    started = time.time()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {
        "workers": workers,
        "seconds": seconds,
        "started": started,
        "records": records,
        "next": counter[0],
    }


def open_loop(
    client, images: Images, first: int, rate: float, seconds: float, max_prompts: int, timeout: float
) -> dict:
    """Requests at a fixed rate (one every 1/rate s) whatever the answers; a pool of sender threads."""
    count = int(rate * seconds)
    prepared = images.batch(first, count)
    jobs: queue.Queue = queue.Queue()
    records: list[dict] = []
    lock = threading.Lock()
    outstanding: dict[int, float] = {}

    def sender() -> None:
        while True:
            job = jobs.get()
            if job is None:
                return
            k, scheduled = job
            name, data = prepared[k]
            with lock:
                outstanding[k] = time.time()
            record = one_request(client, name, data, max_prompts)
            record.update(k=k, start_delay_ms=(record["t"] - scheduled) * 1e3)
            with lock:
                outstanding.pop(k, None)
                records.append(record)

    threads = [threading.Thread(target=sender, daemon=True) for _ in range(SENDERS)]
    for t in threads:
        t.start()
    t0 = time.time()
    for k in range(count):
        scheduled = t0 + k / rate
        delay = scheduled - time.time()
        if delay > 0:
            time.sleep(delay)
        jobs.put((k, scheduled))
    sent = time.time()
    grace = timeout + 5.0
    while time.time() < sent + grace:  # every request must have its answer within timeout + 5 s
        with lock:
            if len(records) == count:
                break
        time.sleep(0.2)
    with lock:
        hung = sorted(outstanding)
        snapshot = list(records)
    for _ in threads:
        jobs.put(None)
    return {
        "rate": rate,
        "seconds": seconds,
        "count": count,
        "started": t0,
        "sent_s": sent - t0,
        "records": snapshot,
        "hung": hung,
        "next": first + count,
    }


def summarize(phase: dict, timeout: float) -> dict:
    records = phase["records"]
    ok = [r for r in records if r["outcome"] == "ok"]
    rejected = [r for r in records if r["outcome"] == "rejected"]
    if records:
        window = max(r["t"] + r["ms"] / 1e3 for r in records) - min(r["t"] for r in records)
    else:
        window = math.nan
    slow = [r for r in records if r["ms"] > (timeout + 5.0) * 1e3]
    return {
        "requests": len(records) + len(phase.get("hung", [])),
        "ok": len(ok),
        "rejected": len(rejected),
        "deadline": sum(r["outcome"] == "deadline" for r in records),
        "errors": dict(Counter(r.get("error", "")[:120] for r in records if r["outcome"] == "error")),
        "other_errors": sum(r["outcome"] == "error" for r in records),
        "hung": len(phase.get("hung", [])) + len(slow),
        "window_s": window,
        "goodput_rps": len(ok) / window if window else math.nan,
        "ok_p50_ms": percentile([r["ms"] for r in ok], 50),
        "ok_p95_ms": percentile([r["ms"] for r in ok], 95),
        "ok_p99_ms": percentile([r["ms"] for r in ok], 99),
        "ok_max_ms": max((r["ms"] for r in ok), default=math.nan),
        "rejected_p50_ms": percentile([r["ms"] for r in rejected], 50),
        "rejected_p95_ms": percentile([r["ms"] for r in rejected], 95),
        "rejected_max_ms": max((r["ms"] for r in rejected), default=math.nan),
        "server_total_p50_ms": percentile([r["server_total_ms"] for r in ok if r.get("server_total_ms")], 50),
        "masks_mean": sum(r.get("masks", 0) for r in ok) / len(ok) if ok else math.nan,
        "start_delay_max_ms": max((r.get("start_delay_ms", 0.0) for r in records), default=math.nan),
    }


# --- report -------------------------------------------------------------------------------------------------


def _f(value: float | None, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.{digits}f}"


def render(results: dict) -> str:
    cap, over, soak = results["capacity"], results["overload"], results["soak"]
    cs, os_, ss = cap["summary"], over["summary"], soak["summary"]
    rss = soak["rss"]
    s = results["settings"]
    lines = [
        "## Overload, deadlines and soak (`python -m benchmarks.overload`)",
        "",
        f"Measured {results['finished']} on {results['machine']}, one server (the launcher's defaults: "
        f"allocator {results['allocator']}, embedding cache on). Requests: SegEvery, bus.jpg and zidane.jpg "
        f"alternating, max_prompts {s['max_prompts']}, every image different (re-encoded with a few pixels "
        "changed: cold embeddings), gRPC, client timeout "
        f"{s['timeout']:g} s (it travels with the request), no retries. Admission control: 2 pipeline "
        "instances, a queue of 4, refused beyond.",
        "",
        "| phase | load | requests | ok | rejected (overloaded) | deadline exceeded | other errors | hung "
        "(> timeout + 5 s) | goodput req/s | admitted p50 ms | admitted p95 ms | admitted max ms | "
        "rejection p50 ms | rejection p95 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, summary, load in (
        ("capacity", cs, f"closed loop, {cap['workers']} clients, {cap['seconds']:.0f} s"),
        (
            "overload",
            os_,
            f"open loop, {over['rate']:.2f} req/s = {s['factor']:g} x capacity, {over['seconds']:.0f} s",
        ),
        ("soak", ss, f"closed loop, {soak['workers']} clients, {soak['seconds'] / 60:.0f} min"),
    ):
        lines.append(
            f"| {name} | {load} | {summary['requests']} | {summary['ok']} | {summary['rejected']} | "
            f"{summary['deadline']} | {summary['other_errors']} | {summary['hung']} | "
            f"{_f(summary['goodput_rps'], 3)} | {_f(summary['ok_p50_ms'])} | {_f(summary['ok_p95_ms'])} | "
            f"{_f(summary['ok_max_ms'])} | {_f(summary['rejected_p50_ms'], 1)} | "
            f"{_f(summary['rejected_p95_ms'], 1)} |"
        )
    errors = {**os_["errors"], **ss["errors"], **cs["errors"]}
    lines += [
        "",
        f"Capacity: **{cs['goodput_rps']:.3f} requests/s** (server total p50 "
        f"{_f(cs['server_total_p50_ms'])} ms per request, {cs['masks_mean']:.1f} masks/request). Under "
        "2x overload the goodput was "
        f"{os_['goodput_rps']:.3f} req/s ({os_['goodput_rps'] / cs['goodput_rps']:.0%} of capacity); the "
        f"senders started each request at most {_f(os_['start_delay_max_ms'])} ms late.",
        "",
        f"Soak RSS (tritonserver + stubs): {rss['start_mb']:,.0f} MB at the start of the soak, "
        f"{rss['end_mb']:,.0f} MB at the end, max {rss['max_mb']:,.0f} MB (after start, idle: "
        f"{results['idle_rss_mb']:,.0f} MB; before the overload phase "
        f"{results['rss_before_overload_mb']:,.0f} MB). Last 5 minutes of the soak: "
        f"{rss['last_half_slope_mb_per_min']:+.1f} MB/min.",
    ]
    if errors:
        lines += ["", "Other errors: " + "; ".join(f"{n} x `{e}`" for e, n in errors.items())]
    lines += ["", f"Reproduce: `{results['command']}`."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    parser.add_argument("--max-prompts", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--capacity-s", type=float, default=120.0)
    parser.add_argument("--factor", type=float, default=2.0)
    parser.add_argument("--overload-s", type=float, default=300.0)
    parser.add_argument("--soak-s", type=float, default=600.0)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "BENCHMARKS.md")
    parser.add_argument("--json", type=Path, default=RESULTS)
    parser.add_argument("--render", action="store_true", help="only re-render from --json")
    args = parser.parse_args(argv)
    if args.render:
        return rerender(args.json, args.out, START, END, render)

    os.environ.setdefault("YOLO_OFFLINE", "1")
    from benchmarks.environment import cpu_model
    from mobilesamv2.assets import sample_images
    from mobilesamv2.runner.local import TritonServer
    from segment_everything_client import SegmentEverythingClient

    started = time.time()

    def log(message: str) -> None:
        print(f"[{(time.time() - started) / 60:5.1f} min] {message}", flush=True)

    images = Images(sample_images(), salt=int(started) % 10_000)
    run_dir = REPO_ROOT / "work" / "benchmarks" / "overload"
    run_dir.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "command": shlex.join(
            ["flock", "/tmp/heavy.lock", ".venv/bin/python", "-m", "benchmarks.overload", *argv]
        ),
        "machine": f"{cpu_model()}, {len(os.sched_getaffinity(0))} cores",
        "settings": vars(args)
        | {"out": str(args.out), "json": str(args.json), "repository": str(args.repository)},
    }
    with (
        TritonServer(args.repository, log_path=run_dir / "tritonserver.log", startup_timeout=300) as server,
        SegmentEverythingClient(server.grpc_url, timeout=args.timeout, retries=0) as client,
    ):
        env = Path(f"/proc/{server.pid}/environ").read_bytes().split(b"\0")
        results["allocator"] = (
            ", ".join(e.decode() for e in env if e.split(b"=")[0].decode() in e2e.ALLOCATOR_KEYS)
            or "default: nothing process-wide, the ONNX Runtime stubs tune their own heap"
        )
        sampler = RssSampler(server.pid).start()
        results["idle_rss_mb"] = sampler.sample()
        for i in range(2):  # warm-up, one per image
            one_request(client, *images.get(10**6 + i), args.max_prompts)
        log(f"capacity: closed loop, {args.workers} clients, {args.capacity_s:.0f} s")
        cap = closed_loop(client, images, 0, args.workers, args.capacity_s, args.max_prompts)
        cap["summary"] = summarize(cap, args.timeout)
        capacity = cap["summary"]["goodput_rps"]
        log(f"  {capacity:.3f} req/s, p50 {cap['summary']['ok_p50_ms']:.0f} ms, {cap['summary']}")
        results["capacity"] = cap
        results["rss_before_overload_mb"] = sampler.sample()
        rate = args.factor * capacity
        log(f"overload: open loop at {rate:.3f} req/s for {args.overload_s:.0f} s")
        over = open_loop(client, images, cap["next"], rate, args.overload_s, args.max_prompts, args.timeout)
        over["summary"] = summarize(over, args.timeout)
        log(f"  {over['summary']}")
        results["overload"] = over
        log(f"soak: closed loop, {args.workers} clients, {args.soak_s:.0f} s")
        soak_start_rss = sampler.sample()
        soak_t0 = time.time()
        soak = closed_loop(client, images, over["next"], args.workers, args.soak_s, args.max_prompts)
        soak_end_rss = sampler.sample()
        soak["summary"] = summarize(soak, args.timeout)
        during = [(t, mb) for t, mb in sampler.samples if t >= soak_t0]
        second = [(t, mb) for t, mb in during if t >= soak_t0 + args.soak_s / 2]
        slope = (
            float(np.polyfit([t / 60 for t, _ in second], [mb for _, mb in second], 1)[0])
            if len(second) > 2
            else math.nan
        )
        soak["rss"] = {
            "start_mb": soak_start_rss,
            "end_mb": soak_end_rss,
            "max_mb": max(mb for _, mb in during),
            "last_half_slope_mb_per_min": slope,
        }
        log(f"  {soak['summary']}; rss {soak['rss']}")
        results["soak"] = soak
        sampler.stop()
        results["rss_samples"] = sampler.samples
    publish(results, args.json, args.out, START, END, render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
