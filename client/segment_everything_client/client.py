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

from numpy.typing import ArrayLike

from segment_everything_contract import Prompts

if TYPE_CHECKING:
    from typing import Self

from . import protocol as _protocol
from ._base import ClientBase, everything_settings, quality_filters
from .errors import (
    DeadlineExceededError,
    ModelNotReadyError,
    SegmentEverythingError,
    ServerUnavailableError,
    map_exception,
)
from .images import ImageInput
from .replicas import DEFAULT_RESOLVE_INTERVAL, grpc_channel_args
from .types import SamRecord, Segmentation, SegmentSettings

__all__ = ["SegmentEverythingClient"]

_HTTP_ONLY = ("ssl_options", "ssl_context_factory", "insecure")
_GRPC_ONLY = ("creds",)


class SegmentEverythingClient(ClientBase):
    """Segment everything (or given boxes/points) in images served by Triton.

    Args:
        url: ``host:port`` of Triton (a ``http://``/``https://``/``grpcs://`` prefix is accepted). Default
            ``127.0.0.1:8001`` for gRPC, ``127.0.0.1:8000`` for HTTP. Requests are spread over every replica
            the target names: every address of a DNS name (``dns:///segevery-headless:8001``, or a plain
            ``host:port``; a Kubernetes headless Service), or a list (``ipv4:10.0.0.7:8001,10.0.0.8:8001``,
            ``10.0.0.7:8000,10.0.0.8:8000``); see :mod:`segment_everything_client.replicas`.
        protocol: ``"grpc"`` (default) or ``"http"``.
        timeout: the deadline of one call in seconds, retries included. It travels with the request
            (Triton's ``timeout`` parameter): the server drops work whose caller has given up.
        ssl: use TLS. gRPC TLS: ``root_certificates`` (CA bundle file), ``private_key`` and
            ``certificate_chain`` (client certificate files, for mutual TLS), or a ready ``creds``; HTTP:
            ``ssl_options``, ``ssl_context_factory``, ``insecure`` (tritonclient's, for a TLS proxy in front).
        headers: extra HTTP headers / gRPC metadata sent with every call (e.g. an auth header, or the key of
            Triton's restricted APIs).
        retries: how many times a failed call is tried again when the server cannot have started it
            (unreachable, overloaded, ``UNAVAILABLE``); invalid input is never retried.
        backoff, max_backoff: seconds of the jittered exponential backoff between retries.
        retry_started_work: also retry timeouts, after which the server may have done the work (only for
            callers to whom running a request twice does not matter). A request whose replica went away
            (``error.replica_gone``) is tried again at once, on another replica where there is one.
        model_name, model_version: the Triton model to call.
        resolve_interval: seconds; a DNS name is resolved again at most this often (gRPC: when a connection
            closes, e.g. at the servers' ``--grpc-max-connection-age``; HTTP: before a request once this much
            time has passed), so replicas added or removed are found.

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
        segment_everything_client.errors.InvalidInputError: data is not a recognised image (12 bytes); ...
    """

    def __init__(
        self,
        url: str | None = None,
        protocol: str = "grpc",
        *,
        timeout: float = 60.0,
        ssl: bool = False,
        root_certificates: str | None = None,
        private_key: str | None = None,
        certificate_chain: str | None = None,
        creds: object | None = None,
        ssl_options: dict[str, object] | None = None,
        ssl_context_factory: object | None = None,
        insecure: bool = False,
        headers: dict[str, str] | None = None,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        retry_started_work: bool = False,
        model_name: str = _protocol.DEFAULT_MODEL_NAME,
        model_version: str = "",
        verbose: bool = False,
        resolve_interval: float = DEFAULT_RESOLVE_INTERVAL,
    ):
        super().__init__(
            url,
            protocol,
            timeout=timeout,
            ssl=ssl,
            root_certificates=root_certificates,
            private_key=private_key,
            certificate_chain=certificate_chain,
            headers=headers,
            retries=retries,
            backoff=backoff,
            max_backoff=max_backoff,
            retry_started_work=retry_started_work,
            model_name=model_name,
            model_version=model_version,
            verbose=verbose,
            resolve_interval=resolve_interval,
            transport={
                "creds": creds,
                "ssl_options": ssl_options,
                "ssl_context_factory": ssl_context_factory,
                "insecure": insecure,
            },
        )
        self._check_transport(_HTTP_ONLY, _GRPC_ONLY)
        self._local = threading.local()
        self._clients: list[Any] = []
        self._lock = threading.Lock()
        self._closed = False

    # ------------------------------------------------------------------ transport plumbing

    def _new_triton_client(self, address: str | None = None) -> Any:
        """A tritonclient client: gRPC for the whole target (its channel balances), HTTP for one address."""
        if self.protocol == "http":
            return self._mod.InferenceServerClient(
                address or self._single_url,
                verbose=self.verbose,
                connection_timeout=self.timeout,
                network_timeout=self.timeout,
                ssl=self.ssl,
                **self._transport,
            )
        return self._mod.InferenceServerClient(
            self.url,
            verbose=self.verbose,
            ssl=self.ssl,
            channel_args=grpc_channel_args(self.resolve_interval),
            **self._transport,
        )

    def _triton(self, address: str | None = None) -> Any:
        """This thread's tritonclient client (for ``address``, an HTTP replica), created on first use."""
        if self._closed:
            raise SegmentEverythingError("the client is closed")
        clients = self._local.__dict__.setdefault("clients", {})
        client = clients.get(address)
        if client is None:
            try:
                client = self._new_triton_client() if address is None else self._new_triton_client(address)
            except Exception as exc:  # bad URL etc.
                raise SegmentEverythingError(
                    f"cannot create a {self.protocol} client for {address or self.url}: {exc}"
                ) from exc
            clients[address] = client
            with self._lock:
                self._clients.append(client)
        return client

    def _release_thread_client(self) -> None:
        clients = self._local.__dict__.pop("clients", {})
        for client in clients.values():
            with self._lock:
                if client in self._clients:
                    self._clients.remove(client)
            with contextlib.suppress(Exception):
                client.close()

    def _infer(self, inputs: list[Any], outputs: list[Any], priority: int = 0) -> Any:
        """One inference with the retry policy, all attempts within the client's deadline."""
        deadline = self._deadline()
        attempt = 0
        while True:
            address = self._pick()
            try:
                transport = self._triton() if address is None else self._triton(address)
                result = transport.infer(
                    self.model_name,
                    inputs,
                    model_version=self.model_version,
                    outputs=outputs,
                    priority=priority,
                    **self._attempt_kwargs(deadline),
                )
                self._after_success(address)
                return result
            except BaseException as exc:
                err = map_exception(exc)
                if err is None:
                    raise
                err = self._after_failure(address, err)
                wait = self.retry.delay(err, attempt, deadline, self._rng)
                if wait is None:
                    if err is exc:
                        raise
                    raise err from exc
            time.sleep(wait)
            attempt += 1

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
        **filters: Any,
    ) -> Segmentation:
        """Find and segment every object in ``image``.

        Args:
            image: a path, encoded file bytes, a uint8 array (``HxW``, ``HxWx3``, ``HxWx4``) or a
                PIL image; see :func:`~segment_everything_client.images.prepare_image`.
            conf: detector confidence threshold (None: the contract's default, 0.4).
            iou: NMS IoU threshold between discovered boxes (default 0.9).
            max_prompts: at most this many objects are segmented (default 300).
            output: ``"rle"`` (default), ``"dense"`` or ``"logits"``.
            timings: include the server's per-stage milliseconds in ``Segmentation.timings``.
            channel_order: ``"rgb"`` or ``"bgr"`` (``cv2.imread``) for array inputs.
            filters: SAM's automatic mask generator's quality filters, run on the server (all off by
                default): ``pred_iou_thresh``, ``stability_score_thresh``, ``min_mask_region_area``,
                ``mask_nms_thresh``, ``non_overlapping``; ``stability_scores=True`` returns every mask's
                stability score. See :class:`~segment_everything_client.SegmentSettings`.

        Raises:
            InvalidInputError, ImageNotFoundError, ServerUnavailableError, OverloadedError,
            ModelNotReadyError, DeadlineExceededError, ServerError.
        """
        settings = everything_settings(conf, iou, max_prompts, output, timings, **filters)
        return self._segment(image, settings, channel_order)

    def generate(
        self,
        image: ImageInput,
        *,
        output_mode: str = "binary_mask",
        conf: float | None = None,
        iou: float | None = None,
        max_prompts: int | None = None,
        channel_order: str = "rgb",
        **filters: Any,
    ) -> list[SamRecord]:
        """SAM's ``SamAutomaticMaskGenerator.generate``: one record per mask (``segmentation``, ``area``,
        ``bbox``, ``predicted_iou``, ``point_coords``, ``stability_score``, ``crop_box``), with the masks as
        bool arrays or, with ``output_mode="coco_rle"``, COCO RLE dicts. ``filters`` as in
        :meth:`segment_everything` (SAM's names; its defaults are ``pred_iou_thresh=0.88``,
        ``stability_score_thresh=0.95``, ``mask_nms_thresh=0.7``). See
        :meth:`~segment_everything_client.Segmentation.to_sam_records`.
        """
        filters["stability_scores"] = True
        seg = self.segment_everything(
            image, conf=conf, iou=iou, max_prompts=max_prompts, channel_order=channel_order, **filters
        )
        return seg.to_sam_records(output_mode)

    def segment_anything(
        self,
        image: ImageInput,
        boxes: ArrayLike | None = None,
        points: ArrayLike | None = None,
        point_labels: ArrayLike | None = None,
        *,
        multimask: bool = False,
        mask_input: ArrayLike | None = None,
        output: str = "rle",
        timings: bool = False,
        channel_order: str = "rgb",
        **filters: Any,
    ) -> Segmentation:
        """Segment the objects you point at: one mask per box or per point prompt (SAM's SegAny).

        Args:
            boxes: ``(N, 4)`` xyxy boxes in original image pixels.
            points: ``(N, K, 2)`` xy points, N prompts of K points; ``(N, 2)`` = N one-point prompts.
            point_labels: ``(N, K)``; 1 = foreground (default), 0 = background.
            multimask: three candidate masks per prompt with their predicted IoUs (a single click is
                ambiguous: part, object, group); ``result.best_per_prompt()`` keeps the best of each.
            mask_input: ``(N, 256, 256)``, each prompt's low-res logits from an earlier answer (ask for
                ``output="logits"``): SAM refines that mask with the new points.

        ``filters``: SAM's quality filters, as in :meth:`segment_everything`: with ``multimask`` and points
        on a grid, this is SAM's automatic mask generator (one crop).

        Object discovery is skipped; ``scores`` are 1.0. The server caches image embeddings, so further
        calls with the same image skip the encoder (an interactive session costs one decoder call per click).
        """
        prompts = self._prompts(boxes, points, point_labels, mask_input)
        settings = SegmentSettings(
            output=output, timings=timings, multimask=multimask, **quality_filters(filters)
        )
        return self._segment(image, settings, channel_order, prompts)

    def _segment(
        self, image: ImageInput, settings: SegmentSettings, channel_order: str, prompts: Prompts | None = None
    ) -> Segmentation:
        inputs, outputs = self._prepare(image, settings, channel_order, prompts)
        return _protocol.parse_response(self._infer(inputs, outputs, self._priority(prompts)), settings)

    def segment_everything_iter(
        self,
        images: Iterable[ImageInput],
        *,
        concurrency: int = 4,
        return_exceptions: bool = False,
        conf: float | None = None,
        iou: float | None = None,
        max_prompts: int | None = None,
        output: str = "rle",
        timings: bool = False,
        channel_order: str = "rgb",
        **filters: Any,
    ) -> Iterator[tuple[int, Segmentation | SegmentEverythingError]]:
        """Yield ``(index, result)`` as requests complete, ``concurrency`` in flight at a time.

        Each worker thread has its own tritonclient client. With ``return_exceptions`` a
        failed image yields its :class:`SegmentEverythingError` instead of stopping the run.
        Leaving the loop early stops the workers after their current request.
        """
        items = list(images)
        # validated now, not at next()
        parsed = everything_settings(conf, iou, max_prompts, output, timings, **filters)
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        return self._iter(items, parsed, channel_order, concurrency, return_exceptions)

    def _iter(
        self,
        items: list[ImageInput],
        parsed: SegmentSettings,
        channel_order: str,
        concurrency: int,
        return_exceptions: bool,
    ) -> Iterator[tuple[int, Segmentation | SegmentEverythingError]]:
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
                        done.put((i, self._segment(items[i], parsed, channel_order), True))
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
        conf: float | None = None,
        iou: float | None = None,
        max_prompts: int | None = None,
        output: str = "rle",
        timings: bool = False,
        channel_order: str = "rgb",
        **filters: Any,
    ) -> list[Segmentation | SegmentEverythingError]:
        """:meth:`segment_everything` over many images; results in input order (failed images hold their
        error with ``return_exceptions``)."""
        items = list(images)
        results: list[Segmentation | SegmentEverythingError | None] = [None] * len(items)
        for i, value in self.segment_everything_iter(
            items,
            concurrency=concurrency,
            return_exceptions=return_exceptions,
            conf=conf,
            iou=iou,
            max_prompts=max_prompts,
            output=output,
            timings=timings,
            channel_order=channel_order,
            **filters,
        ):
            results[i] = value
        return [r for r in results if r is not None]

    def is_ready(self) -> bool:
        """True when the server is up and the model is ready; never raises for transport errors."""
        try:
            return self._readiness() is None
        except SegmentEverythingError:
            return False

    def _readiness(self) -> SegmentEverythingError | None:
        """None when ready, else the error describing why not (single attempt, no retries; with several HTTP
        replicas, the next one in turn)."""
        address = self._pick()
        client = self._triton() if address is None else self._triton(address)
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
                if isinstance(reason, DeadlineExceededError):
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
