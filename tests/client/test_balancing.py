"""Client-side balancing without a server: the targets, the HTTP replica rotation, the gRPC channel options,
and which failures are retried at once on another replica."""

from __future__ import annotations

import json
import random
import time

import pytest
from tritonclient.utils import InferenceServerException

from segment_everything_client import InvalidInputError, SegmentEverythingClient, ServerUnavailableError
from segment_everything_client._base import RetryPolicy
from segment_everything_client.errors import from_triton_exception, map_exception
from segment_everything_client.replicas import HttpReplicas, grpc_channel_args, grpc_target, http_entries


@pytest.mark.parametrize(
    "url, target",
    [
        ("127.0.0.1:8001", "127.0.0.1:8001"),
        (
            "dns:///seg-headless.vision.svc.cluster.local:8001",
            "dns:///seg-headless.vision.svc.cluster.local:8001",
        ),
        ("dns://10.96.0.10:53/seg-headless:8001", "dns://10.96.0.10:53/seg-headless:8001"),
        ("10.0.0.7:8001,10.0.0.8:8001", "ipv4:10.0.0.7:8001,10.0.0.8:8001"),
        ("[::1]:8001,[fd00::2]:8001", "ipv6:[::1]:8001,[fd00::2]:8001"),
        ("ipv4:10.0.0.7:8001,10.0.0.8:8001", "ipv4:10.0.0.7:8001,10.0.0.8:8001"),
    ],
)
def test_grpc_targets(url, target):
    assert grpc_target(url) == target


@pytest.mark.parametrize(
    "url, match",
    [
        ("seg-a:8001,seg-b:8001", "IPv4 or all IPv6"),
        ("10.0.0.7:8001,[::1]:8001", "IPv4 or all IPv6"),
        ("10.0.0.7,10.0.0.8:8001", "host:port"),
        ("10.0.0.7:80x1,10.0.0.8:8001", "host:port"),
    ],
)
def test_bad_grpc_lists_are_refused_clearly(url, match):
    with pytest.raises(InvalidInputError, match=match):
        grpc_target(url)


def test_http_targets():
    assert http_entries("seg:8000/base") == ([("seg", 8000)], "/base")
    assert http_entries("dns:///seg:8000") == ([("seg", 8000)], "")
    assert http_entries("ipv4:10.0.0.7:8000,10.0.0.8:8000") == ([("10.0.0.7", 8000), ("10.0.0.8", 8000)], "")
    with pytest.raises(InvalidInputError, match="DNS server in the target is for gRPC"):
        http_entries("dns://10.96.0.10:53/seg:8000")
    with pytest.raises(InvalidInputError, match="gRPC target"):
        http_entries("unix:/run/triton.sock")
    with pytest.raises(InvalidInputError, match="single address"):
        http_entries("10.0.0.7:8000,10.0.0.8:8000/base")


def test_grpc_channel_balances_round_robin_and_keeps_tritonclient_defaults():
    args = dict(grpc_channel_args(5.0))
    assert json.loads(args["grpc.service_config"]) == {"loadBalancingConfig": [{"round_robin": {}}]}
    assert args["grpc.dns_min_time_between_resolutions_ms"] == 5000
    assert args["grpc.max_receive_message_length"] == args["grpc.max_send_message_length"] == 2**31 - 1
    assert "grpc.keepalive_time_ms" in args


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_http_replicas_take_turns_and_follow_the_name():
    answers = {"seg": ["10.0.0.7", "10.0.0.8"]}
    clock = Clock()
    replicas = HttpReplicas("seg:8000", 10.0, clock=clock, resolver=lambda host, port: answers[host])
    assert [replicas.pick() for _ in range(4)] == ["10.0.0.7:8000", "10.0.0.8:8000"] * 2
    answers["seg"] = ["10.0.0.7", "10.0.0.8", "10.0.0.9"]  # a pod added
    assert len(replicas.addresses()) == 2  # not resolved again before resolve_interval
    clock.now += 10
    assert {replicas.pick() for _ in range(6)} == {"10.0.0.7:8000", "10.0.0.8:8000", "10.0.0.9:8000"}


def test_http_replicas_skip_a_refusing_address_for_longer_each_time():
    clock = Clock()
    replicas = HttpReplicas("ipv4:10.0.0.7:8000,10.0.0.8:8000", clock=clock)
    replicas.refused("10.0.0.7:8000")
    assert replicas.others_available("10.0.0.7:8000")
    assert {replicas.pick() for _ in range(4)} == {"10.0.0.8:8000"}
    clock.now += 1.0  # skipped for 1 s the first time
    assert {replicas.pick() for _ in range(4)} == {"10.0.0.7:8000", "10.0.0.8:8000"}
    replicas.refused("10.0.0.7:8000")
    clock.now += 1.5  # 2 s the second time
    assert {replicas.pick() for _ in range(4)} == {"10.0.0.8:8000"}
    replicas.refused("10.0.0.8:8000")  # both skipped: the one free soonest
    assert replicas.pick() == "10.0.0.7:8000" and not replicas.others_available("10.0.0.8:8000")


def test_an_unresolvable_name_is_unavailable():
    def fail(host, port):
        raise OSError("Name or service not known")

    with pytest.raises(ServerUnavailableError, match="cannot resolve seg"):
        HttpReplicas("seg:8000", resolver=fail).pick()


@pytest.mark.parametrize(
    "error, gone",
    [
        (InferenceServerException("Stream removed (Socket closed)", status="StatusCode.UNAVAILABLE"), True),
        (InferenceServerException("Socket closed", status="StatusCode.UNAVAILABLE"), True),
        (
            InferenceServerException(
                "segment_everything: the server is shutting down; retry on another replica",
                status="StatusCode.UNAVAILABLE",
            ),
            True,
        ),
        (
            InferenceServerException(
                "Server is stopping, scheduler for model has stopped accepting new inference requests",
                status="StatusCode.UNAVAILABLE",
            ),
            True,
        ),
        (
            InferenceServerException(
                "Request for unknown model: 'segment_everything' has no available versions",
                status="StatusCode.NOT_FOUND",
            ),
            True,
        ),
        (
            InferenceServerException(
                "failed to connect to all addresses; last error: Connection refused",
                status="StatusCode.UNAVAILABLE",
            ),
            False,
        ),
        (InferenceServerException("Exceeds maximum queue size", status="StatusCode.UNAVAILABLE"), False),
        (InferenceServerException("unknown model: 'x' is not found", status="StatusCode.NOT_FOUND"), False),
        (InferenceServerException("bad image", status="StatusCode.INVALID_ARGUMENT"), False),
    ],
)
def test_which_failures_mean_the_replica_went_away(error, gone):
    assert from_triton_exception(error).replica_gone is gone


def test_a_connection_broken_mid_request_is_a_replica_gone():
    assert map_exception(ConnectionResetError(104, "Connection reset by peer")).replica_gone
    assert not map_exception(ConnectionRefusedError(111, "Connection refused")).replica_gone


def test_replica_gone_is_retried_at_once_then_with_backoff():
    policy = RetryPolicy(retries=3, backoff=0.5)
    rng = random.Random(1)
    deadline = time.monotonic() + 60
    gone = from_triton_exception(InferenceServerException("Socket closed", status="StatusCode.UNAVAILABLE"))
    assert gone.work_started  # the replica may have started it: retried because requests are idempotent
    assert policy.delay(gone, 0, deadline, rng) == 0.0
    assert 0.0 <= policy.delay(gone, 1, deadline, rng) <= 1.0
    assert policy.delay(gone, 3, deadline, rng) is None  # out of retries
    assert policy.delay(gone, 0, time.monotonic(), rng) is None  # out of time
    overloaded = from_triton_exception(
        InferenceServerException("Exceeds maximum queue size", status="StatusCode.UNAVAILABLE")
    )
    waits = {policy.delay(overloaded, 0, deadline, rng) for _ in range(20)}
    assert all(0.0 <= w <= 0.5 for w in waits) and len(waits) > 1  # overload: today's jittered backoff


class FakeHttp:
    """tritonclient's HTTP client for one address: refuses, or answers with the address."""

    def __init__(self, address: str, dead: set[str], calls: list[str]) -> None:
        self.address, self.dead, self.calls = address, dead, calls

    def infer(self, model_name, inputs, **kwargs):
        self.calls.append(self.address)
        if self.address in self.dead:
            raise ConnectionRefusedError(111, "Connection refused")
        from test_client import fake_response  # tests/client is on sys.path (pytest's rootdir conftest)

        return fake_response(1)

    def close(self):
        pass


def test_http_client_spreads_requests_and_moves_on_from_a_dead_replica(monkeypatch):
    calls: list[str] = []
    dead = {"10.0.0.8:8000"}
    client = SegmentEverythingClient("10.0.0.7:8000,10.0.0.8:8000,10.0.0.9:8000", protocol="http", backoff=5)
    monkeypatch.setattr(client, "_new_triton_client", lambda address=None: FakeHttp(address, dead, calls))
    start = time.monotonic()
    for _ in range(6):
        assert len(client.segment_everything(b"img")) == 1
    assert time.monotonic() - start < 1  # the refusal was retried at once elsewhere, not after a backoff
    assert calls.count("10.0.0.8:8000") == 1  # then skipped
    assert calls.count("10.0.0.7:8000") == calls.count("10.0.0.9:8000") == 3
