"""Each Triton model alone, and the whole SegEvery pipeline, against the in-process PyTorch reference.

A real tritonserver (the pip-installed 2.51) serves the repository built from official-format random-weight
checkpoints; the reference pipeline loads the same checkpoint files.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from mobilesamv2.processing import boxes as box_ops
from mobilesamv2.processing.image import detector_input, encoder_canvas
from segment_everything_client import SegmentEverythingClient
from segment_everything_contract import rle as rle_codec

pytestmark = pytest.mark.server


def read_rgb(path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


@pytest.fixture(scope="module")
def images(sample_images):
    return {p.name: read_rgb(p) for p in sample_images}


def test_image_encoder_equals_pytorch(triton_server, raw_infer, reference_pipeline, images):
    image = images["bus.jpg"]
    canvas, size = encoder_canvas(image)
    served = raw_infer(
        triton_server,
        "image_encoder",
        {"image": canvas[None], "image_size": size[None]},
        ["image_embeddings"],
    )
    expected = reference_pipeline.encode(
        image
    ).numpy()  # SAM's own preprocess: normalise, F.pad, bilinear halving
    assert served["image_embeddings"].shape == (1, 256, 64, 64)
    np.testing.assert_allclose(served["image_embeddings"], expected, atol=1e-3, rtol=0)


def test_prompt_decoder_equals_pytorch_box_path(triton_server, raw_infer, reference_pipeline, images):
    embedding = reference_pipeline.encode(images["zidane.jpg"])
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 700, (7, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + rng.uniform(10, 300, (7, 2)).astype(np.float32)], 1)
    coords, labels = box_ops.boxes_to_prompts(boxes)
    served = raw_infer(
        triton_server,
        "prompt_decoder",
        {"image_embeddings": embedding.numpy(), "point_coords": coords, "point_labels": labels},
        ["low_res_masks", "iou_predictions"],
    )
    logits, ious = reference_pipeline.decode_boxes(embedding, boxes)  # ultralytics' prompt encoder, boxes=...
    assert served["low_res_masks"].shape == (7, 1, 256, 256)
    np.testing.assert_allclose(served["low_res_masks"][:, 0], logits, atol=1e-3, rtol=0)
    np.testing.assert_allclose(served["iou_predictions"][:, 0], ious, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["bus.jpg", "zidane.jpg"])
def test_object_discovery_equals_reference_candidates(
    triton_server, raw_infer, reference_pipeline, images, name
):
    boxed, _ = detector_input(images[name])
    served = raw_infer(triton_server, "object_discovery", {"images": boxed}, ["boxes", "scores", "classes"])
    with torch.no_grad():
        prediction = reference_pipeline.detector(
            torch.from_numpy(boxed).permute(2, 0, 1)[None].float() / 255
        )[0]
    boxes, scores, classes = box_ops.select_candidates(prediction.numpy(), box_ops.CONF_THRESHOLD)
    assert len(served["boxes"]) == len(boxes) > 0
    np.testing.assert_allclose(served["boxes"], boxes, atol=0.05, rtol=0)
    np.testing.assert_allclose(served["scores"], scores, atol=2e-4, rtol=0)
    np.testing.assert_array_equal(served["classes"], classes)


@pytest.mark.parametrize("name, max_prompts", [("bus.jpg", 24), ("zidane.jpg", 300)])
def test_pipeline_equals_reference(
    triton_server, reference_pipeline, images, sample_images, name, max_prompts
):
    """Same boxes in the same order, mean mask IoU >= 0.99, on two real images (bus is capped to keep the
    PyTorch reference affordable on CPU; the cap is the reference's max_det)."""
    path = next(p for p in sample_images if p.name == name)
    with SegmentEverythingClient(triton_server.grpc_url, timeout=600) as client:
        served = client.segment_everything(path, max_prompts=max_prompts)
    expected = reference_pipeline(images[name], max_detections=max_prompts)
    assert len(expected) > 0
    assert served.image_size == images[name].shape[:2]
    np.testing.assert_allclose(served.boxes, expected.boxes, atol=0.1, rtol=0)
    np.testing.assert_allclose(served.scores, expected.scores, atol=2e-4, rtol=0)
    ious = [mask_iou(a, b) for a, b in zip(served.masks, expected.masks(), strict=True)]
    assert np.mean(ious) >= 0.99, f"mean mask IoU {np.mean(ious):.4f}"
    assert all(
        np.all(b[:2] >= 0) and b[2] <= images[name].shape[1] and b[3] <= images[name].shape[0]
        for b in served.boxes
    )


def test_pipeline_hits_the_300_box_cap_in_one_decoder_call(triton_server, raw_infer, sample_images):
    with SegmentEverythingClient(triton_server.grpc_url, timeout=900) as client:
        result = client.segment_everything(sample_images[0], conf=0.05, timings=True)
    assert len(result) == 300
    assert np.all(np.diff(result.scores) <= 0), "boxes stay in descending confidence order"
    assert {"discovery", "nms", "decoder", "postprocess", "total"} <= set(result.timings)
    assert {"encoder", "encoder_cached"} & set(result.timings)  # sample images may be cached by earlier tests


def test_raw_array_equals_encoded_png(triton_server, raw_infer, images):
    image = images["zidane.jpg"]
    _, png = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    with SegmentEverythingClient(triton_server.http_url, protocol="http", timeout=600) as client:
        from_raw = client.segment_everything(image)
        from_png = client.segment_everything(png.tobytes())
    np.testing.assert_array_equal(from_raw.boxes, from_png.boxes)
    assert from_raw.rles == from_png.rles


def test_output_formats_agree(triton_server, raw_infer, sample_images):
    with SegmentEverythingClient(triton_server.grpc_url, timeout=600) as client:
        rle = client.segment_everything(sample_images[1], max_prompts=4)
        dense = client.segment_everything(sample_images[1], max_prompts=4, output="dense")
        logits = client.segment_everything(sample_images[1], max_prompts=4, output="logits")
    np.testing.assert_array_equal(rle.masks, dense.masks)
    assert [rle_codec.area(r) for r in rle.rles] == [int(m.sum()) for m in dense.masks]
    assert logits.low_res_logits.shape == (len(rle), 256, 256)
