"""asyncio client: the same methods as :class:`~segment_everything_client.SegmentEverythingClient`,
as coroutines, over ``tritonclient.grpc.aio`` / ``tritonclient.http.aio``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
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

__all__ = ["AsyncSegmentEverythingClient"]

_HTTP_ONLY = ("ssl_context",)
_GRPC_ONLY = ("root_certificates", "private_key", "certificate_chain", "creds")


class AsyncSegmentEverythingClient:
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
        ssl_context: Any = None,
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
        options = {
            "ssl_context": ssl_context,
            "root_certificates": root_certificates,
            "private_key": private_key,
            "certificate_chain": certificate_chain,
            "creds": creds,
        }
        given = {k: v for k, v in options.items() if v is not None}
        wrong = [k for k in given if k in (_GRPC_ONLY if protocol == "http" else _HTTP_ONLY)]
        if wrong:
            raise TypeError(f"{', '.join(wrong)} do not apply to protocol={protocol!r}")
        self._transport = given
        if protocol == "http":
            import tritonclient.http as mod
        else:
            import tritonclient.grpc as mod
        self._mod = mod  # tensors are built with the sync module's InferInput, as tritonclient does
        self._client: Any = None
        self._closed = False

    # ------------------------------------------------------------------ transport plumbing

    def _triton(self) -> Any:
        if self._closed:
            raise SegmentEverythingError("the client is closed")
        if self._client is None:
            try:
                if self.protocol == "http":
                    import tritonclient.http.aio as aio_mod

                    self._client = aio_mod.InferenceServerClient(
                        self.url,
                        verbose=self.verbose,
                        conn_timeout=self.timeout,
                        ssl=self.ssl,
                        **self._transport,
                    )
                else:
                    import tritonclient.grpc.aio as aio_mod

                    self._client = aio_mod.InferenceServerClient(
                        self.url, verbose=self.verbose, ssl=self.ssl, **self._transport
                    )
            except Exception as exc:
                raise SegmentEverythingError(
                    f"cannot create a {self.protocol} client for {self.url}: {exc}"
                ) from exc
        return self._client

    def _call_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"headers": self.headers}
        if self.protocol == "grpc":
            kwargs["client_timeout"] = self.timeout
        return kwargs

    async def _with_retries(self, make_call: Any) -> Any:
        attempt = 0
        while True:
            try:
                return await make_call()
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                err = map_exception(exc)
                if err is None:
                    raise
                if not err.retryable or attempt >= self.retries:
                    if err is exc:
                        raise
                    raise err from exc
            await asyncio.sleep(self.backoff * (2**attempt))
            attempt += 1

    async def _segment(
        self,
        image: ImageInput,
        settings: SegmentSettings,
        *,
        channel_order: str = "rgb",
        prompts: dict[str, Any] | None = None,
    ) -> Segmentation:
        prepared = prepare_image(image, channel_order=channel_order)
        inputs, outputs = _protocol.build_request(self._mod, prepared, settings, prompts)

        def call() -> Any:
            return self._triton().infer(
                self.model_name,
                inputs,
                model_version=self.model_version,
                outputs=outputs,
                **self._call_kwargs(),
            )

        result = await self._with_retries(call)
        return _protocol.parse_response(result, settings)

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
    ) -> Segmentation:
        """See :meth:`SegmentEverythingClient.segment_everything`."""
        settings = SegmentSettings(
            conf=conf, iou=iou, max_prompts=max_prompts, output=output, timings=timings
        )
        return await self._segment(image, settings, channel_order=channel_order)

    async def segment_anything(
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
        """See :meth:`SegmentEverythingClient.segment_anything`."""
        prompts = _protocol.prompt_arrays(boxes, points, point_labels)
        settings = SegmentSettings(output=output, timings=timings)
        return await self._segment(image, settings, channel_order=channel_order, prompts=prompts)

    def segment_everything_iter(
        self,
        images: Iterable[ImageInput],
        *,
        concurrency: int = 4,
        return_exceptions: bool = False,
        **settings: Any,
    ) -> AsyncIterator[tuple[int, Any]]:
        """Async-iterate ``(index, result)`` as requests complete (``async for``)."""
        items = list(images)
        channel_order = settings.pop("channel_order", "rgb")
        parsed = SegmentSettings(**settings)
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        return self._iter(items, parsed, channel_order, concurrency, return_exceptions)

    async def _iter(
        self,
        items: list[Any],
        parsed: SegmentSettings,
        channel_order: str,
        concurrency: int,
        return_exceptions: bool,
    ) -> AsyncIterator[tuple[int, Any]]:
        semaphore = asyncio.Semaphore(concurrency)

        async def one(i: int) -> tuple[int, Any, bool]:
            async with semaphore:
                try:
                    return i, await self._segment(items[i], parsed, channel_order=channel_order), True
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
        **settings: Any,
    ) -> list[Any]:
        """:meth:`segment_everything` over many images, at most ``concurrency`` in flight
        (an ``asyncio.Semaphore``); results in input order."""
        items = list(images)
        results: list[Any] = [None] * len(items)
        async for i, value in self.segment_everything_iter(
            items, concurrency=concurrency, return_exceptions=return_exceptions, **settings
        ):
            results[i] = value
        return results

    async def _readiness(self) -> SegmentEverythingError | None:
        client = self._triton()
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
                if isinstance(reason, RequestTimeoutError):
                    raise ServerUnavailableError(f"server at {self.url} did not answer: {reason}")
                raise reason
            await asyncio.sleep(interval)

    async def close(self) -> None:
        """Close the connection; the client cannot be used afterwards."""
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return (
            f"AsyncSegmentEverythingClient(url={self.url!r}, protocol={self.protocol!r}, "
            f"model={self.model_name!r})"
        )
