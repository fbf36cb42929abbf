"""Locust load test of the ``segment_everything`` Triton model, driven with the project's client (gRPC, HTTP).

Each simulated user owns one ``SegmentEverythingClient`` and sends encoded image files (bytes, as a camera or
an upload would) back to back from a folder, round-robin from a per-user offset. Each request is one call of
that client, as an application makes it: spread over the replicas the host names
(``dns:///name:8001``, ``ipv4:10.0.0.7:8001,10.0.0.8:8001``; see ``segment_everything_client.replicas``),
retried by the client's retry policy within its deadline (``--request-timeout``, ``--retries``), and after a
call that failed nonetheless the user pauses as that policy's backoff says before its next one, so the
failures counted are those a real client would see. Every request is reported to locust's event system with
its latency, response size and exception, so locust's statistics, CSV and HTML reports cover it. Needs only
locust and the client (tritonclient, numpy), so it runs on any load-generator machine.

    locust -f loadtest/locustfile.py --headless -u 4 -r 4 -t 5m --host 127.0.0.1:8001
    locust -f loadtest/locustfile.py --host http://triton.example:8000 --protocol http --max-prompts 32
    locust -f loadtest/locustfile.py --host dns:///segevery-segment-everything-headless.vision:8001

``python -m loadtest.run`` wraps this: headless run, reports, percentiles and pass/fail bounds.

The model's settings and the run's options are locust arguments; each has an environment variable too
(``LOCUST_MAX_PROMPTS=16``), which is how ``loadtest.run`` and the tests pass them.
"""

from __future__ import annotations

import itertools
import json
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

# grpcio's blocking calls would stall gevent's loop and serialise all users of this process; this makes them
# cooperative. It must run before the first channel is created.
import grpc.experimental.gevent as grpc_gevent
from locust import User, events, task

grpc_gevent.init_gevent()

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_images, request_settings

import segment_everything_contract as contract
from segment_everything_client import SegmentEverythingClient
from segment_everything_client.images import prepare_image
from segment_everything_client.protocol import PROTOCOLS, build_request

OUTPUT_FORMATS = ("rle", "dense")


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    # On the parser itself, not in a group: only its add_argument takes locust's web-UI keywords.
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="grpc",
        env_var="LOCUST_PROTOCOL",
        help="tritonclient transport; --host is host:port of that endpoint (gRPC 8001, HTTP 8000)",
    )
    parser.add_argument(
        "--images",
        default="",
        env_var="LOCUST_IMAGES",
        help="folder of images sent as encoded bytes (default: the images shipped with ultralytics)",
    )
    parser.add_argument("--model-name", default="segment_everything", env_var="LOCUST_MODEL_NAME")
    parser.add_argument(
        "--max-prompts",
        type=int,
        default=0,
        env_var="LOCUST_MAX_PROMPTS",
        help="objects segmented per image; 0 = server default (300). Small values keep requests fast",
    )
    parser.add_argument(
        "--conf",
        type=float,
        default=0.0,
        env_var="LOCUST_CONF",
        help="detector confidence threshold; 0 = server default (0.4)",
    )
    parser.add_argument(
        "--iou",
        type=float,
        default=0.0,
        env_var="LOCUST_IOU",
        help="box NMS IoU threshold; 0 = server default (0.9)",
    )
    parser.add_argument(
        "--output-format",
        choices=OUTPUT_FORMATS,
        default="rle",
        env_var="LOCUST_OUTPUT_FORMAT",
        help="rle (COCO RLE strings, the default) or dense (HxW bool masks: large responses)",
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=600.0,
        env_var="LOCUST_REQUEST_TIMEOUT",
        help="seconds before a request counts as failed (the client's deadline, its retries included)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=3,
        env_var="LOCUST_RETRIES",
        help="the client's retries of a request (its RetryPolicy; 0: none)",
    )
    parser.add_argument(
        "--think-time",
        type=float,
        default=0.0,
        env_var="LOCUST_THINK_TIME",
        help="seconds a user waits between requests (0: closed loop, back to back)",
    )
    parser.add_argument(
        "--per-image-names",
        action="store_true",
        default=False,
        env_var="LOCUST_PER_IMAGE_NAMES",
        help="one stats row per image file instead of one for the model",
    )
    parser.add_argument(
        "--server-timings",
        action="store_true",
        default=False,
        env_var="LOCUST_SERVER_TIMINGS",
        help="ask for the server's per-stage milliseconds and keep them in --samples-file",
    )
    parser.add_argument(
        "--samples-file",
        default="",
        env_var="LOCUST_SAMPLES_FILE",
        include_in_web_ui=False,
        help="append one JSON line per request (exact latencies for loadtest.run's percentiles)",
    )


class SampleLog:
    """Appends one JSON line per request; shared by the users of this process."""

    def __init__(self, path: str) -> None:
        self._file = open(path, "a", buffering=1, encoding="utf-8") if path else None  # noqa: SIM115
        self._lock = threading.Lock()

    def write(self, record: dict[str, Any]) -> None:
        if self._file is not None:
            with self._lock:
                self._file.write(json.dumps(record, separators=(",", ":")) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


_samples: SampleLog | None = None


@events.test_start.add_listener
def _open_samples(environment: Any, **_: Any) -> None:
    global _samples
    if _samples is None:
        _samples = SampleLog(getattr(environment.parsed_options, "samples_file", "") or "")


@events.quitting.add_listener
def _close_samples(**_: Any) -> None:
    if _samples is not None:
        _samples.close()


class ResponseError(Exception):
    """The server answered, but not with a well-formed segmentation."""


class SegmentEverythingUser(User):
    """Sends SegEvery requests back to back (``--think-time`` apart) to Triton's ``segment_everything``; after
    a failed call it pauses as the client's retry policy backs off (see the module's docstring)."""

    _user_ids = itertools.count()
    _images: list[tuple[str, bytes]] | None = None

    def wait_time(self) -> float:
        if self.failed_in_a_row:
            # continue the client's backoff where its retries stopped
            attempt = self.client.retry.retries + self.failed_in_a_row - 1
            return self.client.retry.backoff_delay(attempt, self.rng)
        return self.think_time

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.protocol: str = options.protocol
        self.model_name: str = options.model_name
        self.per_image_names: bool = options.per_image_names
        self.server_timings: bool = options.server_timings
        self.think_time: float = max(0.0, options.think_time)
        self.failed_in_a_row = 0
        self.rng = random.Random()
        if SegmentEverythingUser._images is None:
            SegmentEverythingUser._images = load_images(options.images or None)
        images = SegmentEverythingUser._images
        user_id = next(self._user_ids)
        self.images = itertools.cycle(images[user_id % len(images) :] + images[: user_id % len(images)])
        self.client = SegmentEverythingClient(
            self.host or None,
            self.protocol,
            timeout=options.request_timeout,
            retries=options.retries,
            model_name=self.model_name,
        )
        self.mod = self.client._mod
        self.settings = self._settings(options)

    def on_stop(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            client.close()

    # -- request building: the client's protocol module, from the wire contract ----------------------------

    def _settings(self, options: Any) -> Any:
        settings = request_settings(
            options.max_prompts, options.conf, options.iou, options.output_format, options.server_timings
        )
        self.masks_output = contract.MASKS.name if settings.output == "dense" else contract.MASKS_RLE.name
        return settings

    def _response_size(self, result: Any) -> int:
        response = result.get_response()
        if self.protocol == "grpc":
            return response.ByteSize()
        binary = sum(o.get("parameters", {}).get("binary_data_size", 0) for o in response.get("outputs", []))
        return len(json.dumps(response)) + binary

    def _check(self, result: Any) -> tuple[int, dict[str, float] | None]:
        """Number of masks, server timings; raises ResponseError on an inconsistent answer."""
        boxes = result.as_numpy(contract.BOXES_OUT.name)
        masks = result.as_numpy(self.masks_output)
        if boxes is None or masks is None:
            raise ResponseError(f"response lacks 'boxes' or '{self.masks_output}'")
        count = 0 if boxes.size == 0 else boxes.reshape(-1, 4).shape[0]
        if (masks.shape[0] if masks.ndim else 0) != count:
            raise ResponseError(f"{count} boxes but {masks.shape[0] if masks.ndim else 0} masks")
        timings = None
        if self.server_timings:
            raw = result.as_numpy(contract.TIMINGS.name)
            if raw is not None and raw.size:
                value = raw.reshape(-1)[0]
                timings = json.loads(value.decode() if isinstance(value, bytes) else value)
        return count, timings

    # -- the task -------------------------------------------------------------------------------------------

    @task
    def segment_everything(self) -> None:
        image_name, data = next(self.images)
        name = f"{self.model_name}:{image_name}" if self.per_image_names else self.model_name
        inputs, outputs = build_request(self.mod, prepare_image(data), self.settings)
        started_at = time.time()
        start = time.perf_counter()
        size, exception, count, timings = 0, None, 0, None
        try:
            # the client's own call (balancing, deadline, retries) on the raw result: the response size
            result = self.client._infer(inputs, outputs)
            size = self._response_size(result)
            count, timings = self._check(result)
        except Exception as exc:
            exception = exc
        latency_ms = (time.perf_counter() - start) * 1e3
        self.failed_in_a_row = 0 if exception is None else self.failed_in_a_row + 1
        self.environment.events.request.fire(
            request_type=self.protocol,
            name=name,
            response_time=latency_ms,
            response_length=size,
            exception=exception,
            context={"image": image_name, "masks": count},
        )
        if _samples is not None:
            _samples.write(
                {
                    "t": round(started_at, 4),
                    "ms": round(latency_ms, 3),
                    "ok": exception is None,
                    "name": name,
                    "image": image_name,
                    "bytes": size,
                    "masks": count,
                    "error": None if exception is None else f"{type(exception).__name__}: {exception}"[:500],
                    **({"server_ms": timings} if timings else {}),
                }
            )
