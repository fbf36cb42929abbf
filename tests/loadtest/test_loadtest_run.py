"""The load-test wrapper's pure logic (durations, percentiles, summaries, bounds, the locust command) without
a server, and the locustfile's arguments as locust sees them."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from loadtest.common import load_images, request_settings
from loadtest.run import (
    EXIT_ERROR,
    LOCUSTFILE,
    Bounds,
    LoadTestSettings,
    Summary,
    check_bounds,
    format_summary,
    locust_command,
    main,
    parse_duration,
    percentile,
    read_samples,
    summarize_samples,
    summary_from_stats_csv,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("5m", 300), ("1h30m", 5400), ("1m30s", 90), ("0.5s", 0.5), (" 2M ", 120)],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5x", "m5", "1m 30s", "-5s", "1m30"])
def test_parse_duration_rejects_garbage(text):
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize("q", [0, 1, 25, 50, 90, 95, 99, 99.9, 100])
def test_percentile_matches_numpy_linear(q):
    values = list(np.random.default_rng(0).exponential(100.0, size=257))
    assert percentile(values, q) == pytest.approx(np.percentile(values, q))


def test_percentile_edge_cases():
    assert math.isnan(percentile([], 50))
    assert percentile([7.0], 99) == 7.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0  # unsorted input
    assert percentile([0.0, 10.0], 95) == pytest.approx(9.5)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def record(t: float, ms: float, ok: bool = True, **extra) -> dict:
    return {"t": t, "ms": ms, "ok": ok, "bytes": 1000, "masks": 4, **extra}


def test_summary_counts_failures_and_uses_only_successful_latencies():
    records = [
        record(0.0, 1000.0),
        record(0.5, 3000.0),
        record(1.0, 50.0, ok=False, error="UNAVAILABLE: gone"),
    ]
    summary = summarize_samples(records)
    assert (summary.requests, summary.failures) == (3, 1)
    assert summary.failure_ratio == pytest.approx(1 / 3)
    assert summary.p50_ms == pytest.approx(2000.0)
    assert summary.max_ms == 3000.0
    assert summary.window_s == pytest.approx(3.5)  # first start 0.0 .. last end 0.5 + 3.0
    assert summary.throughput_rps == pytest.approx(2 / 3.5)  # successful requests only
    assert summary.errors == {"UNAVAILABLE: gone": 1}
    assert summary.source == "samples"


def test_summary_of_nothing_is_empty_not_an_error():
    summary = summarize_samples([])
    assert summary.requests == 0 and math.isnan(summary.p95_ms) and math.isnan(summary.throughput_rps)
    assert summary.to_dict()["p95_ms"] is None  # JSON-safe


def test_read_samples_skips_a_torn_last_line(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text('{"t": 1, "ms": 2, "ok": true}\n{"t": 2, "ms"')
    assert read_samples(path) == [{"t": 1, "ms": 2, "ok": True}]
    assert read_samples(tmp_path / "missing.jsonl") == []


STATS_CSV = """Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,\
Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,\
50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%
grpc,segment_everything,20,2,4400,4236.1,2812.5,4918.6,375178.1,0.5,0.05,4400,4400,4400,4500,4600,4900,4900,4900,\
4900,4900,4900
,Aggregated,20,2,4400,4236.1,2812.5,4918.6,375178.1,0.5,0.05,4400,4400,4400,4500,4600,4900,4900,4900,4900,4900,4900
"""


def test_summary_from_locust_csv_reads_the_aggregated_row(tmp_path):
    path = tmp_path / "locust_stats.csv"
    path.write_text(STATS_CSV)
    summary = summary_from_stats_csv(path, run_time_s=40)
    assert (summary.requests, summary.failures, summary.source) == (20, 2, "locust-csv")
    assert (summary.p50_ms, summary.p95_ms, summary.p99_ms) == (4400, 4900, 4900)
    assert summary.throughput_rps == pytest.approx(0.45)
    assert summary.window_s == 40


def test_summary_from_locust_csv_without_aggregate_is_an_error(tmp_path):
    path = tmp_path / "locust_stats.csv"
    path.write_text(STATS_CSV.splitlines()[0] + "\n")
    with pytest.raises(ValueError, match="Aggregated"):
        summary_from_stats_csv(path)


def summary(requests=100, failures=0, p95=1000.0) -> Summary:
    return Summary(requests, failures, 1.0, 500.0, p95, p95, 600.0, p95, 100.0, "samples")


def test_bounds_pass():
    assert check_bounds(summary(), Bounds(max_failure_ratio=0.0, max_p95_ms=1000.0)) == []


def test_bounds_any_failure_fails_by_default():
    (violation,) = check_bounds(summary(failures=1), Bounds())
    assert "failure ratio 0.0100" in violation


def test_bounds_failure_ratio_allowance():
    assert check_bounds(summary(failures=1), Bounds(max_failure_ratio=0.01)) == []
    assert check_bounds(summary(failures=2), Bounds(max_failure_ratio=0.01))


def test_bounds_p95():
    (violation,) = check_bounds(summary(p95=1000.1), Bounds(max_p95_ms=1000.0))
    assert "p95 1000.1 ms > 1000.0 ms" in violation


def test_bounds_no_request_fails():
    assert check_bounds(summary(requests=0), Bounds())
    assert check_bounds(summary(requests=5), Bounds(min_requests=10))


def test_bounds_p95_unknown_when_everything_failed():
    violations = check_bounds(
        summary(failures=100, p95=math.nan), Bounds(max_failure_ratio=1.0, max_p95_ms=10.0)
    )
    assert violations == ["p95 unknown (no successful request)"]


def test_format_summary_says_pass_or_fail():
    assert "PASS" in format_summary(summary(), Bounds())
    assert "FAIL: failure ratio" in format_summary(summary(failures=3), Bounds())


def test_locust_command_carries_settings(tmp_path):
    settings = LoadTestSettings(
        host="10.0.0.7:8000",
        protocol="http",
        users=4,
        spawn_rate=2,
        run_time="5m",
        max_prompts=16,
        conf=0.3,
        per_image_names=True,
        extra_locust_args=("--loglevel", "DEBUG"),
    )
    command = locust_command(settings, tmp_path)
    joined = " ".join(command)
    for part in (
        "--headless",
        "--users 4",
        "--spawn-rate 2",
        "--run-time 5m",
        "--protocol http",
        "--host 10.0.0.7:8000",
        "--max-prompts 16",
        "--conf 0.3",
        "--per-image-names",
        f"--csv {tmp_path / 'locust'}",
        f"--html {tmp_path / 'report.html'}",
        "--loglevel DEBUG",
    ):
        assert part in joined, part
    assert "--iou" not in command  # server default unless given


def test_load_test_settings_are_the_contracts():
    assert request_settings() == request_settings(0, 0.0, 0.0)  # 0: the contract's default
    settings = request_settings(max_prompts=16, conf=0.3)
    assert (settings.max_prompts, settings.conf, settings.iou) == (16, 0.3, 0.9)
    with pytest.raises(ValueError, match="conf_threshold must be in"):
        request_settings(conf=1.5)


def test_load_images_default_and_folder(tmp_path):
    names = [name for name, _ in load_images()]
    assert "bus.jpg" in names and "zidane.jpg" in names
    (tmp_path / "a.PNG").write_bytes(b"png")
    (tmp_path / "notes.txt").write_text("x")
    assert load_images(tmp_path) == [("a.PNG", b"png")]
    with pytest.raises(FileNotFoundError):
        load_images(tmp_path / "missing")


def test_main_rejects_a_bad_run_time(capsys):
    assert main(["--run-time", "soon"]) == EXIT_ERROR
    assert "not a duration" in capsys.readouterr().err


def test_main_reports_an_unreachable_server(capsys):
    from mobilesamv2.runner.local import free_port

    code = main(["--host", f"127.0.0.1:{free_port()}", "--ready-timeout", "1", "--run-time", "5s"])
    assert code == EXIT_ERROR
    assert "not ready" in capsys.readouterr().err


def test_locust_loads_the_locustfile_and_its_arguments():
    def listing(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--list", *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    ok = listing("--protocol", "http", "--max-prompts", "2", "--server-timings", "--samples-file", "x.jsonl")
    assert ok.returncode == 0, ok.stderr
    assert "SegmentEverythingUser" in ok.stdout
    wrong = listing("--max-promptz", "2")
    assert wrong.returncode != 0 and "--max-prompts" in wrong.stderr


def test_perf_analyzer_input_data_holds_length_prefixed_image_bytes():
    import base64
    import struct

    from loadtest.perf_analyzer import command, input_data

    data = input_data([("a.jpg", b"\xff\xd8jpeg"), ("b.png", b"png")], max_prompts=16)
    assert len(data["data"]) == 2
    first = data["data"][0]
    raw = base64.b64decode(first["image"]["content"]["b64"])
    assert struct.unpack("<I", raw[:4]) == (6,) and raw[4:] == b"\xff\xd8jpeg"
    assert first["image"]["shape"] == [1] and first["max_prompts"] == {"content": [16], "shape": [1]}
    assert "conf_threshold" not in first  # absent optional inputs are not sent: the server's default applies
    assert "--input-data" in command(Path("in.json"))


def test_users_back_off_after_failed_calls(tmp_path):
    """Against a port nobody listens on, every call fails; a user then waits as the client's retry policy
    backs off before its next call, instead of sending it at once (thousands of failing calls in seconds)."""
    from mobilesamv2.runner.local import free_port

    settings = LoadTestSettings(
        host=f"127.0.0.1:{free_port()}", users=2, spawn_rate=2, run_time="4s", retries=1, stop_timeout=2
    )
    subprocess.run(locust_command(settings, tmp_path), capture_output=True, timeout=120, check=False)
    samples = read_samples(tmp_path / "samples.jsonl")
    assert samples and not any(s["ok"] for s in samples)
    assert all("ServerUnavailableError" in s["error"] for s in samples)
    # the waits grow (0-1 s, 0-2 s, 0-4 s, ...): a handful of calls per user in 4 s
    assert len(samples) <= 20, len(samples)
