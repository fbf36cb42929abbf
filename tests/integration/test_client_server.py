"""The client against the real server (fixtures ``triton_server`` and ``sample_images`` come from
``tests/conftest.py``): transports agree, order is kept, errors are typed, the CLI works."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from segment_everything_client import (
    AsyncSegmentEverythingClient,
    InvalidInputError,
    Segmentation,
    SegmentEverythingClient,
)
from segment_everything_client.errors import from_triton_exception
from segment_everything_contract import rle

pytestmark = pytest.mark.server

CLI = [sys.executable, "-m", "segment_everything_client.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def bus(bus_path: Path) -> Path:
    return bus_path


@pytest.fixture(scope="module")
def grpc_client(triton_server):
    with SegmentEverythingClient(triton_server.grpc_url, protocol="grpc", retries=0) as client:
        yield client


@pytest.fixture(scope="module")
def http_client(triton_server):
    with SegmentEverythingClient(triton_server.http_url, protocol="http", retries=0) as client:
        yield client


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def assert_same(a: Segmentation, b: Segmentation) -> None:
    """Same instances in the same order (float outputs to rounding, masks to a few pixels)."""
    assert a.image_size == b.image_size
    assert len(a) == len(b)
    np.testing.assert_allclose(a.boxes, b.boxes, atol=0.5)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-3)
    np.testing.assert_allclose(a.iou_predictions, b.iou_predictions, atol=1e-3)
    for i in range(len(a)):
        if a.rles[i] != b.rles[i]:
            assert mask_iou(a.mask(i), b.mask(i)) > 0.98, f"instance {i} differs"


# ---------------------------------------------------------------------------- transports


def test_ready(grpc_client, http_client) -> None:
    assert grpc_client.is_ready() and http_client.is_ready()
    grpc_client.wait_until_ready(timeout=5)


FEW = 8  # prompts per image: keeps CPU decoding short; the count does not matter to these tests


def test_sync_async_http_grpc_agree(triton_server, grpc_client, http_client, bus: Path) -> None:
    ref = grpc_client.segment_everything(bus, max_prompts=FEW)
    assert len(ref) > 0
    h, w = cv2.imread(str(bus)).shape[:2]
    assert ref.image_size == (h, w)
    assert ref.boxes.shape == (len(ref), 4) and ref.masks.shape == (len(ref), h, w)
    assert_same(ref, http_client.segment_everything(bus, max_prompts=FEW))

    async def run(url: str, protocol: str) -> Segmentation:
        async with AsyncSegmentEverythingClient(url, protocol=protocol, retries=0) as client:
            return await client.segment_everything(bus, max_prompts=FEW)

    assert_same(ref, asyncio.run(run(triton_server.grpc_url, "grpc")))
    assert_same(ref, asyncio.run(run(triton_server.http_url, "http")))


def test_raw_pixels_equal_file_bytes(grpc_client, bus: Path) -> None:
    from_file = grpc_client.segment_everything(bus, max_prompts=FEW)
    assert len(from_file) == FEW
    from_bgr = grpc_client.segment_everything(cv2.imread(str(bus)), channel_order="bgr", max_prompts=FEW)
    assert_same(from_file, from_bgr)


def test_settings_are_applied(grpc_client, bus: Path) -> None:
    few = grpc_client.segment_everything(bus, max_prompts=2)
    assert len(few) == 2
    loose = grpc_client.segment_everything(bus, conf=0.5, max_prompts=50)
    cut = float(np.median(loose.scores))  # a threshold that must drop some of them
    strict = grpc_client.segment_everything(bus, conf=cut, max_prompts=50)
    assert 0 < len(strict) < len(loose)
    assert (strict.scores > cut).all() and (loose.scores > 0.5).all()
    merged = grpc_client.segment_everything(bus, conf=0.5, iou=0.3, max_prompts=50)
    assert 0 < len(merged) < len(loose)  # a lower NMS threshold suppresses more boxes


def test_dense_masks_match_rle(grpc_client, bus: Path) -> None:
    as_rle = grpc_client.segment_everything(bus, max_prompts=5)
    dense = grpc_client.segment_everything(bus, max_prompts=5, output="dense")
    assert len(as_rle) == 5 and dense.masks.any(axis=(1, 2)).all()
    assert_same(as_rle, dense)
    np.testing.assert_array_equal(dense.masks, as_rle.masks)  # the server's RLE decodes to its masks


def test_logits_output(grpc_client, bus: Path) -> None:
    seg = grpc_client.segment_everything(bus, max_prompts=3, output="logits")
    assert len(seg) == 3
    assert seg.low_res_logits is not None and seg.low_res_logits.shape == (3, 256, 256)
    assert len(seg.rles) == 3
    assert ((seg.low_res_logits > 0).any(axis=(1, 2)) == seg.masks.any(axis=(1, 2))).all()


def test_timings(http_client, bus: Path) -> None:
    seg = http_client.segment_everything(bus, timings=True, max_prompts=FEW)
    assert seg.timings and all(isinstance(v, float) and v >= 0 for v in seg.timings.values())
    assert http_client.segment_everything(bus, max_prompts=FEW).timings is None


def test_many_keeps_order(grpc_client, http_client, sample_images: list[Path]) -> None:
    images = (list(sample_images) * 3)[: max(6, len(sample_images))]
    singles = {p: grpc_client.segment_everything(p, max_prompts=FEW) for p in set(images)}
    for client in (grpc_client, http_client):
        results = client.segment_everything_many(images, concurrency=3, max_prompts=FEW)
        assert len(results) == len(images) and all(len(r) > 0 for r in results)
        for path, seg in zip(images, results, strict=True):
            assert_same(singles[path], seg)


def test_async_many_keeps_order(triton_server, sample_images: list[Path]) -> None:
    images = list(sample_images) * 2

    async def run():
        async with AsyncSegmentEverythingClient(triton_server.grpc_url, retries=0) as client:
            return await client.segment_everything_many(images, concurrency=3, max_prompts=FEW)

    results = asyncio.run(run())
    for path, seg in zip(images, results, strict=True):
        assert seg.image_size == cv2.imread(str(path)).shape[:2] and len(seg) > 0


# ---------------------------------------------------------------------------- prompts


def test_segment_anything_two_boxes(grpc_client, bus: Path) -> None:
    everything = grpc_client.segment_everything(bus, max_prompts=2)
    assert len(everything) == 2
    seg = grpc_client.segment_anything(bus, boxes=everything.boxes)
    assert len(seg) == 2
    assert seg.masks.shape == (2, *everything.image_size)
    np.testing.assert_allclose(seg.scores, 1.0)
    for i in range(2):
        assert seg.mask(i).any()
        assert mask_iou(seg.mask(i), everything.mask(i)) > 0.5


def test_segment_anything_points(http_client, bus: Path) -> None:
    h, w = cv2.imread(str(bus)).shape[:2]
    seg = http_client.segment_anything(bus, points=[[w / 2, h / 2], [w / 4, h / 2]])
    assert len(seg) == 2 and all(seg.mask(i).any() for i in range(2))


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize("client_name", ["grpc_client", "http_client"])
def test_invalid_bytes_raise_invalid_input(request, client_name: str) -> None:
    client = request.getfixturevalue(client_name)
    with pytest.raises(InvalidInputError) as info:
        client.segment_everything(b"this is not an image")
    assert info.value.message.strip()  # the server says what is wrong
    assert info.value.status in ("400", "StatusCode.INVALID_ARGUMENT")


def test_async_invalid_bytes_raise_invalid_input(triton_server) -> None:
    async def run():
        async with AsyncSegmentEverythingClient(triton_server.http_url, protocol="http", retries=0) as client:
            await client.segment_everything(b"\x00\x01\x02")

    with pytest.raises(InvalidInputError):
        asyncio.run(run())


@pytest.mark.parametrize(
    "inputs",
    [
        {"conf_threshold": (np.array([5.0], np.float32), "FP32")},  # no image at all
        {
            "image": (np.array([b"x"], np.object_), "BYTES"),
            "image_raw": (np.zeros((4, 4, 3), np.uint8), "UINT8"),
        },
    ],
    ids=["no-image", "both-images"],
)
def test_server_rejects_bad_requests_with_invalid_arg(triton_server, raw_infer, inputs) -> None:
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as info:
        raw_infer(triton_server, "segment_everything", inputs)
    err = from_triton_exception(info.value)
    assert isinstance(err, InvalidInputError), (info.value.status(), str(info.value))


def test_server_rejects_out_of_range_conf(triton_server, raw_infer, bus: Path) -> None:
    from tritonclient.utils import InferenceServerException

    inputs = {
        "image": (np.array([bus.read_bytes()], np.object_), "BYTES"),
        "conf_threshold": (np.array([5.0], np.float32), "FP32"),
    }
    with pytest.raises(InferenceServerException) as info:
        raw_infer(triton_server, "segment_everything", inputs)
    assert isinstance(from_triton_exception(info.value), InvalidInputError)


# ---------------------------------------------------------------------------- CLI


def test_cli_writes_outputs(triton_server, sample_images: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    images = map(str, sample_images[:2])
    command = [*CLI, "segment", *images, "--url", triton_server.grpc_url, f"--out={out}", "--max-prompts=4"]
    proc = subprocess.run(
        command,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    for p in sample_images[:2]:
        overlay = cv2.imread(str(out / f"{p.stem}_overlay.png"))
        assert overlay is not None and overlay.shape == cv2.imread(str(p)).shape
        doc = (out / f"{p.stem}_coco.json").read_text()
        assert '"annotations"' in doc
    assert "segmented 2/2 images" in proc.stdout


def test_cli_coco_json_loads_with_pycocotools(triton_server, bus: Path, tmp_path: Path) -> None:
    coco = pytest.importorskip("pycocotools.coco")
    proc = subprocess.run(
        [
            *CLI,
            "segment",
            str(bus),
            "--protocol",
            "http",
            "--url",
            triton_server.http_url,
            "--out",
            str(tmp_path),
            "--max-prompts",
            str(FEW),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    ds = coco.COCO(str(tmp_path / f"{bus.stem}_coco.json"))
    ann = ds.loadAnns(ds.getAnnIds())[0]
    assert ds.annToMask(ann).shape == cv2.imread(str(bus)).shape[:2]
    assert rle.area(ann["segmentation"]) == ann["area"]


def test_cli_missing_file(triton_server, tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            *CLI,
            "segment",
            str(tmp_path / "missing.jpg"),
            "--url",
            triton_server.grpc_url,
            "--out",
            str(tmp_path),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "missing.jpg" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_dead_port(bus: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            *CLI,
            "segment",
            str(bus),
            "--url",
            f"127.0.0.1:{free_port()}",
            "--retries",
            "0",
            "--out",
            str(tmp_path),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "server unavailable" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_invalid_image(triton_server, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg at all")
    proc = subprocess.run(
        [*CLI, "segment", str(bad), "--url", triton_server.grpc_url, "--out", str(tmp_path / "out")],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "bad.jpg" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_health(triton_server) -> None:
    ok = subprocess.run(
        [*CLI, "health", "--url", triton_server.grpc_url],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0 and ok.stdout.startswith("ready")
    dead = subprocess.run(
        [*CLI, "health", "--url", f"127.0.0.1:{free_port()}"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert dead.returncode == 1 and dead.stdout.startswith("not ready")
