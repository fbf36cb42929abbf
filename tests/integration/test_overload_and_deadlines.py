"""Admission control, deadlines, cancellation, the embedding cache and the pipeline's metrics, on the real
server (short runs; the long overload and soak runs are benchmarks)."""

from __future__ import annotations

import threading
import time
import urllib.request

import cv2
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from segment_everything_client import (
    DeadlineExceededError,
    OverloadedError,
    SegmentEverythingClient,
    SegmentEverythingError,
)

pytestmark = pytest.mark.server


def unique_bus(bus_path, k: int) -> bytes:
    """bus.jpg with one pixel changed: the same boxes, but a canvas the encoder's cache has never seen."""
    image = cv2.imread(str(bus_path))
    image[0, 0] = (k * 37 % 256, k * 91 % 256, int(time.time() * 1e6) % 256)
    return cv2.imencode(".png", image)[1].tobytes()


def stats(server, model: str):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        return client.get_inference_statistics(model).model_stats[0]
    finally:
        client.close()


def metrics_text(server) -> str:
    with urllib.request.urlopen(f"http://{server.metrics_url}/metrics", timeout=10) as response:
        return response.read().decode()


def metric_value(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_beyond_capacity_is_refused_at_once_and_the_rest_is_served(triton_server, bus_path):
    """2 instances + a queue of 4: of 9 simultaneous requests at least 3 are refused within a second, with
    OverloadedError, and every admitted one is served."""
    outcomes: list[tuple[str, float]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(9)

    def one(k: int) -> None:
        with SegmentEverythingClient(triton_server.grpc_url, retries=0, timeout=300) as client:
            data = unique_bus(bus_path, 100 + k)
            barrier.wait()
            start = time.monotonic()
            try:
                client.segment_everything(data, max_prompts=4)
                outcome = "ok"
            except OverloadedError:
                outcome = "overloaded"
            except SegmentEverythingError as exc:
                outcome = f"other: {exc}"
            with lock:
                outcomes.append((outcome, time.monotonic() - start))

    threads = [threading.Thread(target=one, args=(k,)) for k in range(9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    refused = [s for o, s in outcomes if o == "overloaded"]
    assert sorted({o for o, _ in outcomes}) == ["ok", "overloaded"], outcomes
    assert len(refused) >= 3 and max(refused) < 1.0, outcomes
    assert sum(o == "ok" for o, _ in outcomes) >= 5


def test_a_request_abandoned_during_the_encoder_never_reaches_the_decoder(triton_server, bus_path):
    decoder_before = stats(triton_server, "prompt_decoder").execution_count
    metrics_before = metrics_text(triton_server)
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    image = grpcclient.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([unique_bus(bus_path, 1)], dtype=np.object_))
    with pytest.raises(InferenceServerException, match="Deadline Exceeded"):
        client.infer("segment_everything", [image], client_timeout=0.3)  # the encoder alone takes ~1 s
    client.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the server finishes the encoder, then sees the cancellation
        after = metrics_text(triton_server)
        if metric_value(after, "segevery_requests_total", outcome="cancelled") > metric_value(
            metrics_before, "segevery_requests_total", outcome="cancelled"
        ):
            break
        time.sleep(0.5)
    else:
        pytest.fail("the server never recorded the cancellation")
    # stopped at the checkpoint after discovery (before the encoder) or after the encoder, never later
    stopped = sum(
        metric_value(after, "segevery_requests_total", outcome="cancelled", stage=stage)
        - metric_value(metrics_before, "segevery_requests_total", outcome="cancelled", stage=stage)
        for stage in ("encoder", "decoder")
    )
    assert stopped >= 1
    assert stats(triton_server, "prompt_decoder").execution_count == decoder_before


def test_the_client_deadline_travels_and_expired_work_is_dropped(triton_server, bus_path):
    decoder_before = stats(triton_server, "prompt_decoder").execution_count
    client = SegmentEverythingClient(triton_server.http_url, protocol="http", timeout=0.5, retries=0)
    with client, pytest.raises(DeadlineExceededError):
        client.segment_everything(unique_bus(bus_path, 2))
    time.sleep(5)  # whatever the server still does for it, it must not decode
    assert stats(triton_server, "prompt_decoder").execution_count == decoder_before


def test_a_repeated_image_skips_decoding_and_the_encoder(triton_server, bus_path):
    data = unique_bus(bus_path, 3)
    before, metrics_before = stats(triton_server, "image_encoder"), metrics_text(triton_server)
    with SegmentEverythingClient(triton_server.grpc_url, timeout=300) as client:
        first = client.segment_anything(data, points=[[400, 600]], timings=True)
        second = client.segment_anything(data, points=[[200, 500]], timings=True)
        third = client.segment_anything(data, boxes=[[50, 400, 250, 900]], timings=True)
    after, metrics_after = stats(triton_server, "image_encoder"), metrics_text(triton_server)
    assert after.execution_count - before.execution_count == 1  # encoded once
    hits = metric_value(metrics_after, "segevery_embedding_cache_total", result="hit") - metric_value(
        metrics_before, "segevery_embedding_cache_total", result="hit"
    )
    assert hits == 2
    assert "encoder" in first.timings and "encoder_cached" not in first.timings
    for later in (second, third):
        assert "encoder_cached" in later.timings and "encoder" not in later.timings
        assert later.timings["decode_image"] < first.timings["decode_image"]  # not even decoded
    assert len(first) == len(second) == len(third) == 1
    assert first.image_size == second.image_size == third.image_size
    assert not np.array_equal(first.masks, second.masks)


def test_pipeline_metrics_are_exported(triton_server, bus_path):
    with SegmentEverythingClient(triton_server.grpc_url, timeout=300) as client:
        client.segment_everything(bus_path, max_prompts=2)
    text = metrics_text(triton_server)
    assert metric_value(text, "segevery_requests_total", outcome="ok") >= 1
    assert metric_value(text, "segevery_stage_seconds_count", stage="encoder") >= 1
    assert metric_value(text, "segevery_masks_count") >= 1
    assert (
        'nv_inference_request_failure{model="segment_everything",reason="REJECTED"' in text
        or "REJECTED" in text
    )


def test_the_grafana_dashboard_queries_metrics_the_server_exports(triton_server, bus_path):
    """Every metric the dashboard (deploy/grafana) plots exists on the real server's metrics port (GPU metrics
    exist only with a GPU)."""
    import json
    import re
    from pathlib import Path

    with SegmentEverythingClient(triton_server.grpc_url, timeout=300) as client:
        client.segment_everything(bus_path, max_prompts=1)
    text = metrics_text(triton_server)
    exported = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and line[0] != "#"}
    dashboard = (
        Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "segment-everything-dashboard.json"
    )
    exprs = [t["expr"] for p in json.loads(dashboard.read_text())["panels"] for t in p["targets"]]
    used = {name for e in exprs for name in re.findall(r"\b(?:nv|segevery)_\w+", e)}
    missing = sorted(n for n in used if n not in exported and not n.startswith("nv_gpu_"))
    assert used and not missing, missing
