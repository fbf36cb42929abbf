"""Run the locust load test headless, write its reports, print percentiles and throughput, enforce bounds.

    python -m loadtest.run --host 127.0.0.1:8001 --users 4 --spawn-rate 4 --run-time 5m --max-p95-ms 30000
    python -m loadtest.run --protocol http --host 10.0.0.7:8000 --users 8 --run-time 2m --max-prompts 32
    # several replicas (requests per replica read from each one's metrics port, --metrics-port 8002):
    python -m loadtest.run --host ipv4:10.0.0.7:8001,10.0.0.8:8001 --users 8 --run-time 2m
    # starts a local Triton (--replicas 3: three, on 127.0.0.1-3, behind one DNS name):
    python -m loadtest.run --model-repository model_repository --users 2 --run-time 60s

Reports go to ``--out`` (default ``work/loadtest/<time>/``): locust's CSV files (``locust_stats.csv``, ...),
its HTML report (``report.html``), one JSON line per request (``samples.jsonl``) and ``summary.json``.
Percentiles are computed from the exact per-request latencies (locust's own CSV rounds them to two significant
digits); when no samples file exists (e.g. a distributed run) they come from locust's aggregated CSV row.
Requests per replica are the difference of each replica's own counters (on its metrics port; see
``loadtest.replicas.ReplicaCounts``) between the start and the end of the run.

Exit status: 0 within bounds, 1 a bound exceeded (failure ratio, p95, or no request completed), 2 the run
itself could not be made (server unreachable, locust crashed).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from segment_everything_client import SegmentEverythingClient
from segment_everything_client.errors import SegmentEverythingError

if __package__:
    from .common import load_images, request_settings
    from .replicas import LocalReplicas, metrics_addresses, read_counts
    from .stats import percentile
else:  # run as a script: python loadtest/run.py
    from common import load_images, request_settings
    from replicas import LocalReplicas, metrics_addresses, read_counts
    from stats import percentile

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT_ROOT = REPO_ROOT / "work" / "loadtest"
CSV_PREFIX = "locust"
EXIT_OK, EXIT_BOUNDS, EXIT_ERROR = 0, 1, 2


# --- pure functions: durations, percentiles, summaries, bounds ----------------------------------------------


def parse_duration(text: str) -> float:
    """Locust's ``--run-time`` syntax in seconds: ``90``, ``90s``, ``5m``, ``1h30m``, ``1m30s``."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r} (use e.g. 60s, 5m, 1h30m)")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


@dataclass
class Summary:
    """One load test's outcome. Latencies (ms) are those of successful requests; throughput counts successful
    requests per second between the first request's start and the last one's end."""

    requests: int
    failures: int
    throughput_rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    window_s: float
    source: str  # "samples" (exact) or "locust-csv" (locust's rounded aggregate)
    errors: dict[str, int] = field(default_factory=dict)
    response_bytes_mean: float = math.nan
    masks_mean: float = math.nan
    replicas: dict[str, dict[str, int] | None] = field(default_factory=dict)
    """Requests each replica's metrics counted during the run, ``{"ok": n, "failed": m}`` (None: that replica
    did not answer at the end), by metrics address."""

    @property
    def failure_ratio(self) -> float:
        return self.failures / self.requests if self.requests else math.nan

    def to_dict(self) -> dict:
        out = asdict(self)
        out["failure_ratio"] = self.failure_ratio
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}


def summarize_samples(records: Iterable[Mapping]) -> Summary:
    """Summary of the locustfile's per-request records (``t`` start epoch s, ``ms``, ``ok``, ``bytes``...)."""
    records = list(records)
    ok = [r for r in records if r.get("ok")]
    latencies = [float(r["ms"]) for r in ok]
    errors = Counter(str(r.get("error") or "unknown error")[:200] for r in records if not r.get("ok"))
    if records:
        window = max(r["t"] + r["ms"] / 1e3 for r in records) - min(r["t"] for r in records)
    else:
        window = 0.0
    return Summary(
        requests=len(records),
        failures=len(records) - len(ok),
        throughput_rps=len(ok) / window if window > 0 else math.nan,
        p50_ms=percentile(latencies, 50),
        p95_ms=percentile(latencies, 95),
        p99_ms=percentile(latencies, 99),
        mean_ms=sum(latencies) / len(latencies) if latencies else math.nan,
        max_ms=max(latencies) if latencies else math.nan,
        window_s=window,
        source="samples",
        errors=dict(errors),
        response_bytes_mean=sum(r.get("bytes", 0) for r in ok) / len(ok) if ok else math.nan,
        masks_mean=sum(r.get("masks", 0) for r in ok) / len(ok) if ok else math.nan,
    )


def read_samples(path: Path) -> list[dict]:
    """The JSON lines of ``path``; a torn last line (a killed writer) is skipped."""
    records = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def _float(row: Mapping[str, str], key: str) -> float:
    value = (row.get(key) or "").strip()
    try:
        return float(value)
    except ValueError:
        return math.nan


def summary_from_stats_csv(path: Path, run_time_s: float | None = None) -> Summary:
    """Summary from the ``Aggregated`` row of locust's ``*_stats.csv`` (percentiles rounded by locust)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    row = next((r for r in rows if r.get("Name") == "Aggregated"), None)
    if row is None:
        raise ValueError(f"no 'Aggregated' row in {path}")
    requests = int(_float(row, "Request Count") or 0)
    failures = int(_float(row, "Failure Count") or 0)
    rps = _float(row, "Requests/s")
    fps = _float(row, "Failures/s")
    return Summary(
        requests=requests,
        failures=failures,
        throughput_rps=rps - (fps if not math.isnan(fps) else 0.0),
        p50_ms=_float(row, "50%"),
        p95_ms=_float(row, "95%"),
        p99_ms=_float(row, "99%"),
        mean_ms=_float(row, "Average Response Time"),
        max_ms=_float(row, "Max Response Time"),
        window_s=run_time_s if run_time_s is not None else math.nan,
        source="locust-csv",
        response_bytes_mean=_float(row, "Average Content Size"),
    )


@dataclass(frozen=True)
class Bounds:
    """Pass/fail limits: at most this failure ratio (0 = no failure allowed), p95 at most ``max_p95_ms``
    (None: unchecked), at least ``min_requests`` requests."""

    max_failure_ratio: float = 0.0
    max_p95_ms: float | None = None
    min_requests: int = 1


def check_bounds(summary: Summary, bounds: Bounds) -> list[str]:
    """The bounds ``summary`` violates, as sentences; empty when it passes."""
    violations = []
    if summary.requests < bounds.min_requests:
        violations.append(
            f"{summary.requests} requests completed, fewer than the {bounds.min_requests} required"
        )
    if summary.requests and summary.failure_ratio > bounds.max_failure_ratio:
        violations.append(
            f"failure ratio {summary.failure_ratio:.4f} ({summary.failures}/{summary.requests}) "
            f"> {bounds.max_failure_ratio:.4f}"
        )
    if bounds.max_p95_ms is not None:
        if math.isnan(summary.p95_ms):
            violations.append("p95 unknown (no successful request)")
        elif summary.p95_ms > bounds.max_p95_ms:
            violations.append(f"p95 {summary.p95_ms:.1f} ms > {bounds.max_p95_ms:.1f} ms")
    return violations


def format_summary(summary: Summary, bounds: Bounds | None = None) -> str:
    lines = [
        (
            f"requests {summary.requests}, failures {summary.failures} "
            f"({100 * (summary.failure_ratio or 0):.2f}%), throughput {summary.throughput_rps:.3f} req/s "
            f"over {summary.window_s:.1f} s"
        ),
        (
            f"latency ms ({summary.source}): p50 {summary.p50_ms:.1f}  p95 {summary.p95_ms:.1f}  "
            f"p99 {summary.p99_ms:.1f}  mean {summary.mean_ms:.1f}  max {summary.max_ms:.1f}"
        ),
    ]
    if not math.isnan(summary.masks_mean):
        lines.append(
            f"masks per response {summary.masks_mean:.1f}, response {summary.response_bytes_mean / 1e3:.1f} "
            "kB"
        )
    served = sum(c["ok"] for c in summary.replicas.values() if c)
    for address, counts in summary.replicas.items():
        if counts is None:
            lines.append(f"replica {address}: no answer at the end (stopped?)")
        else:
            share = f" ({100 * counts['ok'] / served:.1f}%)" if served else ""
            lines.append(f"replica {address}: {counts['ok']} ok{share}, {counts['failed']} failed")
    for error, count in sorted(summary.errors.items(), key=lambda kv: -kv[1])[:5]:
        lines.append(f"  {count} x {error}")
    if bounds is not None:
        violations = check_bounds(summary, bounds)
        limits = f"failure ratio <= {bounds.max_failure_ratio}" + (
            f", p95 <= {bounds.max_p95_ms:.0f} ms" if bounds.max_p95_ms is not None else ""
        )
        lines.append(
            f"bounds ({limits}): " + ("PASS" if not violations else "FAIL: " + "; ".join(violations))
        )
    return "\n".join(lines)


# --- running locust -----------------------------------------------------------------------------------------


@dataclass
class LoadTestSettings:
    """What one headless run does; the model settings go to the locustfile as its arguments."""

    host: str = ""
    protocol: str = "grpc"
    users: int = 2
    spawn_rate: float = 2.0
    run_time: str = "60s"
    images: str = ""
    max_prompts: int = 0
    conf: float = 0.0
    iou: float = 0.0
    output_format: str = "rle"
    request_timeout: float = 600.0
    retries: int = 3
    think_time: float = 0.0
    per_image_names: bool = False
    server_timings: bool = False
    stop_timeout: float = 60.0
    model_name: str = "segment_everything"
    extra_locust_args: tuple[str, ...] = ()


@dataclass
class LoadTestResult:
    summary: Summary
    out_dir: Path
    command: list[str]
    returncode: int

    @property
    def html_report(self) -> Path:
        return self.out_dir / "report.html"

    @property
    def stats_csv(self) -> Path:
        return self.out_dir / f"{CSV_PREFIX}_stats.csv"

    @property
    def samples(self) -> list[dict]:
        return read_samples(self.out_dir / "samples.jsonl")


def locust_command(settings: LoadTestSettings, out_dir: Path, locustfile: Path = LOCUSTFILE) -> list[str]:
    """The ``locust`` command line of a headless run writing its reports under ``out_dir``."""
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(locustfile),
        "--headless",
        "--users",
        str(settings.users),
        "--spawn-rate",
        f"{settings.spawn_rate:g}",
        "--run-time",
        settings.run_time,
        "--stop-timeout",
        f"{settings.stop_timeout:g}",
        "--csv",
        str(out_dir / CSV_PREFIX),
        "--html",
        str(out_dir / "report.html"),
        "--only-summary",
        "--exit-code-on-error",
        "0",  # failures are judged here, against the bounds
        "--protocol",
        settings.protocol,
        "--model-name",
        settings.model_name,
        "--samples-file",
        str(out_dir / "samples.jsonl"),
        "--request-timeout",
        f"{settings.request_timeout:g}",
        "--retries",
        str(settings.retries),
        "--output-format",
        settings.output_format,
    ]
    if settings.host:
        command += ["--host", settings.host]
    if settings.images:
        command += ["--images", settings.images]
    for flag, value in (
        ("--max-prompts", settings.max_prompts),
        ("--conf", settings.conf),
        ("--iou", settings.iou),
        ("--think-time", settings.think_time),
    ):
        if value:
            command += [flag, f"{value:g}"]
    if settings.per_image_names:
        command.append("--per-image-names")
    if settings.server_timings:
        command.append("--server-timings")
    return command + list(settings.extra_locust_args)


def wait_for_server(host: str, protocol: str, model_name: str, timeout: float = 30.0) -> None:
    """Raise ``RuntimeError`` unless the server at ``host`` (with several replicas: the next one in turn) has
    ``model_name`` ready within ``timeout`` s."""
    with SegmentEverythingClient(host or None, protocol, model_name=model_name, timeout=10) as client:
        try:
            client.wait_until_ready(timeout=timeout)
        except SegmentEverythingError as exc:
            raise RuntimeError(
                f"Triton at {client.url} ({protocol}) not ready after {timeout:.0f} s: {exc}"
            ) from exc


def warm_up(settings: LoadTestSettings, requests: int) -> None:
    """Send ``requests`` requests (one per image, cycling; spread over the replicas) before the measured run,
    so the first measured latencies do not include lazy initialisation on the server."""
    if requests <= 0:
        return
    images = load_images(settings.images or None)
    request = request_settings(settings.max_prompts, settings.conf, settings.iou)
    with SegmentEverythingClient(
        settings.host or None,
        settings.protocol,
        model_name=settings.model_name,
        timeout=settings.request_timeout,
    ) as client:
        for i in range(requests):
            client.segment_everything(
                images[i % len(images)][1],
                max_prompts=request.max_prompts,
                conf=request.conf,
                iou=request.iou,
            )


def run_locust(
    settings: LoadTestSettings,
    out_dir: Path | None = None,
    *,
    warmup: int = 1,
    ready_timeout: float = 30.0,
    quiet: bool = True,
    replica_metrics: Sequence[str] | Callable[[], Sequence[str]] = (),
    stop: threading.Event | None = None,
) -> LoadTestResult:
    """Run locust headless with ``settings``; return the summary and where the reports are.

    ``replica_metrics``: the metrics addresses (``host:port``) of the replicas to count requests on, or a
    function returning them (called at the start and at the end, for replicas that come and go). ``stop``:
    when set, locust stops before its run time is over (SIGTERM: it writes its reports and exits).
    Raises ``RuntimeError`` when the server is not reachable or locust does not run.
    """
    out_dir = Path(out_dir or DEFAULT_OUT_ROOT / time.strftime("%Y%m%d-%H%M%S")).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "samples.jsonl").unlink(missing_ok=True)
    wait_for_server(settings.host, settings.protocol, settings.model_name, ready_timeout)
    warm_up(settings, warmup)
    addresses = replica_metrics if callable(replica_metrics) else lambda: replica_metrics
    counts_before = read_counts(addresses(), settings.model_name)
    command = locust_command(settings, out_dir)
    run_time_s = parse_duration(settings.run_time)
    # Locust stops users after --run-time, then waits up to --stop-timeout for their running request.
    limit = run_time_s + settings.stop_timeout + settings.request_timeout + 120
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(out_dir / "locust.log", "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + limit
        try:
            while process.poll() is None:
                if stop is not None and stop.is_set():
                    process.send_signal(signal.SIGTERM)
                    stop = None  # once
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"locust did not finish within {limit:.0f} s; log {out_dir / 'locust.log'}"
                    )
                time.sleep(0.1)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    log_text = (out_dir / "locust.log").read_text(errors="replace")
    if not quiet:
        print(log_text, end="")
    stats_csv = out_dir / f"{CSV_PREFIX}_stats.csv"
    if process.returncode != 0 or not stats_csv.is_file():
        tail = "\n".join(log_text.splitlines()[-30:])
        raise RuntimeError(f"locust exited with {process.returncode}: {shlex.join(command)}\n{tail}")
    samples = read_samples(out_dir / "samples.jsonl")
    summary = summarize_samples(samples) if samples else summary_from_stats_csv(stats_csv, run_time_s)
    counts_after = read_counts([*counts_before, *addresses()], settings.model_name)
    summary.replicas = {
        address: None if after is None else (after - counts_before.get(address)).as_dict()
        for address, after in counts_after.items()
    }
    (out_dir / "summary.json").write_text(
        json.dumps({"settings": asdict(settings), "command": command, "summary": summary.to_dict()}, indent=2)
        + "\n"
    )
    return LoadTestResult(summary=summary, out_dir=out_dir, command=command, returncode=process.returncode)


# --- CLI ----------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.run",
        description=(
            "Headless locust load test of Triton's segment_everything, with reports and pass/fail bounds."
        ),
        epilog=(
            "Arguments after '--' go to locust unchanged. "
            "Exit status: 0 pass, 1 a bound exceeded, 2 run error."
        ),
    )
    target = parser.add_argument_group("target")
    target.add_argument(
        "--host",
        default="",
        help="host:port of Triton's gRPC (default 127.0.0.1:8001) or HTTP "
        "(127.0.0.1:8000) endpoint; https:// or grpcs:// for TLS; several replicas: dns:///name:port (every "
        "address of the name) or ipv4:a:port,b:port",
    )
    target.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    target.add_argument(
        "--metrics-port",
        type=int,
        default=8002,
        help="metrics port of the replicas, where requests per replica are read (default 8002)",
    )
    target.add_argument(
        "--metrics",
        default="",
        help="host:port,... of the replicas' metrics endpoints (default: --host's addresses, --metrics-port)",
    )
    target.add_argument(
        "--model-repository",
        type=Path,
        default=None,
        help="start a local Triton on this repository for the run (free ports; --host is ignored)",
    )
    target.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="with --model-repository: this many servers, on 127.0.0.1, .2, ... behind one DNS name",
    )
    target.add_argument("--model-name", default="segment_everything")
    target.add_argument(
        "--ready-timeout",
        type=float,
        default=30.0,
        help="seconds to wait for the server and model to be ready before giving up",
    )
    load = parser.add_argument_group("load")
    load.add_argument(
        "-u", "--users", type=int, default=2, help="concurrent users (each one request at a time)"
    )
    load.add_argument(
        "-r", "--spawn-rate", type=float, default=None, help="users started per second (default: all at once)"
    )
    load.add_argument("-t", "--run-time", default="60s", help="e.g. 60s, 5m, 1h30m")
    load.add_argument(
        "--images", default="", help="folder of images (default: the images shipped with ultralytics)"
    )
    load.add_argument("--think-time", type=float, default=0.0, help="seconds between a user's requests")
    load.add_argument("--warmup", type=int, default=1, help="unmeasured requests before the run")
    load.add_argument(
        "--stop-timeout",
        type=float,
        default=60.0,
        help="seconds locust lets running requests finish after --run-time",
    )
    model = parser.add_argument_group("model settings")
    model.add_argument(
        "--max-prompts", type=int, default=0, help="objects per image; 0 = server default (300)"
    )
    model.add_argument(
        "--conf", type=float, default=0.0, help="detector confidence; 0 = server default (0.4)"
    )
    model.add_argument("--iou", type=float, default=0.0, help="box NMS IoU; 0 = server default (0.9)")
    model.add_argument("--output-format", choices=("rle", "dense"), default="rle")
    model.add_argument(
        "--request-timeout",
        type=float,
        default=600.0,
        help="the client's deadline of a request, retries included",
    )
    model.add_argument("--retries", type=int, default=3, help="the client's retries of a failed request")
    model.add_argument(
        "--server-timings", action="store_true", help="record the server's per-stage ms per request"
    )
    model.add_argument("--per-image-names", action="store_true", help="one locust stats row per image")
    checks = parser.add_argument_group("bounds")
    checks.add_argument(
        "--max-failure-ratio", type=float, default=0.0, help="fail above this ratio (default 0)"
    )
    checks.add_argument("--max-p95-ms", type=float, default=None, help="fail when p95 latency exceeds this")
    checks.add_argument("--min-requests", type=int, default=1, help="fail with fewer completed requests")
    parser.add_argument(
        "--out", type=Path, default=None, help="report folder (default work/loadtest/<time>/)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="print locust's own output")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    args = build_parser().parse_args(argv)
    try:
        parse_duration(args.run_time)
    except ValueError as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return EXIT_ERROR
    settings = LoadTestSettings(
        host=args.host,
        protocol=args.protocol,
        users=args.users,
        spawn_rate=args.spawn_rate if args.spawn_rate is not None else float(args.users),
        run_time=args.run_time,
        images=args.images,
        max_prompts=args.max_prompts,
        conf=args.conf,
        iou=args.iou,
        output_format=args.output_format,
        request_timeout=args.request_timeout,
        retries=args.retries,
        think_time=args.think_time,
        per_image_names=args.per_image_names,
        server_timings=args.server_timings,
        stop_timeout=args.stop_timeout,
        model_name=args.model_name,
        extra_locust_args=tuple(extra),
    )
    bounds = Bounds(args.max_failure_ratio, args.max_p95_ms, args.min_requests)

    replicas = None
    replica_metrics: Sequence[str] | Callable[[], Sequence[str]] = ()
    if args.model_repository is not None:
        log_dir = DEFAULT_OUT_ROOT.parent / "logs"
        replicas = LocalReplicas(args.model_repository, log_dir=log_dir, startup_timeout=300)
        print(
            f"loadtest: starting {args.replicas} Triton on {args.model_repository} (logs {log_dir})",
            flush=True,
        )
        try:
            replicas.start(args.replicas)
        except (RuntimeError, TimeoutError, FileNotFoundError) as exc:
            replicas.close()
            print(f"loadtest: {exc}", file=sys.stderr)
            return EXIT_ERROR
        settings.host = replicas.grpc_target if settings.protocol == "grpc" else replicas.address_list("http")
        replica_metrics = [replicas.metrics_address(host) for host in replicas.running()]
    elif args.metrics:
        replica_metrics = [a.strip() for a in args.metrics.split(",") if a.strip()]
    else:
        try:
            replica_metrics = metrics_addresses(settings.host or "127.0.0.1:8001", args.metrics_port)
        except SegmentEverythingError as exc:
            print(f"loadtest: no requests per replica ({exc}); give --metrics", file=sys.stderr)
    target = settings.host or ("127.0.0.1:8001" if settings.protocol == "grpc" else "127.0.0.1:8000")
    print(
        f"loadtest: {settings.users} users (+{settings.spawn_rate:g}/s) for {settings.run_time} against "
        f"{settings.protocol} {target}, max_prompts {settings.max_prompts or 'default'}",
        flush=True,
    )
    try:
        result = run_locust(
            settings,
            args.out,
            warmup=args.warmup,
            ready_timeout=args.ready_timeout,
            quiet=not args.verbose,
            replica_metrics=replica_metrics,
        )
    except (RuntimeError, FileNotFoundError) as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        if replicas is not None:
            replicas.close()
    print(format_summary(result.summary, bounds))
    print(f"reports: {result.html_report}, {result.stats_csv}, {result.out_dir / 'summary.json'}")
    return EXIT_BOUNDS if check_bounds(result.summary, bounds) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
