"""Typed errors, mapped from what tritonclient and the transports raise.

Every failure the client reports is a :class:`SegmentEverythingError`; catch a subclass to
react to one kind:

==========================  ================================================================
:class:`InvalidInputError`  the request is wrong (HTTP 400 / gRPC ``INVALID_ARGUMENT``): bad
                            image bytes, out-of-range threshold, malformed prompts. Carries
                            the server's message. Never retried.
:class:`ImageNotFoundError` an image path does not exist (raised before any request).
:class:`ServerUnavailableError`  nothing answers (connection refused/reset, HTTP 503/502,
                            gRPC ``UNAVAILABLE``). Retried with jittered backoff when the
                            server cannot have started the work.
:class:`OverloadedError`    the server refused the request at once because its queue is full
                            (HTTP 429/503 or gRPC ``UNAVAILABLE`` "Exceeds maximum queue
                            size"). A :class:`ServerUnavailableError`; retried with backoff.
:class:`ModelNotReadyError` the server answers but the model is unknown or still loading.
:class:`DeadlineExceededError`  no answer within the request's deadline (gRPC
                            ``DEADLINE_EXCEEDED``, HTTP 408/504, socket timeouts, or the
                            server's queue timeout). Not retried: the server may have worked on
                            it. ``RequestTimeoutError`` is the same class.
:class:`ServerError`        anything else the server reports (HTTP 5xx / gRPC ``INTERNAL``).
==========================  ================================================================

``replica_gone`` marks a failure of one replica rather than of the service: the connection broke
mid-request (the server was killed or restarted) or the server is shutting down (it refuses new
work while it drains, or its models are unloading). SegEvery and SegAny requests are idempotent,
so the client retries such a request at once, and its balancing sends it to another replica.

>>> from tritonclient.utils import InferenceServerException
>>> err = from_triton_exception(
...     InferenceServerException("image bytes could not be decoded", status="400"))
>>> type(err).__name__, err.message
('InvalidInputError', 'image bytes could not be decoded')
"""

from __future__ import annotations

import asyncio
import errno
import re
import socket

__all__ = [
    "DeadlineExceededError",
    "ImageNotFoundError",
    "InvalidInputError",
    "ModelNotReadyError",
    "OverloadedError",
    "RequestTimeoutError",
    "SegmentEverythingError",
    "ServerError",
    "ServerUnavailableError",
    "from_triton_exception",
    "map_exception",
]


class SegmentEverythingError(Exception):
    """Base class of every error raised by this client.

    Attributes:
        message: human-readable description (the server's own text when it sent one).
        status: the raw status string, e.g. ``"400"`` or ``"StatusCode.UNAVAILABLE"``, or None.
        debug_details: extra transport details, if any.
    """

    #: Whether retrying the same request later may succeed.
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        status: str | None = None,
        debug_details: str | None = None,
        work_started: bool = True,
        replica_gone: bool = False,
    ):
        super().__init__(message)
        self.message = message
        self.status = status
        self.debug_details = debug_details
        #: False when the server cannot have started working on the request (refused connection, full
        #: queue): retrying it cannot run the work twice.
        self.work_started = work_started
        #: True when the replica that had the request went away or is shutting down (see the module's
        #: docstring): another replica can serve it at once.
        self.replica_gone = replica_gone

    def __str__(self) -> str:
        return self.message


class InvalidInputError(SegmentEverythingError, ValueError):
    """The request was rejected as invalid; ``message`` names the problem."""


class ImageNotFoundError(InvalidInputError, FileNotFoundError):
    """An image path given to the client does not exist or is not a file."""


class ServerUnavailableError(SegmentEverythingError):
    """The server could not be reached or is temporarily refusing work."""

    retryable = True


class OverloadedError(ServerUnavailableError):
    """The server's queue is full: the request was refused at once, nothing ran (retry later)."""


class ModelNotReadyError(SegmentEverythingError):
    """The server is up but the model is not loaded (unknown, loading, or failed to load)."""


class DeadlineExceededError(SegmentEverythingError):
    """The request did not complete within its deadline (the client's ``timeout``, which travels with it).
    A later try may succeed, but the server may have done the work: retried only with
    ``retry_started_work``."""

    retryable = True


RequestTimeoutError = DeadlineExceededError


class ServerError(SegmentEverythingError):
    """The server failed while handling a valid request."""


# Triton's wording when the model (or a model the pipeline calls) is not servable:
# "Request for unknown model: 'x' is not found", "... has no available versions",
# "... version 1 is not at ready state".
_MODEL_NOT_READY = re.compile(
    r"unknown model|not at ready state|no available versions|model '[^']*' is not ready",
    re.IGNORECASE,
)
# Triton's dynamic batcher refusing a request beyond max_queue_size: nothing ran.
_QUEUE_FULL = re.compile(r"exceeds maximum queue size|overloaded", re.IGNORECASE)
# The server's queue timeout (Triton: "Request timeout expired") or our pipeline's deadline check.
_DEADLINE = re.compile(r"timeout expired|deadline exceeded|deadline of .* passed", re.IGNORECASE)
# The replica went away: its connection broke mid-request (gRPC "Stream removed (Socket closed)", a reset,
# GOAWAY), or it is shutting down (the pipeline's draining refusal, Triton's own refusals while it stops, its
# models unloading).
_CONNECTION_LOST = re.compile(
    r"socket closed|stream removed|connection reset|broken pipe|goaway|connection closed", re.IGNORECASE
)
_SHUTTING_DOWN = re.compile(
    r"shutting down|server is stopping|server not ready|no available versions|not at ready state",
    re.IGNORECASE,
)
# gRPC reports oversized messages as RESOURCE_EXHAUSTED; that is the caller's input, not load.
_TOO_LARGE = re.compile(r"larger than max|message too large|exceeds.*(size|length)", re.IGNORECASE)

_NOT_SENT_ERRNOS = {
    errno.ECONNREFUSED,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ENETDOWN,
    errno.EADDRNOTAVAIL,
}
_NETWORK_ERRNOS = {
    errno.ECONNREFUSED,
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.EPIPE,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ENETDOWN,
    errno.EADDRNOTAVAIL,
}

_GRPC_KINDS: dict[str, type[SegmentEverythingError]] = {
    "INVALID_ARGUMENT": InvalidInputError,
    "OUT_OF_RANGE": InvalidInputError,
    "FAILED_PRECONDITION": InvalidInputError,
    "UNAVAILABLE": ServerUnavailableError,
    "RESOURCE_EXHAUSTED": ServerUnavailableError,
    "DEADLINE_EXCEEDED": DeadlineExceededError,
    "NOT_FOUND": ModelNotReadyError,
    "INTERNAL": ServerError,
    "UNKNOWN": ServerError,
    "UNIMPLEMENTED": ServerError,
    "DATA_LOSS": ServerError,
    "ABORTED": ServerError,
    "UNAUTHENTICATED": ServerError,
    "PERMISSION_DENIED": ServerError,
    "CANCELLED": SegmentEverythingError,
}


def _http_kind(code: int) -> type[SegmentEverythingError]:
    if code in (408, 504):
        return DeadlineExceededError
    if code == 429:
        return OverloadedError
    if code in (502, 503):
        return ServerUnavailableError
    if code == 404:
        return ModelNotReadyError
    if 400 <= code < 500:
        return InvalidInputError
    return ServerError


def from_triton_exception(exc: BaseException) -> SegmentEverythingError:
    """Map a ``tritonclient.utils.InferenceServerException`` to a typed error.

    The HTTP client reports the status code (``"400"``), the gRPC clients the gRPC code
    (``"StatusCode.INVALID_ARGUMENT"``); exceptions raised inside tritonclient have no status.

    >>> from tritonclient.utils import InferenceServerException
    >>> type(from_triton_exception(InferenceServerException(
    ...     "failed to connect to all addresses", status="StatusCode.UNAVAILABLE"))).__name__
    'ServerUnavailableError'
    """
    status_fn = getattr(exc, "status", None)
    status = status_fn() if callable(status_fn) else None
    message_fn = getattr(exc, "message", None)
    message = (message_fn() if callable(message_fn) else None) or str(exc) or type(exc).__name__
    debug_fn = getattr(exc, "debug_details", None)
    debug = debug_fn() if callable(debug_fn) else None
    status_str = None if status is None else str(status)

    kind: type[SegmentEverythingError] = SegmentEverythingError
    if status_str is None:
        if "failed to obtain inference response" in message:  # tritonclient's own timeout
            kind = DeadlineExceededError
    elif status_str.startswith("StatusCode."):
        code = status_str.split(".", 1)[1]
        kind = _GRPC_KINDS.get(code, ServerError)
        if code == "RESOURCE_EXHAUSTED" and _TOO_LARGE.search(message):
            kind = InvalidInputError
    elif status_str.isdigit():
        kind = _http_kind(int(status_str))
    if kind in (InvalidInputError, ServerUnavailableError, ServerError) and _MODEL_NOT_READY.search(message):
        kind = ModelNotReadyError
    if kind in (ServerUnavailableError, ServerError, SegmentEverythingError) and _QUEUE_FULL.search(message):
        kind = OverloadedError
    if kind in (ServerUnavailableError, ServerError, SegmentEverythingError) and _DEADLINE.search(message):
        kind = DeadlineExceededError
    # UNAVAILABLE / 503 / 502 / 429 mean the server did not take the request on, unless the connection broke.
    lost = kind is ServerUnavailableError and _CONNECTION_LOST.search(message) is not None
    started = lost or (kind is not ServerUnavailableError and kind is not OverloadedError)
    gone = lost or (
        kind in (ServerUnavailableError, ModelNotReadyError, ServerError)
        and bool(_SHUTTING_DOWN.search(message))
    )
    return kind(message, status=status_str, debug_details=debug, work_started=started, replica_gone=gone)


def map_exception(exc: BaseException) -> SegmentEverythingError | None:
    """Map anything a transport may raise to a typed error; None for exceptions that are not ours
    to translate (programming errors, ``KeyboardInterrupt``), which the caller re-raises.

    >>> type(map_exception(ConnectionRefusedError(111, "Connection refused"))).__name__
    'ServerUnavailableError'
    >>> map_exception(KeyError("x")) is None
    True
    """
    if isinstance(exc, SegmentEverythingError):
        return exc
    if type(exc).__name__ == "InferenceServerException":
        return from_triton_exception(exc)
    cls = type(exc)
    names = {c.__name__ for c in cls.__mro__}
    # gevent.Timeout derives from BaseException; aiohttp's timeouts are asyncio.TimeoutError.
    if (
        isinstance(exc, (TimeoutError, socket.timeout, asyncio.TimeoutError))
        or (cls.__name__ == "Timeout" and cls.__module__.startswith("gevent"))
        or (isinstance(exc, OSError) and exc.errno == errno.ETIMEDOUT)
    ):
        return DeadlineExceededError(f"request timed out ({exc or cls.__name__})")
    if (
        isinstance(exc, (ConnectionRefusedError, socket.gaierror))
        or "ClientConnectorError" in names  # aiohttp: could not connect
        or (isinstance(exc, OSError) and exc.errno in _NOT_SENT_ERRNOS)
    ):
        return ServerUnavailableError(f"cannot reach the server: {exc or cls.__name__}", work_started=False)
    if (
        isinstance(exc, ConnectionError)
        or "ClientConnectionError" in names  # aiohttp: reset, server disconnected
        or cls.__module__.startswith("geventhttpclient")  # parse errors on a broken connection
        or (isinstance(exc, OSError) and exc.errno in _NETWORK_ERRNOS)
    ):
        # the connection broke after the request may have been sent: the server may be working on it
        return ServerUnavailableError(
            f"connection to the server broke: {exc or cls.__name__}", replica_gone=True
        )
    return None
