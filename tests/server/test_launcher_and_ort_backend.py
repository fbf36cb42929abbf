"""The local Triton launcher and the Python-based ``onnxruntime`` backend, on a real tritonserver.

A tiny repository of ONNX models made with ``onnx.helper`` stands in for the real models:
  affine        y = 2x+1, sq = x*x, rows = rows in the ORT call; max_batch_size 8, dynamic (ragged) batching
  fixed4        y = x+1 where the graph fixes width 4 but the config says -1 (the backend must check it)
  pairs         s = a*b+c, chunk = rows in the ORT call; max_batch_size 0, default instance_group
  pairs_sliced  the same graph with max_rows_per_run 3 over sliced_inputs a,b
"""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from onnx import TensorProto, helper
from triton_calls import RawInfer
from tritonclient.utils import InferenceServerException

from mobilesamv2.runner import local, procs, serve
from mobilesamv2.runner.local import REPO_ROOT, TritonServer

pytestmark = pytest.mark.server

FLOAT = TensorProto.FLOAT


def _save(path: Path, nodes: list, inputs: list, outputs: list, initializers: list = ()) -> None:
    graph = helper.make_graph(nodes, path.parent.parent.name, inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def _rows_per_call(source: str, out: str) -> list:
    """Nodes computing ``out[i, 0]`` = number of rows ORT saw in this call (shows batching and slicing)."""
    return [
        helper.make_node("Shape", [source], ["_shape"]),
        helper.make_node("Gather", ["_shape", "_zero"], ["_n"], axis=0),
        helper.make_node("Cast", ["_n"], ["_nf"], to=FLOAT),
        helper.make_node("Slice", [source, "_zero1", "_one1", "_one1"], ["_col"]),
        helper.make_node("Mul", ["_col", "_fzero"], ["_col0"]),
        helper.make_node("Add", ["_col0", "_nf"], [out]),
    ]


ROW_CONSTANTS = [
    helper.make_tensor("_zero", TensorProto.INT64, [], [0]),
    helper.make_tensor("_zero1", TensorProto.INT64, [1], [0]),
    helper.make_tensor("_one1", TensorProto.INT64, [1], [1]),
    helper.make_tensor("_fzero", FLOAT, [], [0.0]),
]


def _config(name: str, body: str, instances: int | None = 1) -> str:
    group = f"instance_group [ {{ count: {instances} kind: KIND_CPU }} ]\n" if instances else ""
    params = 'parameters { key: "intra_op_thread_count" value { string_value: "1" } }\n'
    return f'name: "{name}"\nbackend: "onnxruntime"\n{body}\n{group}{params}'


def _affine(repo: Path) -> None:
    _save(
        repo / "affine" / "1" / "model.onnx",
        [
            helper.make_node("Mul", ["x", "_two"], ["_2x"]),
            helper.make_node("Add", ["_2x", "_fone"], ["y"]),
            helper.make_node("Mul", ["x", "x"], ["sq"]),
            *_rows_per_call("x", "rows"),
        ],
        [helper.make_tensor_value_info("x", FLOAT, ["batch", "width"])],
        [
            helper.make_tensor_value_info("y", FLOAT, ["batch", "width"]),
            helper.make_tensor_value_info("sq", FLOAT, ["batch", "width"]),
            helper.make_tensor_value_info("rows", FLOAT, ["batch", 1]),
        ],
        [
            *ROW_CONSTANTS,
            helper.make_tensor("_two", FLOAT, [], [2.0]),
            helper.make_tensor("_fone", FLOAT, [], [1.0]),
        ],
    )
    (repo / "affine" / "config.pbtxt").write_text(
        _config(
            "affine",
            """max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ -1 ] allow_ragged_batch: true } ]
output [
  { name: "y" data_type: TYPE_FP32 dims: [ -1 ] },
  { name: "sq" data_type: TYPE_FP32 dims: [ -1 ] },
  { name: "rows" data_type: TYPE_FP32 dims: [ 1 ] }
]
dynamic_batching { max_queue_delay_microseconds: 100000 }""",
        )
    )


def _fixed4(repo: Path) -> None:
    _save(
        repo / "fixed4" / "1" / "model.onnx",
        [helper.make_node("Add", ["x", "_fone"], ["y"])],
        [helper.make_tensor_value_info("x", FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", FLOAT, ["batch", 4])],
        [helper.make_tensor("_fone", FLOAT, [], [1.0])],
    )
    (repo / "fixed4" / "config.pbtxt").write_text(
        _config(
            "fixed4",
            """max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ -1 ] allow_ragged_batch: true } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ -1 ] } ]
dynamic_batching { max_queue_delay_microseconds: 100000 }""",
        )
    )


def _pairs(repo: Path, name: str, sliced: bool, instances: int | None) -> None:
    _save(
        repo / name / "1" / "model.onnx",
        [
            helper.make_node("Mul", ["a", "b"], ["_ab"]),
            helper.make_node("Add", ["_ab", "c"], ["s"]),
            *_rows_per_call("a", "chunk"),
        ],
        [
            helper.make_tensor_value_info("a", FLOAT, ["n", 4]),
            helper.make_tensor_value_info("b", FLOAT, ["n", 4]),
            helper.make_tensor_value_info("c", FLOAT, [4]),
        ],
        [
            helper.make_tensor_value_info("s", FLOAT, ["n", 4]),
            helper.make_tensor_value_info("chunk", FLOAT, ["n", 1]),
        ],
        ROW_CONSTANTS,
    )
    slicing = (
        'parameters { key: "max_rows_per_run" value { string_value: "3" } }\n'
        'parameters { key: "sliced_inputs" value { string_value: "a, b" } }'
        if sliced
        else ""
    )
    (repo / name / "config.pbtxt").write_text(
        _config(
            name,
            f"""max_batch_size: 0
input [
  {{ name: "a" data_type: TYPE_FP32 dims: [ -1, 4 ] }},
  {{ name: "b" data_type: TYPE_FP32 dims: [ -1, 4 ] }},
  {{ name: "c" data_type: TYPE_FP32 dims: [ -1 ] }}
]
output [
  {{ name: "s" data_type: TYPE_FP32 dims: [ -1, 4 ] }},
  {{ name: "chunk" data_type: TYPE_FP32 dims: [ -1, 1 ] }}
]
{slicing}""",
            instances,
        )
    )


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("tiny_repo")
    _affine(repo)
    _fixed4(repo)
    _pairs(repo, "pairs", sliced=False, instances=None)  # Triton's default instance count
    _pairs(repo, "pairs_sliced", sliced=True, instances=1)
    return repo


@pytest.fixture(scope="module")
def one_model_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("one_model_repo")
    _pairs(repo, "pairs_sliced", sliced=True, instances=1)
    return repo


@pytest.fixture(scope="module")
def server(tiny_repo: Path, triton_server_factory: Callable[..., TritonServer]) -> TritonServer:
    return triton_server_factory(tiny_repo)


def infer(
    client_module: ModuleType,
    url: str,
    model: str,
    inputs: dict[str, np.ndarray],
    outputs: list[str] | None = None,
) -> dict[str, np.ndarray | None]:
    """One request through the suite's raw caller; every output name of the tiny models, None when absent."""
    protocol = "http" if client_module is httpclient else "grpc"
    got = RawInfer()(url, model, inputs, outputs, protocol=protocol)
    return {n: got.get(n) for n in ("y", "sq", "rows", "s", "chunk")}


CLIENTS = pytest.mark.parametrize("client_module", [httpclient, grpcclient], ids=["http", "grpc"])


def _url(server: TritonServer, client_module: ModuleType) -> str:
    return server.http_url if client_module is httpclient else server.grpc_url


def _invalid_arg(exc: InferenceServerException) -> bool:
    return exc.status() in ("400", "StatusCode.INVALID_ARGUMENT")


@CLIENTS
def test_ready_and_configs_as_served(server: TritonServer, client_module: ModuleType) -> None:
    client = client_module.InferenceServerClient(_url(server, client_module))
    try:
        assert client.is_server_live() and client.is_server_ready()
        for model in ("affine", "fixed4", "pairs", "pairs_sliced"):
            assert client.is_model_ready(model)
        if client_module is grpcclient:
            config = client.get_model_config("pairs", as_json=True)["config"]
        else:
            config = client.get_model_config("pairs")
        assert config["backend"] == "onnxruntime"
        assert config["instance_group"][0]["count"] >= 1
    finally:
        client.close()


@CLIENTS
def test_outputs_and_requested_subset(server: TritonServer, client_module: ModuleType) -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = infer(client_module, _url(server, client_module), "affine", {"x": x})
    np.testing.assert_allclose(out["y"], 2 * x + 1)
    np.testing.assert_allclose(out["sq"], x * x)
    only_y = infer(client_module, _url(server, client_module), "affine", {"x": x}, outputs=["y"])
    np.testing.assert_allclose(only_y["y"], 2 * x + 1)
    assert only_y["sq"] is None and only_y["rows"] is None


def test_concurrent_requests_are_batched_and_split_back(server: TritonServer) -> None:
    barrier = threading.Barrier(16)
    results: dict[int, tuple[np.ndarray, dict]] = {}

    def one(i: int) -> None:
        batch, width = 1 + i % 3, (3, 5)[i % 2]  # two widths: ragged batches must be grouped by shape
        x = (100 * i + np.arange(batch * width, dtype=np.float32)).reshape(batch, width)
        module = (httpclient, grpcclient)[i % 2]
        barrier.wait()
        results[i] = (x, infer(module, _url(server, module), "affine", {"x": x}))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == list(range(16))
    shared_a_call = 0
    for x, out in results.values():
        np.testing.assert_allclose(out["y"], 2 * x + 1)
        np.testing.assert_allclose(out["sq"], x * x)
        assert out["rows"].shape == (len(x), 1)
        shared_a_call += int(out["rows"][0, 0] > len(x))
    assert shared_a_call > 0, "the dynamic batcher never put two requests into one ORT call"


@CLIENTS
def test_wrong_dtype_or_shape_is_invalid_arg_and_server_keeps_serving(
    server: TritonServer, client_module: ModuleType
) -> None:
    url = _url(server, client_module)
    with pytest.raises(InferenceServerException) as wrong_dtype:
        infer(client_module, url, "affine", {"x": np.ones((1, 3), np.int32)})
    assert _invalid_arg(wrong_dtype.value) and "'x'" in wrong_dtype.value.message()

    good = {"a": np.ones((2, 4), np.float32), "b": np.ones((2, 4), np.float32), "c": np.zeros(4, np.float32)}
    with pytest.raises(InferenceServerException) as wrong_shape:  # Triton checks dims the config fixes
        infer(client_module, url, "pairs", {**good, "a": np.ones((2, 5), np.float32)})
    assert _invalid_arg(wrong_shape.value) and "'a'" in wrong_shape.value.message()

    with pytest.raises(InferenceServerException) as graph_shape:  # the backend checks dims the graph fixes
        infer(client_module, url, "pairs", {**good, "c": np.zeros(3, np.float32)})
    assert _invalid_arg(graph_shape.value) and "'c'" in graph_shape.value.message()
    assert "[4]" in graph_shape.value.message()

    np.testing.assert_allclose(infer(client_module, url, "pairs", good)["s"], np.ones((2, 4)))


def test_bad_request_in_a_batch_fails_alone(server: TritonServer) -> None:
    barrier = threading.Barrier(4)
    outcomes: dict[int, object] = {}

    def one(i: int) -> None:
        x = np.full((1, 3 if i == 0 else 4), float(i), np.float32)
        barrier.wait()
        try:
            outcomes[i] = infer(httpclient, server.http_url, "fixed4", {"x": x})["y"]
        except InferenceServerException as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    bad = outcomes[0]
    assert isinstance(bad, InferenceServerException) and _invalid_arg(bad)
    assert "'x'" in bad.message() and "[-1, 4]" in bad.message()
    for i in (1, 2, 3):
        np.testing.assert_allclose(outcomes[i], np.full((1, 4), i + 1.0))


@CLIENTS
def test_slicing_matches_one_run(server: TritonServer, client_module: ModuleType) -> None:
    rng = np.random.default_rng(0)
    inputs = {
        "a": rng.standard_normal((7, 4), dtype=np.float32),
        "b": rng.standard_normal((7, 4), dtype=np.float32),
        "c": rng.standard_normal(4, dtype=np.float32),
    }
    url = _url(server, client_module)
    whole = infer(client_module, url, "pairs", inputs)
    sliced = infer(client_module, url, "pairs_sliced", inputs)
    np.testing.assert_array_equal(sliced["s"], whole["s"])
    np.testing.assert_allclose(whole["s"], inputs["a"] * inputs["b"] + inputs["c"], rtol=1e-6)
    assert whole["chunk"].ravel().tolist() == [7] * 7
    assert sliced["chunk"].ravel().tolist() == [3] * 6 + [1]

    with pytest.raises(InferenceServerException) as uneven:
        infer(client_module, url, "pairs_sliced", {**inputs, "b": inputs["b"][:5]})
    assert _invalid_arg(uneven.value) and "axis-0" in uneven.value.message()


@CLIENTS
def test_onnxruntime_failure_is_internal_error(server: TritonServer, client_module: ModuleType) -> None:
    a = np.ones((2, 4), np.float32)  # without sliced_inputs nothing checks a and b agree: ORT fails
    with pytest.raises(InferenceServerException) as failure:
        infer(
            client_module, _url(server, client_module), "pairs", {"a": a, "b": a[:1].repeat(3, 0), "c": a[0]}
        )
    assert failure.value.status() in ("500", "StatusCode.INTERNAL")
    # error hygiene: the caller gets the request id only, the log has ONNX Runtime's detail (node names)
    message = failure.value.message()
    found = re.fullmatch(
        r"pairs: internal error \(request id (\w+)\); the server log has the details", message
    )
    assert found, message
    assert "onnxruntime" not in message.lower() and "node" not in message.lower()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        logged = [line for line in server.log_path.read_text().splitlines() if found.group(1) in line]
        if logged:
            break
        time.sleep(0.2)
    assert logged and "pairs [" in logged[0], logged
    assert any(word in logged[0] for word in ("Fail", "INVALID_ARGUMENT", "RUNTIME_EXCEPTION", "Mul")), logged


def test_startup_failure_raises_with_log_tail(tmp_path: Path, triton_server_factory: Callable) -> None:
    _pairs(tmp_path, "broken", sliced=False, instances=1)
    config = tmp_path / "broken" / "config.pbtxt"
    config.write_text(config.read_text().replace('name: "c"', 'name: "not_c"'))
    with pytest.raises(RuntimeError, match="exited") as failure:
        triton_server_factory(tmp_path)
    assert "config input 'not_c' is not a graph input" in str(failure.value)


def test_build_step_failure_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def failing_run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        calls.append(command)
        return subprocess.CompletedProcess(command, 1)

    monkeypatch.setattr(local.subprocess, "run", failing_run)
    with pytest.raises(SystemExit, match=r"building the model repository .* failed"):
        serve.main(["--model-repository", str(tmp_path)])
    assert calls == [[sys.executable, "-m", "mobilesamv2.export.cli", "--out", str(tmp_path.resolve())]]


def _port_open(url: str) -> bool:
    host, port = url.rsplit(":", 1)
    with socket.socket() as sock:
        return sock.connect_ex((host, int(port))) == 0


def test_stop_ends_the_server_quickly(one_model_repo: Path, tmp_path: Path) -> None:
    server = TritonServer(one_model_repo, log_path=tmp_path / "log.txt", env={"OMP_NUM_THREADS": "1"})
    with server:
        assert server.is_running() and _port_open(server.http_url)
        started = time.monotonic()
    assert time.monotonic() - started < 5.0
    assert not server.is_running() and server.stop() == 0
    assert not _port_open(server.http_url)
    assert not procs.group_members(server.pid)  # its stubs went with it
    assert "successfully unloaded" in server.log_path.read_text() or "Exiting" in server.log_path.read_text()


def test_cli_serves_until_sigterm(one_model_repo: Path, tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "mobilesamv2.runner.serve", "--model-repository", str(one_model_repo),
        "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", "--no-build", "--no-supervise",
        "--log-file", str(tmp_path / "log.txt"),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    endpoints: dict[str, str] = {}
    try:
        deadline = time.monotonic() + 60
        while "log" not in endpoints and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                assert process.poll() is None, "launcher exited early"
                continue
            if match := re.match(r"\s+(http|grpc|metrics|log):\s+(\S+)", line):
                endpoints[match[1]] = match[2]
        assert set(endpoints) == {"http", "grpc", "metrics", "log"}
        with urllib.request.urlopen(f"http://{endpoints['http']}/v2/health/ready", timeout=5) as response:
            assert response.status == 200
        client = grpcclient.InferenceServerClient(endpoints["grpc"])
        assert client.is_model_ready("pairs_sliced")
        client.close()
        with urllib.request.urlopen(f"http://{endpoints['metrics']}/metrics", timeout=5) as response:
            assert b"nv_inference" in response.read()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        assert not _port_open(endpoints["http"])
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_killed_cli_takes_its_server_and_stubs_along(one_model_repo: Path, tmp_path: Path) -> None:
    """``mobilesamv2-serve`` killed with SIGKILL (no handler runs): the kernel kills its tritonserver, whose
    stubs then exit, and the ports are free for the next start."""
    command = [
        sys.executable, "-m", "mobilesamv2.runner.serve", "--model-repository", str(one_model_repo),
        "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", "--no-build", "--no-supervise",
        "--log-file", str(tmp_path / "log.txt"),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        pid, http = None, None
        for line in process.stdout:
            if match := re.match(r"Triton ready \(pid (\d+)\)", line):
                pid = int(match[1])
            if match := re.match(r"\s+http:\s+(\S+)", line):
                http = match[1]
            if "Ctrl-C" in line:
                break
        assert pid is not None and http is not None
        stubs = [s.pid for s in procs.stubs_of(pid)]
        assert stubs
        process.kill()
        process.wait()

        def alive() -> list[int]:
            return [p for p in [pid, *stubs] if (info := procs.proc_info(p)) and info.state != "Z"]

        deadline = time.monotonic() + 10
        while alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(), "orphans left running"
        assert not _port_open(http)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_stubs_are_in_the_servers_process_group(server: TritonServer) -> None:
    stubs = server.stub_pids()
    assert set(stubs) == {"affine", "fixed4", "pairs", "pairs_sliced"}
    assert len(stubs["pairs"]) >= 1
    for pid in (p for pids in stubs.values() for p in pids):
        assert procs.proc_info(pid).pgid == server.pid == procs.proc_info(server.pid).pgid
    assert os.getpgid(0) != server.pid  # and the server leads a group of its own


def test_a_killed_server_leaves_no_orphan_stubs(one_model_repo: Path, tmp_path: Path) -> None:
    """tritonserver SIGKILLed: its stubs outlive it (they watch their parent, which stays a zombie until the
    launcher reaps it); the launcher kills the whole group as soon as it notices."""
    server = TritonServer(one_model_repo, log_path=tmp_path / "log.txt", env={"OMP_NUM_THREADS": "1"}).start()
    try:
        [stub] = server.stub_pids()["pairs_sliced"]
        os.kill(server.pid, signal.SIGKILL)
        time.sleep(1.0)
        info = procs.proc_info(stub)
        assert info is not None and info.state != "Z", "the stub did not outlive its server here"
        assert not server.is_running()  # the launcher notices...
        assert server.poll() == 128 + signal.SIGKILL
        assert server.reaped == [stub]  # ...and kills the orphan
        assert procs.proc_info(stub) is None or procs.proc_info(stub).state == "Z"
        assert not procs.group_members(server.pid)
    finally:
        server.stop()


def test_cli_without_supervisor_reports_a_dead_server_and_reaps_it(
    one_model_repo: Path, tmp_path: Path
) -> None:
    command = [
        sys.executable, "-m", "mobilesamv2.runner.serve", "--model-repository", str(one_model_repo),
        "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", "--no-build", "--no-supervise",
        "--log-file", str(tmp_path / "log.txt"),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        pid = None
        for line in process.stdout:
            if match := re.match(r"Triton ready \(pid (\d+)\)", line):
                pid = int(match[1])
            if "Ctrl-C" in line:
                break
        assert pid is not None
        stubs = procs.stubs_of(pid)
        assert stubs
        os.kill(pid, signal.SIGKILL)
        assert process.wait(timeout=20) == 1
        out = process.stdout.read()
        assert "tritonserver exited with status 137; killed 1 leftover processes of its group" in out, out
        assert not procs.group_members(pid)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
