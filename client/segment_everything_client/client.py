"""Synchronous client for the ``segment_everything`` Triton model.

Transport is tritonclient (gRPC or HTTP). One tritonclient client is created per thread that
uses a :class:`SegmentEverythingClient` (tritonclient's HTTP client must not be shared between
threads), so one instance can be shared by a thread pool.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing import Self

from . import _protocol
from .errors import (
    ModelNotReadyError,
    RequestTimeoutError,
    SegmentEverythingError,
    ServerUnavailableError,
    map_exception,
)
from .images import ImageInput, prepare_image
from .types import Segmentation, SegmentSettings

__all__ = ["SegmentEverythingClient"]

_HTTP_ONLY = ("ssl_options", "ssl_context_factory", "insecure")
_GRPC_ONLY = ("root_certificates", "private_key", "certificate_chain", "creds")


def _transport_kwargs(protocol: str, options: dict[str, Any]) -> dict[str, Any]:
    given = {k: v for k, v in options.items() if v not in (None, False)}
    wrong = [k for k in given if k in (_GRPC_ONLY if protocol == "http" else _HTTP_ONLY)]
    if wrong:
        raise TypeError(f"{', '.join(wrong)} do not apply to protocol={protocol!r}")
    return given


class SegmentEverythingClient:
    """Segment everything (or given boxes/points) in images served by Triton.

    Args:
        url: ``host:port`` of Triton (a ``http://``/``https://`` prefix is accepted). Default
            ``127.0.0.1:8001`` for gRPC, ``127.0.0.1:8000`` for HTTP.
        protocol: ``"grpc"`` (default) or ``"http"``.
        timeout: seconds to wait for one request (connection and response).
        ssl: use TLS. Transport options pass through to tritonclient: for HTTP
            ``ssl_options``, ``ssl_context_factory``, ``insecure``; for gRPC
            ``root_certificates``, ``private_key``, ``certificate_chain``, ``creds``.
        headers: extra HTTP headers / gRPC metadata sent with every request.
        retries: how many times a request is retried when the server is unavailable
            (connection refused, HTTP 503, gRPC UNAVAILABLE). Invalid input is never retried.
        backoff: seconds before the first retry; doubles on each further retry.
        model_name, model_version: the Triton model to call.

    Example (with a server on localhost)::

        >>> from segment_everything_client import SegmentEverythingClient
        >>> with SegmentEverythingClient("127.0.0.1:8001") as client:  # doctest: +SKIP
        ...     seg = client.segment_everything("bus.jpg", conf=0.4)
        ...     print(len(seg), seg.boxes.shape, seg.masks.shape)
        ...     seg.save_overlay("bus_overlay.png", "bus.jpg")
        17 (17, 4) (17, 1080, 810)
        >>> client = SegmentEverythingClient("127.0.0.1:8000", protocol="http")  # doctest: +SKIP
        >>> seg = client.segment_anything("bus.jpg", boxes=[[50, 400, 250, 900]])  # doctest: +SKIP
        >>> client.segment_everything(b"not an image")  # doctest: +SKIP
        Traceback (most recent call last):
        ...
        segment_everything_client.errors.InvalidInputError: image bytes could not be decoded
    """

    def __init__(
        self,
        url: str | None = None,
        protocol: str = "grpc",
        *,
        timeout: float = 60.0,
        ssl: bool = False,
        ssl_options: dict[str, Any] | None = None,
        ssl_context_factory: Any = None,
        insecure: bool = False,
        root_certificates: str | None = None,
        private_key: str | None = None,
        certificate_chain: str | None = None,
        creds: Any = None,
        headers: dict[str, str] | None = None,
        retries: int = 3,
        backoff: float = 0.5,
        model_name: str = _protocol.DEFAULT_MODEL_NAME,
        model_version: str = "",
        verbose: bool = False,
    ):
        self.url, self.ssl = _protocol.normalize_url(url, protocol, ssl)
        self.protocol = protocol
        self.timeout = float(timeout)
        self.headers = dict(headers) if headers else None
        if retries < 0 or backoff < 0:
            raise ValueError("retries and backoff must be >= 0")
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.model_name = model_name
        self.model_version = model_version
        self.verbose = verbose
        self._transport = _transport_kwargs(
            protocol,
            {
                "ssl_options": ssl_options,
                "ssl_context_factory": ssl_context_factory,
                "insecure": insecure,
                "root_certificates": root_certificates,
                "private_key": private_key,
                "certificate_chain": certificate_chain,
                "creds": creds,
            },
        )
        if protocol == "http":
            import tritonclient.http as mod
        else:
            import tritonclient.grpc as mod
        self._mod = mod
        self._local = threading.local()
        self._clients: list[Any] = []
        self._lock = threading.Lock()
        self._closed = False

    # ------------------------------------------------------------------ transport plumbing

    def _new_triton_client(self) -> Any:
        if self.protocol == "http":
            return self._mod.InferenceServerClient(
                self.url,
                verbose=self.verbose,
                connection_timeout=self.timeout,
                network_timeout=self.timeout,
                ssl=self.ssl,
                **self._transport,
            )
        return self._mod.InferenceServerClient(
            self.url, verbose=self.verbose, ssl=self.ssl, **self._transport
        )

    def _triton(self) -> Any:
        """This thread's tritonclient client, created on first use."""
        if self._closed:
            raise SegmentEverythingError("the client is closed")
        client = getattr(self._local, "client", None)
        if client is None:
            try:
                client = self._new_triton_client()
            except Exception as exc:  # bad URL etc.
                raise SegmentEverythingError(
                    f"cannot create a {self.protocol} client for {self.url}: {exc}"
                ) from exc
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def _release_thread_client(self) -> None:
        client = getattr(self._local, "client", None)
        if client is None:
            return
        self._local.client = None
        with self._lock:
            if client in self._clients:
                self._clients.remove(client)
        with contextlib.suppress(Exception):
            client.close()

    def _call_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"headers": self.headers}
        if self.protocol == "grpc":
            kwargs["client_timeout"] = self.timeout
        return kwargs

    def _with_retries(self, fn: Any) -> Any:
        attempt = 0
        while True:
            try:
                return fn()
            except BaseException as exc:
                err = map_exception(exc)
                if err is None:
                    raise
                if not err.retryable or attempt >= self.retries:
                    if err is exc:
                        raise
                    raise err from exc
            time.sleep(self.backoff * (2**attempt))
            attempt += 1

    def _infer(self, inputs: list[Any], outputs: list[Any]) -> Any:
        def call() -> Any:
            return self._triton().infer(
                self.model_name,
                inputs,
                model_version=self.model_version,
                outputs=outputs,
                **self._call_kwargs(),
            )

        return self._with_retries(call)

    # ------------------------------------------------------------------------- public API

    def segment_everything(
        self,
        image: ImageInput,
        *,
        conf: float | None = None,
        iou: float | None = None,
        max_prompts: int | None = None,
        output: str = "rle",
        timings: bool = False,
        channel_order: str = "rgb",
    ) -> Segmentation:
        """Find and segment every object in ``image``.

        Args:
            image: a path, encoded file bytes, a uint8 array (``HxW``, ``HxWx3``, ``HxWx4``) or a
                PIL image; see :func:`~segment_everything_client.images.prepare_image`.
            conf: detector confidence threshold (server default 0.4).
            iou: NMS IoU threshold between discovered boxes (server default 0.9).
            max_prompts: at most this many objects are segmented (server default 300).
            output: ``"rle"`` (default), ``"dense"`` or ``"logits"``.
            timings: include the server's per-stage milliseconds in ``Segmentation.timings``.
            channel_order: ``"rgb"`` or ``"bgr"`` (``cv2.imread``) for array inputs.

        Raises:
            InvalidInputError, ImageNotFoundError, ServerUnavailableError,
            ModelNotReadyError, RequestTimeoutError, ServerError.
        """
        settings = SegmentSettings(
            conf=conf, iou=iou, max_prompts=max_prompts, output=output, timings=timings
        )
        return self._segment(image, settings, channel_order=channel_order)

    def _segment(
        self,
        image: ImageInput,
        settings: SegmentSettings,
        *,
        channel_order: str = "rgb",
        prompts: dict[str, Any] | None = None,
    ) -> Segmentation:
        prepared = prepare_image(image, channel_order=channel_order)
        inputs, outputs = _protocol.build_request(self._mod, prepared, settings, prompts)
        result = self._infer(inputs, outputs)
        return _protocol.parse_response(result, settings)

    def segment_anything(
        self,
        image: ImageInput,
        boxes: Any = None,
        points: Any = None,
        point_labels: Any = None,
        *,
        output: str = "rle",
        timings: bool = False,
        channel_order: str = "rgb",
    ) -> Segmentation:
        """Segment the objects you point at: one mask per box and/or per point prompt.

        Args:
            boxes: ``(N, 4)`` xyxy boxes in original image pixels.
            points: ``(N, K, 2)`` xy points, N prompts of K points; ``(N, 2)`` = N one-point prompts.
            point_labels: ``(N, K)``; 1 = foreground (default), 0 = background.

        Object discovery is skipped; ``scores`` are 1.0.
        """
        prompts = _protocol.prompt_arrays(boxes, points, point_labels)
        settings = SegmentSettings(output=output, timings=timings)
        return self._segment(image, settings, channel_order=channel_order, prompts=prompts)

    def segment_everything_iter(
        self,
        images: Iterable[ImageInput],
        *,
        concurrency: int = 4,
        return_exceptions: bool = False,
        **settings: Any,
    ) -> Iterator[tuple[int, Segmentation | SegmentEverythingError]]:
        """Yield ``(index, result)`` as requests complete, ``concurrency`` in flight at a time.

        Each worker thread has its own tritonclient client. With ``return_exceptions`` a
        failed image yields its :class:`SegmentEverythingError` instead of stopping the run.
        Leaving the loop early stops the workers after their current request.
        """
        items = list(images)
        channel_order = settings.pop("channel_order", "rgb")
        parsed = SegmentSettings(**settings)  # validated now, not at the first next()
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        return self._iter(items, parsed, channel_order, concurrency, return_exceptions)

    def _iter(
        self,
        items: list[Any],
        parsed: SegmentSettings,
        channel_order: str,
        concurrency: int,
        return_exceptions: bool,
    ) -> Iterator[tuple[int, Any]]:
        if not items:
            return
        counter = itertools.count()
        stop = threading.Event()
        done: queue.Queue[tuple[int, Any, bool]] = queue.Queue()

        def worker() -> None:
            try:
                while not stop.is_set():
                    i = next(counter)
                    if i >= len(items):
                        return
                    try:
                        done.put((i, self._segment(items[i], parsed, channel_order=channel_order), True))
                    except BaseException as exc:
                        done.put((i, exc, False))
            finally:
                self._release_thread_client()

        threads = [
            threading.Thread(target=worker, name=f"segment-everything-{k}", daemon=True)
            for k in range(min(concurrency, len(items)))
        ]
        for t in threads:
            t.start()
        try:
            for _ in range(len(items)):
                i, value, ok = done.get()
                if ok or (return_exceptions and isinstance(value, SegmentEverythingError)):
                    yield i, value
                else:
                    raise value
        finally:
            stop.set()
            for t in threads:
                t.join()

    def segment_everything_many(
        self,
        images: Iterable[ImageInput],
        *,
        concurrency: int = 4,
        return_exceptions: bool = False,
        **settings: Any,
    ) -> list[Any]:
        """:meth:`segment_everything` over many images; results in input order.

        ``settings`` are those of :meth:`segment_everything` (``conf``, ``iou``,
        ``max_prompts``, ``output``, ``timings``, ``channel_order``).
        """
        items = list(images)
        results: list[Any] = [None] * len(items)
        for i, value in self.segment_everything_iter(
            items, concurrency=concurrency, return_exceptions=return_exceptions, **settings
        ):
            results[i] = value
        return results

    def is_ready(self) -> bool:
        """True when the server is up and the model is ready; never raises for transport errors."""
        try:
            return self._readiness() is None
        except SegmentEverythingError:
            return False

    def _readiness(self) -> SegmentEverythingError | None:
        """None when ready, else the error describing why not (single attempt, no retries)."""
        client = self._triton()
        kwargs = self._call_kwargs()
        try:
            if not client.is_server_ready(**kwargs):
                return ServerUnavailableError(f"the server at {self.url} is not ready")
            if not client.is_model_ready(self.model_name, self.model_version, **kwargs):
                return ModelNotReadyError(f"model '{self.model_name}' is not ready on {self.url}")
            return None
        except BaseException as exc:
            err = map_exception(exc)
            if err is None:
                raise
            return err

    def wait_until_ready(self, timeout: float = 60.0, interval: float = 0.5) -> None:
        """Block until :meth:`is_ready`; raise the last reason (e.g. ``ServerUnavailableError``,
        ``ModelNotReadyError``) if that takes more than ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            reason = self._readiness()
            if reason is None:
                return
            if time.monotonic() + interval > deadline:
                if isinstance(reason, RequestTimeoutError):
                    raise ServerUnavailableError(f"server at {self.url} did not answer: {reason}")
                raise reason
            time.sleep(interval)

    def close(self) -> None:
        """Close every underlying connection; the client cannot be used afterwards."""
        self._closed = True
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            with contextlib.suppress(Exception):
                client.close()
        self._local = threading.local()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"SegmentEverythingClient(url={self.url!r}, protocol={self.protocol!r}, "
            f"model={self.model_name!r})"
        )
