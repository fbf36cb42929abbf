"""A locked-down server on the real models: management APIs behind the admin key (HTTP and gRPC), inference,
health and metadata open without it, no model control, gRPC over TLS (and mutual TLS on a tiny model), with
certificates made for the test (``tls_certs``)."""

from __future__ import annotations

import json
import textwrap
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tls_certs
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from mobilesamv2.runner import serve
from mobilesamv2.runner.hardening import GRPC_HEADER_PREFIX, GrpcTls, HardeningError, Restriction, Security
from mobilesamv2.runner.local import TritonServer
from segment_everything_client import SegmentEverythingClient, ServerUnavailableError

pytestmark = pytest.mark.skipif(not tls_certs.available(), reason="neither cryptography nor openssl")

KEY = "test-admin-key_0123456789abcdef"
HEADER = "mobilesamv2-admin-key"
IMAGE = np.random.default_rng(1).integers(0, 256, (96, 128, 3), dtype=np.uint8)

RESTRICTED_HTTP = [
    ("GET", "/v2/models/stats"),
    ("GET", "/v2/models/segment_everything/stats"),
    ("GET", "/v2/models/segment_everything/config"),
    ("POST", "/v2/repository/index"),
    ("GET", "/v2/logging"),
    ("GET", "/v2/trace/setting"),
    ("GET", "/v2/systemsharedmemory/status"),
]
OPEN_HTTP = [
    ("GET", "/v2"),
    ("GET", "/v2/health/live"),
    ("GET", "/v2/health/ready"),
    ("GET", "/v2/models/segment_everything"),
    ("GET", "/v2/models/segment_everything/ready"),
]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tls_certs.Certificates:
    return tls_certs.make(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def locked(
    built_repository: Path, certs: tls_certs.Certificates, triton_server_factory: Callable[..., TritonServer]
) -> TritonServer:
    return triton_server_factory(
        built_repository,
        restriction=Restriction(KEY, HEADER),
        grpc_tls=GrpcTls(certs.server_cert, certs.server_key),
        startup_timeout=180.0,
    )


def http(server: TritonServer, method: str, path: str, headers: dict | None = None) -> tuple[int, str]:
    request = urllib.request.Request(
        f"http://{server.http_url}{path}",
        method=method,
        headers=headers or {},
        data=b"{}" if method == "POST" else None,
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_the_command_line_is_locked_down(locked: TritonServer) -> None:
    command = locked.command()
    assert "--model-control-mode=none" in command
    apis = "shared-memory,model-repository,model-config,logging,trace,statistics"
    assert f"--http-restricted-api={apis}:{HEADER}={KEY}" in command
    assert f"--grpc-restricted-protocol={apis}:{HEADER}={KEY}" in command
    assert "--grpc-use-ssl=true" in command


@pytest.mark.parametrize("method, path", RESTRICTED_HTTP)
def test_http_management_apis_need_the_key(locked: TritonServer, method: str, path: str) -> None:
    status, body = http(locked, method, path)
    assert status == 403 and f"expecting header '{HEADER}'" in body, (status, body)
    status, body = http(locked, method, path, {HEADER: "wrong-key-0123456789"})
    assert status == 403, (status, body)
    status, body = http(locked, method, path, {HEADER: KEY})
    assert status == 200, (status, body)


@pytest.mark.parametrize("method, path", OPEN_HTTP)
def test_http_health_and_metadata_stay_open(locked: TritonServer, method: str, path: str) -> None:
    status, body = http(locked, method, path)
    assert status == 200, (status, body)


def test_model_control_is_off_even_with_the_key(locked: TritonServer) -> None:
    status, body = http(locked, "POST", "/v2/repository/models/segment_everything/unload", {HEADER: KEY})
    assert status != 200 and "not allowed" in json.loads(body)["error"]
    assert http(locked, "GET", "/v2/models/segment_everything/ready")[0] == 200


def _grpc(server: TritonServer, certs: tls_certs.Certificates) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(server.grpc_url, ssl=True, root_certificates=str(certs.ca))


GRPC_RESTRICTED = {
    "statistics": lambda c, h: c.get_inference_statistics(headers=h),
    "model-config": lambda c, h: c.get_model_config("segment_everything", headers=h),
    "model-repository": lambda c, h: c.get_model_repository_index(headers=h),
    "logging": lambda c, h: c.get_log_settings(headers=h),
    "trace": lambda c, h: c.get_trace_settings(headers=h),
    "shared-memory": lambda c, h: c.get_system_shared_memory_status(headers=h),
}


@pytest.mark.parametrize("api", list(GRPC_RESTRICTED))
def test_grpc_management_apis_need_the_key(locked: TritonServer, certs, api: str) -> None:
    client = _grpc(locked, certs)
    try:
        call = GRPC_RESTRICTED[api]
        for headers in (None, {HEADER: KEY}):  # the HTTP header name is not what gRPC checks
            with pytest.raises(InferenceServerException, match="restricted"):
                call(client, headers)
        call(client, {GRPC_HEADER_PREFIX + HEADER: KEY})
        assert client.is_server_ready() and client.get_server_metadata().version == "2.51.0"
    finally:
        client.close()


def test_inference_needs_no_key_over_grpc_tls_and_http(locked: TritonServer, certs) -> None:
    with SegmentEverythingClient(locked.grpc_url, root_certificates=str(certs.ca), timeout=120) as client:
        assert client.is_ready()
        seg = client.segment_anything(IMAGE, boxes=[[10, 10, 60, 50]])
        assert len(seg) == 1 and tuple(seg.image_size) == (96, 128)
        everything = client.segment_everything(IMAGE, max_prompts=2)
        assert len(everything) <= 2 and tuple(everything.image_size) == (96, 128)
    with SegmentEverythingClient(locked.http_url, "http", timeout=120) as client:
        assert len(client.segment_anything(IMAGE, boxes=[[10, 10, 60, 50]])) == 1


def test_plaintext_grpc_or_an_unknown_ca_is_refused(locked: TritonServer, certs, tmp_path: Path) -> None:
    other = tls_certs.make(tmp_path / "other")
    for tls in ({}, {"root_certificates": str(other.ca)}):  # no TLS; a CA that did not sign the server's
        client = SegmentEverythingClient(locked.grpc_url, timeout=5, retries=0, **tls)
        with client, pytest.raises(ServerUnavailableError):
            client.segment_anything(IMAGE, boxes=[[10, 10, 60, 50]])


def test_the_probe_needs_no_key(locked: TritonServer) -> None:
    from mobilesamv2.runner.probe import Prober

    result = Prober(locked.http_url, timeout=60).run()
    assert result.ok, result.line()


# --- mutual TLS, on a one-model repository ------------------------------------------------------------------

ECHO = textwrap.dedent(
    """
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            responses = []
            for request in requests:
                x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", x)]))
            return responses
    """
)


@pytest.fixture(scope="module")
def mutual(tmp_path_factory, certs, triton_server_factory) -> TritonServer:
    repo = tmp_path_factory.mktemp("echo_repo")
    (repo / "echo" / "1").mkdir(parents=True)
    (repo / "echo" / "1" / "model.py").write_text(ECHO)
    (repo / "echo" / "config.pbtxt").write_text(
        'name: "echo"\nbackend: "python"\nmax_batch_size: 0\n'
        'input [ { name: "x" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
        "instance_group [ { count: 1 kind: KIND_CPU } ]\n"
    )
    return triton_server_factory(repo, grpc_tls=GrpcTls(certs.server_cert, certs.server_key, certs.ca))


def _echo(server: TritonServer, certs, client_cert: bool) -> np.ndarray:
    extra = {"private_key": str(certs.client_key), "certificate_chain": str(certs.client_cert)}
    client = grpcclient.InferenceServerClient(
        server.grpc_url, ssl=True, root_certificates=str(certs.ca), **(extra if client_cert else {})
    )
    try:
        x = grpcclient.InferInput("x", [3], "FP32")
        x.set_data_from_numpy(np.array([1.0, 2.0, 3.0], np.float32))
        return client.infer("echo", [x], client_timeout=20).as_numpy("y")
    finally:
        client.close()


def test_mutual_tls_wants_a_client_certificate(mutual: TritonServer, certs) -> None:
    assert "--grpc-use-ssl-mutual=true" in mutual.command()
    np.testing.assert_array_equal(_echo(mutual, certs, client_cert=True), [1.0, 2.0, 3.0])
    with pytest.raises(InferenceServerException):
        _echo(mutual, certs, client_cert=False)


# --- the launcher's options ---------------------------------------------------------------------------------


def test_conflicting_extra_args_are_refused(tmp_path: Path) -> None:
    with pytest.raises(HardeningError, match="model-control-mode=explicit"):
        TritonServer(tmp_path, restriction=Restriction(KEY), extra_args=["--model-control-mode=explicit"])
    plain = TritonServer(tmp_path)
    assert "--model-control-mode=none" in plain.command()
    assert not any("restricted" in a or "ssl" in a for a in plain.command())


def test_cli_key_sources_and_bad_tls(tmp_path: Path, capsys) -> None:
    args = serve.parse_args(["--restrict-apis", "--admin-header", HEADER])
    security = Security.from_args(args, {}, generated_key_file=tmp_path / "admin-key")
    written = (tmp_path / "admin-key").read_text().strip()
    assert security.restriction.key == written
    assert oct((tmp_path / "admin-key").stat().st_mode & 0o777) == "0o600"
    notes = " ".join(security.notes())
    assert "triton-grpc-protocol-mobilesamv2-admin-key" in notes and written not in notes
    assert str(tmp_path / "admin-key") in notes
    assert Security.from_args(args, {"ADMIN_KEY": KEY}).restriction.key == KEY
    (tmp_path / "file").write_text(KEY + "X\n")
    from_file = serve.parse_args(["--restrict-management-apis", "--admin-key-file", str(tmp_path / "file")])
    assert Security.from_args(from_file, {"ADMIN_KEY": KEY}).restriction.key == KEY + "X"
    assert Security.from_args(serve.parse_args([]), {}).restriction is None

    cert = tmp_path / "c.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    code = serve.main(["--no-build", "--model-repository", str(tmp_path), "--grpc-tls-cert", str(cert)])
    assert code == 2 and "needs both" in capsys.readouterr().err
