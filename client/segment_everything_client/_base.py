"""What the sync and async clients share: options, request preparation, deadlines and the retry policy.

Like tritonclient's ``http``/``grpc`` and their ``aio`` twins, the two clients mirror each other over this one
base; only the transport calls (blocking vs awaited) differ, so a fix here lands in both.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from numpy.typing import ArrayLike

from segment_everything_contract import FILTER_SETTINGS, Prompts

from . import protocol as _protocol
from . import replicas as _replicas
from .errors import InvalidInputError, SegmentEverythingError, ServerUnavailableError
from .images import ImageInput, prepare_image
from .types import SegmentSettings

INTERACTIVE_PRIORITY = 1


@dataclass(frozen=True)
class RetryPolicy:
    """When and how long to wait before trying a request again.

    Failures that cannot have run the work are retried: the server was unreachable, its queue was full
    (overloaded) or it answered ``UNAVAILABLE``. So is a request whose replica went away (its connection broke
    mid-request, or it is shutting down: ``error.replica_gone``), the first time at once, because SegEvery and
    SegAny requests are idempotent and the client's balancing sends the retry to another replica. A timeout is
    retried only with ``retry_started_work`` (for callers whose requests are safe to run twice).
    Waits are "full jitter" exponential backoff (``uniform(0, min(max_backoff, backoff * 2**attempt))``), and
    never run past the request's overall deadline.
    """

    retries: int = 3
    backoff: float = 0.5
    max_backoff: float = 8.0
    retry_started_work: bool = False

    def __post_init__(self) -> None:
        if self.retries < 0 or self.backoff < 0 or self.max_backoff < 0:
            raise ValueError("retries, backoff and max_backoff must be >= 0")

    def backoff_delay(self, attempt: int, rng: random.Random) -> float:
        """The jittered wait before attempt ``attempt + 1`` (also how long a load test's user pauses after its
        ``attempt``-th failed call in a row)."""
        return rng.uniform(0.0, min(self.max_backoff, self.backoff * 2**attempt))

    def delay(
        self, error: SegmentEverythingError, attempt: int, deadline: float, rng: random.Random
    ) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or None to give up with ``error``."""
        if attempt >= self.retries:
            return None
        if not error.replica_gone and (
            not error.retryable or (error.work_started and not self.retry_started_work)
        ):
            return None
        if error.replica_gone and attempt == 0:
            wait = 0.0  # that replica is gone, not busy: another one can take the request now
        else:
            wait = self.backoff_delay(attempt, rng)
        if time.monotonic() + wait >= deadline:
            return None
        return wait


def quality_filters(filters: dict[str, Any]) -> dict[str, Any]:
    """``filters``, checked to name only SAM's quality filters (``FILTER_SETTINGS``)."""
    unknown = sorted(set(filters) - set(FILTER_SETTINGS))
    if unknown:
        raise TypeError(f"unknown setting {', '.join(unknown)}; the filters are {', '.join(FILTER_SETTINGS)}")
    return filters


def everything_settings(
    conf: float | None = None,
    iou: float | None = None,
    max_prompts: int | None = None,
    output: str = "rle",
    timings: bool = False,
    **filters: Any,
) -> SegmentSettings:
    """SegEvery settings; None takes the contract's default. ``filters``: SAM's quality filters by their
    contract names (``pred_iou_thresh``, ``stability_score_thresh``, ``min_mask_region_area``,
    ``mask_nms_thresh``, ``non_overlapping``) and ``stability_scores``."""
    given = {"conf": conf, "iou": iou, "max_prompts": max_prompts, **quality_filters(filters)}
    return SegmentSettings(
        output=output, timings=timings, **{k: v for k, v in given.items() if v is not None}
    )


class ClientBase:
    """Options and request preparation of both clients (see :class:`SegmentEverythingClient` for the args)."""

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
        headers: dict[str, str] | None = None,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        retry_started_work: bool = False,
        model_name: str = _protocol.DEFAULT_MODEL_NAME,
        model_version: str = "",
        verbose: bool = False,
        resolve_interval: float = _replicas.DEFAULT_RESOLVE_INTERVAL,
        transport: dict[str, Any] | None = None,
    ) -> None:
        self.url, self.ssl = _protocol.normalize_url(url, protocol, ssl)
        self.protocol = protocol
        if not timeout > 0:
            raise ValueError("timeout must be > 0 seconds")
        if not resolve_interval > 0:
            raise ValueError("resolve_interval must be > 0 seconds")
        self.resolve_interval = float(resolve_interval)
        self.timeout = float(timeout)
        self.headers = dict(headers) if headers else None
        self.retry = RetryPolicy(retries, backoff, max_backoff, retry_started_work)
        self.model_name = model_name
        self.model_version = model_version
        self.verbose = verbose
        tls = {
            "root_certificates": root_certificates,
            "private_key": private_key,
            "certificate_chain": certificate_chain,
        }
        given_tls = {k: v for k, v in tls.items() if v is not None}
        if given_tls and protocol != "grpc":
            raise TypeError(
                f"{', '.join(given_tls)} apply to gRPC (Triton's HTTP endpoint has no TLS of its own; "
                "terminate TLS in front of it and pass ssl=True with the HTTP TLS options)"
            )
        if given_tls:
            self.ssl = True
        self._transport = {
            **given_tls,
            **{k: v for k, v in (transport or {}).items() if v not in (None, False)},
        }
        self._rng = random.Random()
        self._replicas: _replicas.HttpReplicas | None = None
        if protocol == "grpc":
            self.url = _replicas.grpc_target(self.url)
        else:
            self._single_url: str | None = self.url
            try:
                # HTTPS keeps the name: the certificate names the host (a TLS proxy balances anyway)
                self._replicas = _replicas.HttpReplicas(self.url, self.resolve_interval, resolve=not self.ssl)
            except InvalidInputError:
                if "," in self.url or self.url.startswith(_replicas.GRPC_SCHEMES):
                    raise
                # one address without a port: tritonclient's own default port, nothing to balance
            else:
                entries, base = self._replicas.entries, self._replicas.base
                self._single_url = _replicas.join_address(*entries[0]) + base if len(entries) == 1 else None
        if protocol == "http":
            import tritonclient.http as mod
        else:
            import tritonclient.grpc as mod
        self._mod: ModuleType = (
            mod  # tensors are built with the sync module's InferInput, as tritonclient does
        )

    @property
    def retries(self) -> int:
        return self.retry.retries

    # -- requests --------------------------------------------------------------------------------------------

    def _prepare(
        self, image: ImageInput, settings: SegmentSettings, channel_order: str, prompts: Prompts | None = None
    ) -> tuple[list[Any], list[Any]]:
        prepared = prepare_image(image, channel_order=channel_order)
        return _protocol.build_request(self._mod, prepared, settings, prompts)

    @staticmethod
    def _prompts(
        boxes: ArrayLike | None,
        points: ArrayLike | None,
        point_labels: ArrayLike | None,
        mask_input: ArrayLike | None = None,
    ) -> Prompts:
        return _protocol.prompt_arrays(boxes, points, point_labels, mask_input)

    @staticmethod
    def _priority(prompts: Prompts | None) -> int:
        """Triton queue priority: SegAny calls (interactive clicks) 1, ahead of SegEvery (0 = the model's
        default level, 2); see the ``dynamic_batching`` of ``segment_everything``."""
        return INTERACTIVE_PRIORITY if prompts is not None else 0

    def _deadline(self) -> float:
        return time.monotonic() + self.timeout

    def _attempt_kwargs(self, deadline: float) -> dict[str, Any]:
        """Per-attempt call options: the remaining time travels with the request (Triton's ``timeout``
        parameter, microseconds, which the pipeline turns into its own deadline) and bounds the gRPC call."""
        remaining = max(0.001, deadline - time.monotonic())
        kwargs: dict[str, Any] = {"headers": self.headers, "timeout": int(remaining * 1e6)}
        if self.protocol == "grpc":
            kwargs["client_timeout"] = remaining
        return kwargs

    def _call_kwargs(self) -> dict[str, Any]:
        """Options of the non-inference calls (health, metadata)."""
        kwargs: dict[str, Any] = {"headers": self.headers}
        if self.protocol == "grpc":
            kwargs["client_timeout"] = self.timeout
        return kwargs

    # -- replicas --------------------------------------------------------------------------------------------

    def _pick(self) -> str | None:
        """The HTTP replica for the next attempt, or None when there is one address only (and for gRPC, whose
        channel balances by itself)."""
        if self._replicas is None:
            return None
        addresses = self._replicas.addresses()
        if len(addresses) <= 1 and self._single_url is not None:
            return None
        return self._replicas.pick()

    def _after_failure(self, address: str | None, error: SegmentEverythingError) -> SegmentEverythingError:
        """Note an HTTP replica that refused or broke a connection, or is shutting down (skipped for a while);
        a refused connection while other replicas are up counts as ``replica_gone`` (retried at once)."""
        if address is None or self._replicas is None:
            return error
        if type(error) is ServerUnavailableError or error.replica_gone:
            self._replicas.refused(address)
            error.replica_gone = error.replica_gone or self._replicas.others_available(address)
        return error

    def _after_success(self, address: str | None) -> None:
        if address is not None and self._replicas is not None:
            self._replicas.answered(address)

    def _check_transport(self, http_only: tuple[str, ...], grpc_only: tuple[str, ...]) -> None:
        wrong = [k for k in self._transport if k in (grpc_only if self.protocol == "http" else http_only)]
        if wrong:
            raise TypeError(f"{', '.join(wrong)} do not apply to protocol={self.protocol!r}")

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(url={self.url!r}, protocol={self.protocol!r}, model={self.model_name!r})"
        )
