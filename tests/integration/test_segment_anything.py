"""Interactive SegAny on the real server: multimask parity with PyTorch, refinement, the client API sync and
async, and the labelling-session example."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from mobilesamv2.pipeline import Pipeline, SegmentRequest
from segment_everything_client import AsyncSegmentEverythingClient, SegmentEverythingClient
from segment_everything_contract import Prompts, Settings

pytestmark = pytest.mark.server

POINTS = [[[400.0, 600.0]], [[200.0, 450.0]]]


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


@pytest.fixture(scope="module")
def client(triton_server):
    with SegmentEverythingClient(triton_server.grpc_url, timeout=300) as c:
        yield c


def test_multimask_returns_sams_three_candidates_and_matches_pytorch(client, reference_pipeline, bus_rgb):
    served = client.segment_anything(bus_rgb, points=POINTS, multimask=True, output="logits")
    assert len(served) == 6 and served.prompt_index.tolist() == [0, 0, 0, 1, 1, 1]
    expected = asyncio.run(
        Pipeline(reference_pipeline.as_models()).run(
            SegmentRequest(
                bus_rgb,
                Settings(multimask=True),
                Prompts(points=np.array(POINTS, np.float32), point_labels=np.ones((2, 1), np.int32)),
            )
        )
    )
    np.testing.assert_allclose(served.iou_predictions, expected.iou_predictions, atol=1e-3)
    from segment_everything_contract import rle

    ious = [mask_iou(served.mask(i), rle.decode(r)) for i, r in enumerate(expected.rles)]
    assert min(ious) >= 0.99, ious
    best = served.best_per_prompt()
    assert best.prompt_index.tolist() == [0, 1]
    for k in range(2):
        rows = served.prompt_index == k
        assert best.iou_predictions[k] == served.iou_predictions[rows].max()


def test_single_mask_points_are_token_zero(client, bus_rgb):
    single = client.segment_anything(bus_rgb, points=POINTS)
    assert len(single) == 2 and single.prompt_index.tolist() == [0, 1]


def test_a_previous_mask_refines_the_answer(client, bus_rgb):
    first = client.segment_anything(bus_rgb, points=POINTS[:1], output="logits")
    again = client.segment_anything(bus_rgb, points=POINTS[:1], output="logits")
    refined = client.segment_anything(
        bus_rgb, points=POINTS[:1], mask_input=first.low_res_logits, output="logits"
    )
    np.testing.assert_array_equal(first.low_res_logits, again.low_res_logits)  # deterministic without it
    assert not np.allclose(first.low_res_logits, refined.low_res_logits)  # the previous mask is used


def test_async_client_segment_anything(triton_server, bus_rgb):
    async def run():
        async with AsyncSegmentEverythingClient(triton_server.http_url, protocol="http", timeout=300) as c:
            return await c.segment_anything(bus_rgb, points=POINTS, multimask=True)

    result = asyncio.run(run())
    assert len(result) == 6 and len(result.best_per_prompt()) == 2


def test_labelling_session_example(client, bus_path):
    example = Path(__file__).resolve().parents[2] / "client" / "examples" / "labelling_session.py"
    spec = importlib.util.spec_from_file_location("labelling_session", example)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    records = module.session(client, module.load_image(bus_path), count=4)
    assert [r["click"] for r in records] == [1, 2, 3, 4]
    assert all(r["area"] > 0 for r in records)
