"""A short headless locust run against the real server: zero failures, and the CSV/HTML reports are written.

Small ``max_prompts`` keeps each request at about a second on 2 cores (the image encoder dominates), so 2
users make ~15 requests in 15 s: enough to see both images, overlapping requests and the reports.
"""

from __future__ import annotations

import csv
import itertools
import json

import pytest

from loadtest.run import Bounds, LoadTestSettings, check_bounds, run_locust

pytestmark = pytest.mark.server


def assert_reports(result) -> None:
    for name in (
        "locust_stats.csv",
        "locust_failures.csv",
        "locust_stats_history.csv",
        "report.html",
        "samples.jsonl",
        "summary.json",
    ):
        assert (result.out_dir / name).is_file(), name
    assert "<html" in result.html_report.read_text().lower()
    with open(result.out_dir / "locust_failures.csv", newline="") as f:
        assert list(csv.DictReader(f)) == []
    with open(result.stats_csv, newline="") as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    assert int(rows["Aggregated"]["Request Count"]) >= 1
    assert int(rows["Aggregated"]["Failure Count"]) == 0
    assert json.loads((result.out_dir / "summary.json").read_text())["summary"]["failures"] == 0


def test_two_grpc_users_for_15_seconds_have_no_failure(triton_server, tmp_path):
    settings = LoadTestSettings(
        host=triton_server.grpc_url,
        users=2,
        spawn_rate=2,
        run_time="15s",
        max_prompts=2,
        server_timings=True,
        stop_timeout=30,
        request_timeout=60,
    )
    result = run_locust(settings, tmp_path / "grpc", warmup=1)
    summary = result.summary
    print(
        f"\n{summary.requests} requests, p50 {summary.p50_ms:.0f} ms, p95 {summary.p95_ms:.0f} ms, "
        f"{summary.throughput_rps:.2f} req/s"
    )
    assert check_bounds(summary, Bounds(max_failure_ratio=0.0, min_requests=4)) == [], summary.errors
    assert_reports(result)
    samples = result.samples
    assert {s["image"] for s in samples} == {"bus.jpg", "zidane.jpg"}  # both users, staggered images
    assert all(s["masks"] <= 2 and "total" in s["server_ms"] for s in samples)
    # The two users really overlap (grpcio is gevent-cooperative): some request starts before another ends.
    spans = sorted((s["t"], s["t"] + s["ms"] / 1e3) for s in samples)
    assert any(b_start < a_end for (_, a_end), (b_start, _) in itertools.pairwise(spans))


def test_one_http_user_with_per_image_stats(triton_server, tmp_path):
    settings = LoadTestSettings(
        host=f"http://{triton_server.http_url}",
        protocol="http",
        users=1,
        spawn_rate=1,
        run_time="4s",
        max_prompts=1,
        per_image_names=True,
        stop_timeout=30,
        request_timeout=60,
    )
    result = run_locust(settings, tmp_path / "http", warmup=0)
    assert check_bounds(result.summary, Bounds()) == [], result.summary.errors
    assert_reports(result)
    with open(result.stats_csv, newline="") as f:
        names = {row["Name"] for row in csv.DictReader(f)}
    assert "segment_everything:bus.jpg" in names
