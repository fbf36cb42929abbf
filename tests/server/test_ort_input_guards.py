"""The Python-based ``onnxruntime`` runner's input guards (``max_dims``, ``same_dims``, ``finite_inputs``,
``value_ranges``) on a real tritonserver, with a tiny ONNX model:

  guarded   y = a*b, max_batch_size 8 with dynamic batching; a [-1, -1] at most [4, 3], b finite and within
            [-10, 10], a and b agree on axis 1.

The parsing and the messages are unit-tested in tests/test_input_guards.py; here: the answers travel as
INVALID_ARG over both protocols, a bad request in a dynamic batch fails alone, and a malformed guard parameter
fails the model load with a message naming it.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from triton_calls import RawInfer
from tritonclient.utils import InferenceServerException

from mobilesamv2.runner.local import TritonServer

pytestmark = pytest.mark.server

GUARDS = {
    "max_dims": "a=4,3",
    "same_dims": "a:1,b:1",
    "finite_inputs": "b",
    "value_ranges": "b=-10:10",
}


def _guarded(repo: Path, name: str = "guarded", guards: dict[str, str] = GUARDS) -> None:
    graph = helper.make_graph(
        [helper.make_node("Mul", ["a", "b"], ["y"])],
        name,
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", "w"]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["n", "w"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "w"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    (repo / name / "1").mkdir(parents=True)
    onnx.save(model, str(repo / name / "1" / "model.onnx"))
    params = {"intra_op_thread_count": "1", **guards}
    parameters = "\n".join(
        f'parameters {{ key: "{k}" value {{ string_value: "{v}" }} }}' for k, v in params.items()
    )
    (repo / name / "config.pbtxt").write_text(
        f'''name: "{name}"
backend: "onnxruntime"
max_batch_size: 8
input [
  {{ name: "a" data_type: TYPE_FP32 dims: [ -1 ] allow_ragged_batch: true }},
  {{ name: "b" data_type: TYPE_FP32 dims: [ -1 ] allow_ragged_batch: true }}
]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ -1 ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
dynamic_batching {{ max_queue_delay_microseconds: 100000 }}
{parameters}
'''
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, triton_server_factory: Callable) -> TritonServer:
    repo = tmp_path_factory.mktemp("guarded_repo")
    _guarded(repo)
    return triton_server_factory(repo)


def ones(n: int = 2, w: int = 3, value: float = 1.0) -> np.ndarray:
    return np.full((n, w), value, np.float32)


def refusal(server: TritonServer, inputs: dict, protocol: str = "http") -> str:
    with pytest.raises(InferenceServerException) as info:
        RawInfer()(server, "guarded", inputs, ["y"], protocol=protocol)
    assert info.value.status() in ("400", "StatusCode.INVALID_ARGUMENT"), info.value
    return info.value.message()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_guards_refuse_with_invalid_arg_naming_model_input_value_and_limit(server, protocol):
    good = {"a": ones(), "b": ones(value=2.0)}
    np.testing.assert_array_equal(RawInfer()(server, "guarded", good, ["y"], protocol=protocol)["y"], 2.0)
    assert refusal(server, {"a": ones(5), "b": ones(5)}, protocol) == (
        "guarded: input 'a' has shape [5, 3]: axis 0 is 5, over the limit of 4 (max_dims [4, 3])"
    )
    assert "axis 1 is 4, over the limit of 3" in refusal(server, {"a": ones(1, 4), "b": ones(1, 4)}, protocol)
    assert refusal(server, {"a": ones(1, 2), "b": ones(1, 3)}, protocol) == (
        "guarded: these axes must have the same length: 'a' axis 1 is 2, 'b' axis 1 is 3"
    )
    b = ones()
    b[1, 2] = np.nan
    assert refusal(server, {"a": ones(), "b": b}, protocol) == (
        "guarded: input 'b' must be finite (no NaN or infinity), got nan at [1, 2] (finite_inputs)"
    )
    assert refusal(server, {"a": ones(), "b": ones(value=3e38)}, protocol) == (
        "guarded: input 'b' must be in [-10, 10], got 3e+38 at [0, 0] (value_ranges)"
    )


def test_a_refused_request_in_a_dynamic_batch_fails_alone(server):
    barrier = threading.Barrier(4)
    outcomes: dict[int, object] = {}

    def one(i: int) -> None:
        b = ones(1, 3, value=50.0 if i == 0 else float(i))
        barrier.wait()
        try:
            outcomes[i] = RawInfer()(server, "guarded", {"a": ones(1, 3), "b": b}, ["y"])["y"]
        except InferenceServerException as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    bad = outcomes[0]
    assert isinstance(bad, InferenceServerException) and "got 50 at [0, 0]" in bad.message()
    for i in (1, 2, 3):
        np.testing.assert_array_equal(outcomes[i], ones(1, 3, value=float(i)))


@pytest.mark.parametrize(
    "guards, message",
    [
        ({"max_dims": "a=4"}, r"guarded: parameter max_dims: 'a' has 2 axes \[-1, -1\], got 1 bounds"),
        ({"value_ranges": "c=0:1"}, r"guarded: parameter value_ranges: 'c' is not an input of the model"),
        ({"same_dims": "a:0;"}, r"guarded: parameter same_dims: group 'a:0' needs two axes or more"),
    ],
)
def test_a_malformed_guard_fails_the_model_load(tmp_path, triton_server_factory, guards, message):
    _guarded(tmp_path, guards=guards)
    with pytest.raises(RuntimeError, match="exited") as failure:
        triton_server_factory(tmp_path)
    assert re.search(message, str(failure.value)), str(failure.value)[-2000:]
