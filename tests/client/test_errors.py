"""Every error branch, mapped from exceptions built by hand (no server)."""

from __future__ import annotations

import asyncio
import errno
import socket

import pytest
from tritonclient.utils import InferenceServerException

from segment_everything_client.errors import (
    ImageNotFoundError,
    InvalidInputError,
    ModelNotReadyError,
    OverloadedError,
    RequestTimeoutError,
    SegmentEverythingError,
    ServerError,
    ServerUnavailableError,
    from_triton_exception,
    map_exception,
)


def triton(msg: str, status: str | None) -> InferenceServerException:
    return InferenceServerException(msg=msg, status=status, debug_details="details")


# ----------------------------------------------------------------------------- HTTP flavour


def test_http_400_is_invalid_input_with_server_message() -> None:
    err = from_triton_exception(triton("image bytes could not be decoded", "400"))
    assert type(err) is InvalidInputError and err.message == "image bytes could not be decoded"
    assert err.status == "400" and err.debug_details == "details" and str(err) == err.message


def test_http_413_is_invalid_input() -> None:
    assert type(from_triton_exception(triton("payload too large", "413"))) is InvalidInputError


def test_http_503_is_unavailable() -> None:
    assert type(from_triton_exception(triton("Service Unavailable", "503"))) is ServerUnavailableError


def test_http_429_is_overloaded_and_nothing_ran() -> None:
    err = from_triton_exception(triton("Too Many Requests", "429"))
    assert type(err) is OverloadedError and err.retryable and not err.work_started


def test_http_502_is_unavailable() -> None:
    assert type(from_triton_exception(triton("Bad Gateway", "502"))) is ServerUnavailableError


def test_http_408_is_timeout() -> None:
    assert type(from_triton_exception(triton("Request Timeout", "408"))) is RequestTimeoutError


def test_http_504_is_timeout() -> None:
    assert type(from_triton_exception(triton("Gateway Timeout", "504"))) is RequestTimeoutError


def test_http_404_is_model_not_ready() -> None:
    assert type(from_triton_exception(triton("Not Found", "404"))) is ModelNotReadyError


def test_http_400_unknown_model_is_model_not_ready() -> None:
    msg = "Request for unknown model: 'segment_everything' is not found"
    assert type(from_triton_exception(triton(msg, "400"))) is ModelNotReadyError


def test_http_500_is_server_error() -> None:
    assert type(from_triton_exception(triton("CUDA out of memory", "500"))) is ServerError


# ----------------------------------------------------------------------------- gRPC flavour


def test_grpc_invalid_argument_is_invalid_input_with_server_message() -> None:
    err = from_triton_exception(triton("conf_threshold must be in [0, 1]", "StatusCode.INVALID_ARGUMENT"))
    assert type(err) is InvalidInputError and err.message == "conf_threshold must be in [0, 1]"


def test_grpc_unavailable_is_unavailable() -> None:
    err = from_triton_exception(triton("failed to connect to all addresses", "StatusCode.UNAVAILABLE"))
    assert type(err) is ServerUnavailableError and err.retryable


def test_grpc_unavailable_model_loading_is_model_not_ready() -> None:
    msg = "Request for unknown model: 'segment_everything' has no available versions"
    err = from_triton_exception(triton(msg, "StatusCode.UNAVAILABLE"))
    assert type(err) is ModelNotReadyError and not err.retryable


def test_grpc_deadline_exceeded_is_timeout() -> None:
    assert (
        type(from_triton_exception(triton("Deadline Exceeded", "StatusCode.DEADLINE_EXCEEDED")))
        is RequestTimeoutError
    )


def test_grpc_not_found_is_model_not_ready() -> None:
    assert type(from_triton_exception(triton("no such model", "StatusCode.NOT_FOUND"))) is ModelNotReadyError


def test_grpc_resource_exhausted_is_unavailable() -> None:
    assert (
        type(from_triton_exception(triton("queue full", "StatusCode.RESOURCE_EXHAUSTED")))
        is ServerUnavailableError
    )


def test_grpc_message_too_large_is_invalid_input() -> None:
    msg = "Received message larger than max (50000000 vs. 4194304)"
    assert type(from_triton_exception(triton(msg, "StatusCode.RESOURCE_EXHAUSTED"))) is InvalidInputError


def test_grpc_internal_is_server_error() -> None:
    assert type(from_triton_exception(triton("model crashed", "StatusCode.INTERNAL"))) is ServerError


def test_grpc_unknown_code_is_server_error() -> None:
    assert type(from_triton_exception(triton("?", "StatusCode.SOMETHING_NEW"))) is ServerError


def test_grpc_cancelled_is_base_error() -> None:
    assert (
        type(from_triton_exception(triton("Locally cancelled", "StatusCode.CANCELLED")))
        is SegmentEverythingError
    )


# ------------------------------------------------------------------ client-side and transport


def test_no_status_is_base_error() -> None:
    assert (
        type(from_triton_exception(triton("url should not include the scheme", None)))
        is SegmentEverythingError
    )


def test_no_status_inference_response_timeout() -> None:
    assert (
        type(from_triton_exception(triton("failed to obtain inference response", None)))
        is RequestTimeoutError
    )


def test_connection_refused_is_unavailable() -> None:
    assert (
        type(map_exception(ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")))
        is ServerUnavailableError
    )


def test_connection_reset_is_unavailable() -> None:
    assert type(map_exception(ConnectionResetError(errno.ECONNRESET, "reset"))) is ServerUnavailableError


def test_host_unreachable_oserror_is_unavailable() -> None:
    assert type(map_exception(OSError(errno.EHOSTUNREACH, "No route to host"))) is ServerUnavailableError


def test_dns_failure_is_unavailable() -> None:
    assert type(map_exception(socket.gaierror(-2, "Name or service not known"))) is ServerUnavailableError


def test_socket_timeout_is_timeout() -> None:
    assert type(map_exception(TimeoutError("timed out"))) is RequestTimeoutError


def test_asyncio_timeout_is_timeout() -> None:
    assert type(map_exception(asyncio.TimeoutError())) is RequestTimeoutError


def test_gevent_timeout_is_timeout() -> None:
    gevent = pytest.importorskip("gevent")
    assert type(map_exception(gevent.Timeout(1.0))) is RequestTimeoutError


def test_aiohttp_connector_error_is_unavailable() -> None:
    aiohttp = pytest.importorskip("aiohttp")
    exc = aiohttp.ServerDisconnectedError()
    assert type(map_exception(exc)) is ServerUnavailableError


def test_map_exception_passes_through_inference_server_exception() -> None:
    assert type(map_exception(triton("bad", "400"))) is InvalidInputError


def test_map_exception_keeps_our_errors() -> None:
    err = InvalidInputError("x")
    assert map_exception(err) is err


def test_unrelated_exceptions_are_not_mapped() -> None:
    assert map_exception(KeyError("boxes")) is None


def test_file_not_found_is_not_a_network_error() -> None:
    assert map_exception(FileNotFoundError(errno.ENOENT, "x")) is None


def test_hierarchy() -> None:
    assert issubclass(InvalidInputError, ValueError)
    assert issubclass(ImageNotFoundError, InvalidInputError) and issubclass(
        ImageNotFoundError, FileNotFoundError
    )
    for cls in (
        InvalidInputError,
        ServerUnavailableError,
        ModelNotReadyError,
        RequestTimeoutError,
        ServerError,
    ):
        assert issubclass(cls, SegmentEverythingError)
    assert ServerUnavailableError.retryable and not InvalidInputError.retryable
