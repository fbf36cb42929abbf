"""The Triton glue shared by the Python models, without Triton: parameters, errors, ONNX Runtime options."""

from __future__ import annotations

import pytest

from mobilesamv2.inside_triton import glue
from mobilesamv2.pipeline import StageError
from mobilesamv2.runner.server import DRAIN_FILE_VAR
from segment_everything_contract import ContractError


def params(**values: str) -> glue.Parameters:
    return glue.Parameters.from_config({"parameters": {k: {"string_value": v} for k, v in values.items()}})


def test_parameters_typed_getters_and_errors():
    p = params(n="4", f="0.5", yes="On", no="false", names=" a, b ,,c ", empty="  ")
    assert (p.int("n", 0), p.float("f", 0.0), p.flag("yes", False), p.flag("no", True)) == (
        4,
        0.5,
        True,
        False,
    )
    assert p.list("names") == ["a", "b", "c"] and p.list("missing") == []
    assert p.int("empty", 9) == 9 and "empty" not in p
    with pytest.raises(ValueError, match="parameter n must be true or false"):
        p.flag("n", False)
    with pytest.raises(ValueError, match="parameter yes must be an integer"):
        p.int("yes", 0)


def test_caller_errors_keep_their_message_and_internal_errors_hide_details():
    invalid = glue.classify_error(ContractError("boxes must be finite"), "m", "rid1")
    assert invalid == glue.ErrorAnswer("INVALID_ARG", "boxes must be finite", None)
    internal = glue.classify_error(ZeroDivisionError("onnxruntime node /Div_3 failed"), "m", "rid2")
    assert internal.code == "INTERNAL"
    assert (
        "rid2" in internal.message and "Div" not in internal.message and "onnxruntime" not in internal.message
    )
    assert "ZeroDivisionError" in internal.log and "/Div_3" in internal.log and "rid2" in internal.log


def test_sub_model_verdicts_pass_through():
    refused = glue.classify_error(StageError("prompt_decoder", "too many prompts", "INVALID_ARG"), "m", "r")
    assert refused.code == "INVALID_ARG" and "too many prompts" in refused.message
    busy = glue.classify_error(
        StageError("image_encoder", "Exceeds maximum queue size", "UNAVAILABLE"), "m", "r"
    )
    assert busy.code == "UNAVAILABLE" and busy.log
    crashed = glue.classify_error(
        StageError("image_encoder", "stub died: segfault at 0x0", "INTERNAL"), "m", "r"
    )
    assert crashed.code == "INTERNAL" and "segfault" not in crashed.message


def test_a_stopping_server_answers_unavailable_so_that_clients_go_elsewhere(tmp_path, monkeypatch):
    # Triton's refusals of a BLS sub-request once it stops: INTERNAL-looking, but the server is going away
    for message in ("Server not ready", "Server is stopping, scheduler for model has stopped accepting"):
        answer = glue.classify_error(StageError("prompt_decoder", message, "INTERNAL"), "m", "r")
        assert answer.code == "UNAVAILABLE" and answer.message == f"m: {glue.SHUTTING_DOWN}", answer
    drain = tmp_path / "drain"
    monkeypatch.setenv(DRAIN_FILE_VAR, str(drain))
    assert not glue.draining()
    drain.touch()  # what the runner does before it stops the server
    assert glue.draining()
    monkeypatch.delenv(DRAIN_FILE_VAR)
    assert not glue.draining()


def test_cpu_budget_follows_affinity_and_cgroup_quota(tmp_path, monkeypatch):
    monkeypatch.setattr(glue.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5})
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert glue.available_cpus(str(tmp_path)) == 6  # no quota: the affinity mask
    (tmp_path / "cpu.max").write_text("250000 100000\n")
    assert glue.cgroup_cpu_limit(str(tmp_path)) == 2.5 and glue.available_cpus(str(tmp_path)) == 2
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    assert glue.available_cpus(str(tmp_path)) == 1  # half a CPU still gets one thread
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert glue.available_cpus(str(tmp_path)) == 3  # cgroup v1


def test_ort_settings_defaults_and_overrides(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    defaults = glue.ort_settings(params())
    assert defaults["intra_op_thread_count"] == glue.available_cpus()
    assert defaults["graph_optimization_level"] == 99
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert glue.ort_settings(params())["intra_op_thread_count"] == 1
    tuned = glue.ort_settings(
        params(graph_optimization_level="2", disabled_optimizers="A,B", allow_spinning="0")
    )
    assert (tuned["graph_optimization_level"], tuned["disabled_optimizers"], tuned["allow_spinning"]) == (
        2,
        ["A", "B"],
        False,
    )
    with pytest.raises(ValueError, match="graph_optimization_level"):
        glue.ort_settings(params(graph_optimization_level="5"))
    options = glue.ort_session_options(tuned)
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_cuda_provider_uses_the_instance_gpu_and_a_bounded_search():
    assert glue.ort_providers(params(), {}) == ["CPUExecutionProvider"]
    ((name, options),) = glue.ort_providers(
        params(execution_provider="cuda"), {"model_instance_device_id": "3"}
    )
    assert name == "CUDAExecutionProvider"
    assert options["device_id"] == 3 and options["cudnn_conv_algo_search"] == "HEURISTIC"
    with pytest.raises(ValueError, match="execution_provider"):
        glue.ort_providers(params(execution_provider="tpu"), {})


def test_a_session_on_the_wrong_provider_is_refused():
    class Session:
        def get_providers(self):
            return ["CPUExecutionProvider"]

    with pytest.raises(RuntimeError, match="runs on CPUExecutionProvider, not CUDAExecutionProvider"):
        glue.check_providers(Session(), [("CUDAExecutionProvider", {})], "object_discovery")
    glue.check_providers(Session(), ["CPUExecutionProvider"], "object_discovery")


def test_request_ids_are_the_callers_printable_ones_or_fresh():
    class Request:
        def __init__(self, rid):
            self.rid = rid

        def request_id(self):
            return self.rid

    assert glue.request_id(Request("abc-1")) == "abc-1"
    assert glue.request_id(Request("x\nFAKE LOG LINE")) == "xFAKE LOG LINE"
    fresh = glue.request_id(Request(""))
    assert len(fresh) == 12 and fresh != glue.request_id(Request(""))
