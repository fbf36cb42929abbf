"""Client plumbing without a server: request building, response parsing, retries, concurrency,
dead ports, and the CLI's failure paths."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException

import segment_everything_contract as contract
from segment_everything_client import (
    AsyncSegmentEverythingClient,
    InvalidInputError,
    SegmentEverythingClient,
    SegmentEverythingError,
    ServerError,
    ServerUnavailableError,
)
from segment_everything_client import protocol as _protocol
from segment_everything_client.cli import main as cli_main
from segment_everything_client.images import prepare_image
from segment_everything_client.types import SegmentSettings
from segment_everything_contract import rle

H, W = 12, 16


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeResult:
    """Quacks like tritonclient's InferResult."""

    def __init__(self, outputs: dict[str, np.ndarray]):
        self.outputs = outputs

    def as_numpy(self, name: str) -> np.ndarray | None:
        return self.outputs.get(name)


def fake_response(n: int = 2, tag: float = 0.0, timings: bool = False) -> FakeResult:
    masks = np.zeros((n, H, W), bool)
    for i in range(n):
        masks[i, i : i + 3, i : i + 4] = True
    out = {
        "boxes": np.array([[i, i, i + 4, i + 3] for i in range(n)], np.float32).reshape(-1, 4),
        "scores": np.full(n, 0.5 + tag, np.float32),
        "iou_predictions": np.full(n, 0.9, np.float32),
        "masks_rle": np.array([rle.dumps(rle.encode(m)) for m in masks], dtype=np.object_),
        "masks": masks,
        "image_size": np.array([H, W], np.int32),
    }
    if timings:
        out["timings"] = np.array([json.dumps({"encoder": 3.5, "decoder": 1.25}).encode()], dtype=np.object_)
    return FakeResult(out)


# ------------------------------------------------------------------------ request building


def _names(inputs: list[Any]) -> dict[str, Any]:
    return {t.name(): t for t in inputs}


@pytest.mark.parametrize("mod", [thttp, tgrpc], ids=["http", "grpc"])
def test_build_request_for_encoded_image_and_settings(mod) -> None:
    settings = SegmentSettings(conf=0.3, iou=0.8, max_prompts=50, output="dense", timings=True)
    inputs, outputs = _protocol.build_request(mod, prepare_image(b"jpegbytes"), settings)
    by_name = _names(inputs)
    assert {n: t.datatype() for n, t in by_name.items()} == {
        "image": "BYTES",
        "conf_threshold": "FP32",
        "iou_threshold": "FP32",
        "max_prompts": "INT32",
        "output_format": "BYTES",
        "return_timings": "BOOL",
        "multimask": "BOOL",
    }
    assert by_name["image"].shape() == [1]
    assert [o.name() for o in outputs] == [
        "boxes",
        "scores",
        "iou_predictions",
        "prompt_index",
        "image_size",
        "masks",
        "timings",
    ]


@pytest.mark.parametrize("mod", [thttp, tgrpc], ids=["http", "grpc"])
def test_build_request_sends_the_contract_defaults_explicitly(mod) -> None:
    inputs, outputs = _protocol.build_request(
        mod, prepare_image(np.zeros((5, 7, 3), np.uint8)), SegmentSettings()
    )
    by_name = _names(inputs)
    image = by_name.pop("image_raw")
    assert image.datatype() == "UINT8" and image.shape() == [5, 7, 3]
    assert set(by_name) == {s.name for s in contract.PIPELINE_INPUTS[2:8]}  # every setting, no prompts
    assert [o.name() for o in outputs] == [
        "boxes",
        "scores",
        "iou_predictions",
        "prompt_index",
        "image_size",
        "masks_rle",
    ]


def test_build_request_with_box_and_point_prompts() -> None:
    boxes = _protocol.prompt_arrays(boxes=[[1, 2, 3, 4], [5, 6, 7, 8]])
    inputs, _ = _protocol.build_request(tgrpc, prepare_image(b"x"), SegmentSettings(conf=0.2), boxes)
    by_name = _names(inputs)
    assert by_name["boxes"].shape() == [2, 4] and by_name["boxes"].datatype() == "FP32"
    assert "points" not in by_name
    points = _protocol.prompt_arrays(points=[[1, 1]], point_labels=[0])
    by_name = _names(_protocol.build_request(tgrpc, prepare_image(b"x"), SegmentSettings(), points)[0])
    assert by_name["points"].shape() == [1, 1, 2] and by_name["point_labels"].datatype() == "INT32"
    assert "boxes" not in by_name


def test_logits_requests_rle_and_logits() -> None:
    _, outputs = _protocol.build_request(thttp, prepare_image(b"x"), SegmentSettings(output="logits"))
    assert {"masks_rle", "low_res_logits"} <= {o.name() for o in outputs}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({}, "give boxes"),
        ({"boxes": [[1, 2, 3]]}, "boxes must have shape"),
        ({"boxes": [[1, 2, 3, float("nan")]]}, "NaN"),
        ({"boxes": [[1, 2, 3, 4]], "points": [[1, 2]]}, "not both"),
        ({"points": np.zeros((1, 33, 2))}, "at most 32 points per prompt"),
        ({"points": [[[1, 2, 3]]]}, "points must have shape"),
        ({"points": [[1, 2]], "point_labels": [[1, 1]]}, "point_labels must have shape"),
        ({"points": [[1, 2]], "point_labels": [2]}, "1 \\(foreground\\) or 0"),
        ({"point_labels": [1]}, "without points"),
    ],
)
def test_prompt_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        _protocol.prompt_arrays(**kwargs)


def test_prompt_shapes() -> None:
    assert _protocol.prompt_arrays(boxes=[1, 2, 3, 4]).boxes.shape == (1, 4)
    p = _protocol.prompt_arrays(points=[[[1, 2], [3, 4]]])
    assert p.points.shape == (1, 2, 2) and p.point_labels.tolist() == [[1, 1]]


# ------------------------------------------------------------------------ response parsing


def test_parse_rle_response() -> None:
    seg = _protocol.parse_response(fake_response(2, timings=True), SegmentSettings(timings=True))
    assert len(seg) == 2 and seg.image_size == (H, W)
    assert seg.timings == {"encoder": 3.5, "decoder": 1.25}
    np.testing.assert_array_equal(seg.masks, fake_response(2).outputs["masks"])


def test_parse_dense_response() -> None:
    resp = fake_response(3)
    del resp.outputs["masks_rle"]
    seg = _protocol.parse_response(resp, SegmentSettings(output="dense"))
    assert seg.rles[1] == rle.encode(resp.outputs["masks"][1])


def test_parse_empty_response() -> None:
    resp = fake_response(0)
    seg = _protocol.parse_response(resp, SegmentSettings())
    assert len(seg) == 0 and seg.boxes.shape == (0, 4)


def test_parse_missing_output_is_server_error() -> None:
    resp = fake_response(1)
    del resp.outputs["masks_rle"]
    with pytest.raises(ServerError, match="masks_rle"):
        _protocol.parse_response(resp, SegmentSettings())


def test_parse_inconsistent_response_is_server_error() -> None:
    resp = fake_response(2)
    resp.outputs["scores"] = resp.outputs["scores"][:1]
    with pytest.raises(ServerError, match="malformed"):
        _protocol.parse_response(resp, SegmentSettings())


def test_url_normalisation() -> None:
    assert _protocol.normalize_url(None, "http", False) == ("127.0.0.1:8000", False)
    assert _protocol.normalize_url("https://host:8000", "http", False) == ("host:8000", True)
    with pytest.raises(InvalidInputError, match="protocol"):
        _protocol.normalize_url("x:1", "websocket", False)


# ------------------------------------------------------------------ retries and concurrency


class FakeTriton:
    """A tritonclient stand-in: fails with the given exceptions first, then answers."""

    instances: ClassVar[list[FakeTriton]] = []

    def __init__(self, failures: list[BaseException] | None = None, delay: float = 0.0):
        self.failures = list(failures or [])
        self.delay = delay
        self.calls = 0
        self.threads: set[int] = set()
        self.closed = False
        FakeTriton.instances.append(self)

    def infer(self, model_name, inputs, **kwargs):
        self.calls += 1
        self.kwargs = kwargs
        self.threads.add(threading.get_ident())
        if self.failures:
            raise self.failures.pop(0)
        if self.delay:
            time.sleep(random.random() * self.delay)
        return fake_response(1, tag=image_tag(inputs))

    def is_server_ready(self, **kwargs):
        return True

    def is_model_ready(self, *args, **kwargs):
        return True

    def close(self):
        self.closed = True


def image_tag(inputs: list[Any]) -> float:
    """Raw images of height k answer with score 0.5 + k, so results can be matched to inputs."""
    raw = _names(inputs).get("image_raw")
    return float(raw.shape()[0]) if raw is not None else 0.0


def raw_images(n: int) -> list[np.ndarray]:
    return [np.zeros((k + 1, 2, 3), np.uint8) for k in range(n)]


def unavailable() -> InferenceServerException:
    return InferenceServerException("connection refused", status="StatusCode.UNAVAILABLE")


def test_the_deadline_and_priority_travel_with_each_call(monkeypatch) -> None:
    fake = FakeTriton()
    client = SegmentEverythingClient(timeout=7.0)
    monkeypatch.setattr(client, "_new_triton_client", lambda: fake)
    client.segment_everything(b"img")
    assert 6.0 < fake.kwargs["client_timeout"] <= 7.0  # gRPC deadline of this attempt
    assert (
        6e6 < fake.kwargs["timeout"] <= 7e6
    )  # Triton's timeout parameter (microseconds): the server drops it
    assert fake.kwargs["priority"] == 0
    client.segment_anything(b"img", points=[[1, 1]])
    assert fake.kwargs["priority"] == 1  # interactive clicks go ahead of SegEvery in the server's queue


@pytest.mark.parametrize(
    "failure, retried",
    [
        (InferenceServerException("Exceeds maximum queue size", status="StatusCode.UNAVAILABLE"), True),
        (InferenceServerException("Too Many Requests", status="429"), True),
        (ConnectionRefusedError(111, "Connection refused"), True),
        (InferenceServerException("Deadline Exceeded", status="StatusCode.DEADLINE_EXCEEDED"), False),
        # the server may have started it, but its replica went away and the requests are idempotent
        (ConnectionResetError(104, "Connection reset by peer"), True),
        (InferenceServerException("Stream removed (Socket closed)", status="StatusCode.UNAVAILABLE"), True),
        (InferenceServerException("internal error (request id 1)", status="StatusCode.INTERNAL"), False),
    ],
)
def test_only_work_that_cannot_have_started_is_retried(monkeypatch, failure, retried) -> None:
    fake = FakeTriton([failure])
    client = SegmentEverythingClient(retries=1, backoff=0.0)
    monkeypatch.setattr(client, "_new_triton_client", lambda: fake)
    if retried:
        assert len(client.segment_everything(b"img")) == 1
    else:
        with pytest.raises(SegmentEverythingError):
            client.segment_everything(b"img")
    assert fake.calls == (2 if retried else 1)


def test_retry_started_work_when_the_caller_allows_it(monkeypatch) -> None:
    fake = FakeTriton([InferenceServerException("Deadline Exceeded", status="StatusCode.DEADLINE_EXCEEDED")])
    client = SegmentEverythingClient(retries=1, backoff=0.0, retry_started_work=True)
    monkeypatch.setattr(client, "_new_triton_client", lambda: fake)
    assert len(client.segment_everything(b"img")) == 1 and fake.calls == 2


def test_retries_stop_at_the_overall_deadline(monkeypatch) -> None:
    fake = FakeTriton([unavailable()] * 50)
    client = SegmentEverythingClient(retries=50, backoff=0.2, max_backoff=0.2, timeout=0.5)
    monkeypatch.setattr(client, "_new_triton_client", lambda: fake)
    start = time.monotonic()
    with pytest.raises(ServerUnavailableError):
        client.segment_everything(b"img")
    assert time.monotonic() - start < 0.6 and fake.calls < 50


def test_unavailable_is_retried_then_succeeds(monkeypatch) -> None:
    fake = FakeTriton([unavailable(), unavailable()])
    client = SegmentEverythingClient(retries=3, backoff=0.0)
    monkeypatch.setattr(client, "_new_triton_client", lambda: fake)
    assert len(client.segment_everything(b"img")) == 1
    assert fake.calls == 3


def test_retries_give_up_with_unavailable(monkeypatch) -> None:
    fake = FakeTriton([unavailable()] * 5)
    client = SegmentEverythingClient(retries=2, backoff=0.0)
    monkeypatch.setattr(client, "_new_triton_client", lambda: fake)
    with pytest.raises(ServerUnavailableError):
        client.segment_everything(b"img")
    assert fake.calls == 3


def test_invalid_argument_is_not_retried(monkeypatch) -> None:
    fake = FakeTriton([InferenceServerException("cannot decode image", status="StatusCode.INVALID_ARGUMENT")])
    client = SegmentEverythingClient(retries=3, backoff=0.0)
    monkeypatch.setattr(client, "_new_triton_client", lambda: fake)
    with pytest.raises(InvalidInputError, match="cannot decode image"):
        client.segment_everything(b"img")
    assert fake.calls == 1


def test_backoff_is_jittered_and_exponentially_bounded(monkeypatch) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr(time, "sleep", sleeps.append)
    fake = FakeTriton([unavailable()] * 3)
    client = SegmentEverythingClient(retries=3, backoff=0.5)
    client._rng = random.Random(7)
    monkeypatch.setattr(client, "_new_triton_client", lambda: fake)
    client.segment_everything(b"img")
    assert len(sleeps) == 3
    assert all(0.0 <= wait <= cap for wait, cap in zip(sleeps, [0.5, 1.0, 2.0], strict=True))
    assert len(set(sleeps)) == 3  # jittered: no two clients retry in lockstep


def test_many_keeps_order_and_uses_one_transport_per_thread(monkeypatch) -> None:
    FakeTriton.instances = []
    client = SegmentEverythingClient(protocol="http")
    monkeypatch.setattr(client, "_new_triton_client", lambda: FakeTriton(delay=0.01))
    segs = client.segment_everything_many(raw_images(12), concurrency=4)
    assert [float(s.scores[0]) for s in segs] == [0.5 + k + 1 for k in range(12)]
    workers = FakeTriton.instances
    assert 1 <= len(workers) <= 4
    assert all(len(w.threads) == 1 for w in workers)
    assert all(w.closed for w in workers)  # worker threads close their own transports


def test_many_return_exceptions(monkeypatch, tmp_path: Path) -> None:
    client = SegmentEverythingClient()
    monkeypatch.setattr(client, "_new_triton_client", FakeTriton)
    out = client.segment_everything_many([b"a", tmp_path / "missing.jpg", b"c"], return_exceptions=True)
    assert len(out[0]) == 1 and isinstance(out[1], InvalidInputError) and len(out[2]) == 1
    with pytest.raises(InvalidInputError):
        client.segment_everything_many([b"a", tmp_path / "missing.jpg"])


def test_many_validates_settings_eagerly() -> None:
    with pytest.raises(InvalidInputError):
        SegmentEverythingClient().segment_everything_iter([b"a"], conf=2.0)


def test_closed_client_refuses_work() -> None:
    client = SegmentEverythingClient()
    client.close()
    with pytest.raises(Exception, match="closed"):
        client.segment_everything(b"img")


def test_transport_options_checked_against_protocol() -> None:
    with pytest.raises(TypeError, match="root_certificates"):
        SegmentEverythingClient(protocol="http", root_certificates="ca.pem")


def test_async_client_retries_and_keeps_order(monkeypatch) -> None:
    class AsyncFake:
        def __init__(self):
            self.failures = [unavailable()]
            self.calls = 0

        async def infer(self, model_name, inputs, **kwargs):
            self.calls += 1
            if self.failures:
                raise self.failures.pop(0)
            await asyncio.sleep(random.random() * 0.01)
            return fake_response(1, tag=image_tag(inputs))

        async def close(self):
            pass

    fake = AsyncFake()

    async def run():
        async with AsyncSegmentEverythingClient(protocol="http", backoff=0.0) as client:
            monkeypatch.setattr(client, "_triton", lambda: fake)
            one = await client.segment_everything(b"x")
            many = await client.segment_everything_many(raw_images(6), concurrency=3)
            return one, many

    one, many = asyncio.run(run())
    assert len(one) == 1 and fake.calls == 8  # 1 retried + 1 + 6
    assert [float(s.scores[0]) for s in many] == [0.5 + k + 1 for k in range(6)]


# ------------------------------------------------------------------ real transports, dead port


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_dead_port_sync(protocol: str) -> None:
    with SegmentEverythingClient(
        f"127.0.0.1:{free_port()}", protocol=protocol, retries=0, timeout=5
    ) as client:
        assert client.is_ready() is False
        with pytest.raises(ServerUnavailableError):
            client.segment_everything(b"img")
        with pytest.raises(ServerUnavailableError):
            client.wait_until_ready(timeout=0.2, interval=0.1)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_dead_port_async(protocol: str) -> None:
    async def run():
        async with AsyncSegmentEverythingClient(
            f"127.0.0.1:{free_port()}", protocol=protocol, retries=0
        ) as client:
            assert await client.is_ready() is False
            with pytest.raises(ServerUnavailableError):
                await client.segment_everything(b"img")

    asyncio.run(run())


# ------------------------------------------------------------------------------- CLI paths


def test_cli_missing_file_exits_2(tmp_path: Path, capsys) -> None:
    code = cli_main(["segment", str(tmp_path / "nope.jpg"), "--out", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert "no such file or directory" in err and len(err.strip().splitlines()) == 1


def test_cli_dead_server_exits_3(tmp_path: Path, capsys) -> None:
    img = tmp_path / "a.png"
    cv2.imwrite(str(img), np.zeros((4, 4, 3), np.uint8))
    code = cli_main(
        ["segment", str(img), "--url", f"127.0.0.1:{free_port()}", "--retries", "0", "--out", str(tmp_path)]
    )
    assert code == 3
    err = capsys.readouterr().err
    assert "server unavailable" in err and len(err.strip().splitlines()) == 1


def test_cli_bad_setting_exits_2(tmp_path: Path, capsys) -> None:
    img = tmp_path / "a.png"
    cv2.imwrite(str(img), np.zeros((4, 4, 3), np.uint8))
    assert cli_main(["segment", str(img), "--conf", "3", "--out", str(tmp_path)]) == 2
    assert "conf_threshold must be in [0, 1)" in capsys.readouterr().err


def test_cli_health_dead_server_exits_1(capsys) -> None:
    assert cli_main(["health", "--url", f"127.0.0.1:{free_port()}", "--protocol", "http"]) == 1
    assert capsys.readouterr().out.startswith("not ready")


def test_cli_segment_with_fake_transport(tmp_path: Path, monkeypatch, capsys) -> None:
    images = []
    for name in ("b.png", "a.png"):
        p = tmp_path / "in" / name
        p.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(p), np.full((H, W, 3), 80, np.uint8))
        images.append(p)
    monkeypatch.setattr(SegmentEverythingClient, "_new_triton_client", lambda self: FakeTriton())
    out = tmp_path / "out"
    code = cli_main(["segment", str(tmp_path / "in"), "--out", str(out), "-q"])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "a_coco.json",
        "a_overlay.png",
        "b_coco.json",
        "b_overlay.png",
    ]
    doc = json.loads((out / "a_coco.json").read_text())
    assert doc["images"][0] == {"id": 1, "file_name": "a.png", "height": H, "width": W}
    assert doc["annotations"][0]["id"] == 1 and "counts" in doc["annotations"][0]["segmentation"]
    assert "segmented 2/2 images, 2 instances" in capsys.readouterr().out
