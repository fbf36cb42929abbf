"""Self-healing on the real server: a model's stub process killed (kill -9) or hung (SIGSTOP) under light
load, and tritonserver itself killed. The supervised service (``TritonServer`` + ``Supervisor``, what
``mobilesamv2-serve`` runs) must serve again within 60 s, every request must end within its deadline (the
client's timeout) with either a valid answer or a typed error, and no stub may outlive its server.

The recovery times printed here are measured again, with the commands to reproduce them, by
``benchmarks/failure_recovery.py`` (BENCHMARKS.md, "Failure recovery").
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.failure_recovery import Load, WrongAnswer
from mobilesamv2.runner import procs
from mobilesamv2.runner.local import REPO_ROOT, TritonServer
from mobilesamv2.runner.probe import Prober
from mobilesamv2.runner.supervisor import Supervisor
from segment_everything_client import SegmentEverythingError

pytestmark = pytest.mark.server

CLIENT_TIMEOUT = 15.0
RECOVERY_LIMIT = 60.0
MODELS = ["image_encoder", "prompt_decoder", "interactive_decoder", "object_discovery", "segment_everything"]
#: The census counts every model's stubs alike (test_every_model_is_in_the_census), so one kill proves the
#: reaction: the image encoder's stub (served by the Python-based onnxruntime backend).
KILLED = ["image_encoder"]


@pytest.fixture(scope="module")
def service(built_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Supervisor]:
    """A supervised server of the built repository: probes every 3 s (1 s while failing), restarts after 2
    failed probes in a row."""
    server = TritonServer(
        built_repository,
        env={"OMP_NUM_THREADS": "1"},
        exit_timeout_s=5,
        startup_timeout=180,
        log_path=tmp_path_factory.mktemp("self-healing") / "tritonserver.log",
    )
    server.start()
    supervisor = Supervisor(
        server, interval=3.0, failure_interval=1.0, probe_timeout=10.0, failures=2, drain_timeout=3.0
    ).start()
    yield supervisor
    supervisor.stop()
    server.stop()


def check(load: Load) -> str:
    """Every request ended within its deadline with a right answer or one of the client's typed errors."""
    assert not load._thread.is_alive(), "a request hung beyond its deadline"
    assert load.outcomes, "the load thread sent nothing"
    slow = [o for o in load.outcomes if o.seconds > CLIENT_TIMEOUT + 2.0]
    assert not slow, f"requests outlived their {CLIENT_TIMEOUT} s deadline: {slow}"
    wrong = [o for o in load.outcomes if isinstance(o.error, WrongAnswer)]
    assert not wrong, f"answers that were wrong but reported success: {wrong}"
    untyped = [o for o in load.outcomes if o.error and not isinstance(o.error, SegmentEverythingError)]
    assert not untyped, f"failures that were not the client's typed errors: {untyped}"
    kinds = sorted(set(load.errors))
    return f"{len(load.outcomes)} requests, {len(load.errors)} failed with typed errors {kinds}"


def serving(server: TritonServer, timeout: float = 90.0) -> float:
    """Seconds until a full probe passes."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if server.is_running() and Prober(server.http_url, timeout=10.0).run().ok:
            return time.monotonic() - started
        time.sleep(0.5)
    raise AssertionError(f"not serving after {timeout} s")


def recovered(supervisor: Supervisor, old_pid: int, started: float) -> float:
    """Seconds from ``started`` until a restarted server (a new tritonserver pid) passes a full probe."""
    server = supervisor.server
    deadline = started + RECOVERY_LIMIT + 30
    while time.monotonic() < deadline:
        assert supervisor.error is None, supervisor.error
        if server.pid != old_pid and server.is_running() and Prober(server.http_url, timeout=10.0).run().ok:
            return time.monotonic() - started
        time.sleep(0.25)
    raise AssertionError(f"not serving again {RECOVERY_LIMIT + 30:.0f} s after the failure")


def _wait_for(condition, what: str, timeout: float = CLIENT_TIMEOUT + 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {timeout:.0f} s"
        time.sleep(0.05)


def _victim(server: TritonServer, model: str) -> int:
    stubs = server.stub_pids()
    assert model in stubs, f"no stub process for {model}: {stubs}"
    return stubs[model][0]


def _fail_and_recover(supervisor: Supervisor, model: str, sig: int) -> float:
    server = supervisor.server
    serving(server)
    old_pid = server.pid
    with Load(server.grpc_url, CLIENT_TIMEOUT) as load:
        _wait_for(lambda: load.outcomes, "the load's first answer")  # requests are flowing
        victim = _victim(server, model)
        os.kill(victim, sig)
        started = time.monotonic()
        seconds = recovered(supervisor, old_pid, started)
        served = len(load.outcomes)
        _wait_for(lambda: any(o.error is None for o in load.outcomes[served:]), "an answer after recovery")
    summary = check(load)
    assert procs.proc_info(victim) is None or procs.proc_info(victim).state == "Z", "the old stub survived"
    assert not procs.group_members(old_pid), "processes of the old server's group survived"
    print(f"\n{model} {signal.Signals(sig).name}: serving again after {seconds:.1f} s; {summary}")
    return seconds


def test_every_model_is_in_the_census(service: Supervisor) -> None:
    serving(service.server)
    deadline = time.monotonic() + 10
    while service.expected_stubs is None and time.monotonic() < deadline:
        time.sleep(0.2)  # the supervisor takes the census once the server is ready
    assert service.expected_stubs == {m: len(p) for m, p in service.server.stub_pids().items()}
    assert set(service.expected_stubs) == set(MODELS) and service.expected_stubs["segment_everything"] == 2


@pytest.mark.parametrize("model", KILLED)
def test_a_killed_stub_is_healed(service: Supervisor, model: str) -> None:
    seconds = _fail_and_recover(service, model, signal.SIGKILL)
    assert seconds < RECOVERY_LIMIT


@pytest.mark.parametrize("watch_stubs", [True, False], ids=["stub-census", "probes-only"])
def test_a_hung_stub_is_healed(service: Supervisor, watch_stubs: bool) -> None:
    """SIGSTOP: the stub census sees a stopped process at once; without it the probes must find it."""
    service.watch_stubs = watch_stubs
    try:
        seconds = _fail_and_recover(service, "image_encoder", signal.SIGSTOP)
    finally:
        service.watch_stubs = True
    assert seconds < RECOVERY_LIMIT


def test_cli_supervisor_restarts_a_killed_server(built_repository: Path, tmp_path: Path) -> None:
    """``mobilesamv2-serve`` with its supervisor (the loop and Supervisor the module's service uses):
    tritonserver SIGKILLed is noticed, its orphaned stubs are killed, it is started again on the same ports;
    SIGTERM then stops everything."""
    command = [
        sys.executable, "-m", "mobilesamv2.runner.serve", "--model-repository", str(built_repository),
        "--no-build", "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0",
        "--log-file", str(tmp_path / "log.txt"), "--probe-interval", "5", "--probe-timeout", "10",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "stdout.txt"
    with open(out, "w") as sink:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while "Ctrl-C" not in out.read_text():
            assert process.poll() is None, out.read_text()
            assert time.monotonic() < deadline, out.read_text()
            time.sleep(0.5)
        text = out.read_text()
        server_pid = int(re.search(r"Triton ready \(pid (\d+)\)", text)[1])
        http = re.search(r"http:\s+(\S+)", text)[1]
        stubs = [stub.pid for stub in procs.stubs_of(server_pid)]
        assert len(stubs) >= 6  # five models, two pipeline instances
        assert all(procs.proc_info(pid).pgid == server_pid for pid in stubs), "a stub left the server's group"
        os.kill(server_pid, signal.SIGKILL)
        while "restarted" not in out.read_text():
            assert process.poll() is None and time.monotonic() < deadline + 60, out.read_text()
            time.sleep(0.5)
        assert "server_exited" in out.read_text()
        assert not procs.group_members(server_pid), "orphaned stubs of the killed server are still running"
        assert all(procs.proc_info(pid) is None or procs.proc_info(pid).state == "Z" for pid in stubs)
        assert Prober(http, timeout=10.0).run().ok
        new_pid = int(re.search(r"tritonserver pid (\d+) ready", out.read_text())[1])
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, out.read_text()
        assert not procs.group_members(new_pid)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
