"""asyncio client: the same methods as :class:`~segment_everything_client.SegmentEverythingClient`,
as coroutines, over ``tritonclient.grpc.aio`` / ``tritonclient.http.aio``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
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

__all__ = ["AsyncSegmentEverythingClient"]

_HTTP_ONLY = ("ssl_context",)
_GRPC_ONLY = ("creds",)


class AsyncSegmentEverythingClient(ClientBase):
    """asyncio twin of :class:`~segment_everything_client.SegmentEverythingClient`.

    Takes the same arguments, except the HTTP TLS option, which is ``ssl_context`` (an
    ``ssl.SSLContext``, as aiohttp wants). The underlying tritonclient client is created
    inside the running event loop on first use.

    Example (with a server on localhost)::

        >>> import asyncio
        >>> from segment_everything_client import AsyncSegmentEverythingClient
        >>> async def main():
        ...     async with AsyncSegmentEverythingClient("127.0.0.1:8001") as client:
        ...         segs = await client.segment_everything_many(["a.jpg", "b.jpg"], concurrency=4)
        ...         return [len(s) for s in segs]
        >>> asyncio.run(main())  # doctest: +SKIP
        [12, 31]
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
        ssl_context: object | None = None,
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
            transport={"creds": creds, "ssl_context": ssl_context},
        )
        self._check_transport(_HTTP_ONLY, _GRPC_ONLY)
        self._clients: dict[str | None, Any] = {}  # None: the gRPC channel or the one HTTP address
        self._closed = False

    # ------------------------------------------------------------------ transport plumbing

    def _triton(self, address: str | None = None) -> Any:
        """The tritonclient client (for ``address``, an HTTP replica), created on first use."""
        if self._closed:
            raise SegmentEverythingError("the client is closed")
        client = self._clients.get(address)
        if client is None:
            try:
                if self.protocol == "http":
                    import tritonclient.http.aio as aio_mod

                    client = aio_mod.InferenceServerClient(
                        address or self._single_url,
                        verbose=self.verbose,
                        conn_timeout=self.timeout,
                        ssl=self.ssl,
                        **self._transport,
                    )
                else:
                    import tritonclient.grpc.aio as aio_mod

                    client = aio_mod.InferenceServerClient(
                        self.url,
                        verbose=self.verbose,
                        ssl=self.ssl,
                        channel_args=grpc_channel_args(self.resolve_interval),
                        **self._transport,
                    )
            except Exception as exc:
                raise SegmentEverythingError(
                    f"cannot create a {self.protocol} client for {address or self.url}: {exc}"
                ) from exc
            self._clients[address] = client
        return client

    async def _infer(self, inputs: list[Any], outputs: list[Any], priority: int = 0) -> Any:
        """See :meth:`SegmentEverythingClient._infer`."""
        deadline = self._deadline()
        attempt = 0
        while True:
            address = self._pick()
            try:
                transport = self._triton() if address is None else self._triton(address)
                result = await transport.infer(
                    self.model_name,
                    inputs,
                    model_version=self.model_version,
                    outputs=outputs,
                    priority=priority,
                    **self._attempt_kwargs(deadline),
                )
                self._after_success(address)
                return result
            except asyncio.CancelledError:
                raise
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
            await asyncio.sleep(wait)
            attempt += 1

    async def _segment(
        self, image: ImageInput, settings: SegmentSettings, channel_order: str, prompts: Prompts | None = None
    ) -> Segmentation:
        inputs, outputs = self._prepare(image, settings, channel_order, prompts)
        return _protocol.parse_response(await self._infer(inputs, outputs, self._priority(prompts)), settings)

    # ------------------------------------------------------------------------- public API

    async def segment_everything(
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
        """See :meth:`SegmentEverythingClient.segment_everything`."""
        settings = everything_settings(conf, iou, max_prompts, output, timings, **filters)
        return await self._segment(image, settings, channel_order)

    async def generate(
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
        """See :meth:`SegmentEverythingClient.generate` (SAM's automatic mask generator's records)."""
        filters["stability_scores"] = True
        seg = await self.segment_everything(
            image, conf=conf, iou=iou, max_prompts=max_prompts, channel_order=channel_order, **filters
        )
        return seg.to_sam_records(output_mode)

    async def segment_anything(
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
        """See :meth:`SegmentEverythingClient.segment_anything`."""
        prompts = self._prompts(boxes, points, point_labels, mask_input)
        settings = SegmentSettings(
            output=output, timings=timings, multimask=multimask, **quality_filters(filters)
        )
        return await self._segment(image, settings, channel_order, prompts)

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
    ) -> AsyncIterator[tuple[int, Segmentation | SegmentEverythingError]]:
        """Async-iterate ``(index, result)`` as requests complete (``async for``)."""
        items = list(images)
        parsed = everything_settings(conf, iou, max_prompts, output, timings, **filters)
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        return self._iter(items, parsed, channel_order, concurrency, return_exceptions)

    async def _iter(
        self,
        items: list[ImageInput],
        parsed: SegmentSettings,
        channel_order: str,
        concurrency: int,
        return_exceptions: bool,
    ) -> AsyncIterator[tuple[int, Segmentation | SegmentEverythingError]]:
        semaphore = asyncio.Semaphore(concurrency)

        async def one(i: int) -> tuple[int, Any, bool]:
            async with semaphore:
                try:
                    return i, await self._segment(items[i], parsed, channel_order), True
                except SegmentEverythingError as exc:
                    return i, exc, False

        tasks = [asyncio.ensure_future(one(i)) for i in range(len(items))]
        try:
            for next_done in asyncio.as_completed(tasks):
                i, value, ok = await next_done
                if ok or return_exceptions:
                    yield i, value
                else:
                    raise value
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def segment_everything_many(
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
        """:meth:`segment_everything` over many images, at most ``concurrency`` in flight
        (an ``asyncio.Semaphore``); results in input order."""
        items = list(images)
        results: list[Segmentation | SegmentEverythingError | None] = [None] * len(items)
        async for i, value in self.segment_everything_iter(
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

    async def _readiness(self) -> SegmentEverythingError | None:
        address = self._pick()
        client = self._triton() if address is None else self._triton(address)
        kwargs = self._call_kwargs()
        try:
            if not await client.is_server_ready(**kwargs):
                return ServerUnavailableError(f"the server at {self.url} is not ready")
            if not await client.is_model_ready(self.model_name, self.model_version, **kwargs):
                return ModelNotReadyError(f"model '{self.model_name}' is not ready on {self.url}")
            return None
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            err = map_exception(exc)
            if err is None:
                raise
            return err

    async def is_ready(self) -> bool:
        """True when the server is up and the model is ready; never raises for transport errors."""
        try:
            return await self._readiness() is None
        except SegmentEverythingError:
            return False

    async def wait_until_ready(self, timeout: float = 60.0, interval: float = 0.5) -> None:
        """See :meth:`SegmentEverythingClient.wait_until_ready`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            reason = await self._readiness()
            if reason is None:
                return
            if loop.time() + interval > deadline:
                if isinstance(reason, DeadlineExceededError):
                    raise ServerUnavailableError(f"server at {self.url} did not answer: {reason}")
                raise reason
            await asyncio.sleep(interval)

    async def close(self) -> None:
        """Close the connection; the client cannot be used afterwards."""
        self._closed = True
        clients, self._clients = self._clients, {}
        for client in clients.values():
            with contextlib.suppress(Exception):
                await client.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
