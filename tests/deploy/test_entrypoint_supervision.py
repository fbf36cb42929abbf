"""The entrypoint as the container's PID 1: tritonserver as a child in its own process group, signals
forwarded, the group reaped when it exits (its Python stubs outlive it otherwise), its exit status passed on,
and a lost stub process turned into exit status 4.

A fake tritonserver (a Python script) answers ``/v2/health/ready`` on its ``--http-port`` and starts fake
stubs: processes whose command line looks like Triton's (``.../triton_python_backend_stub
<repository>/<model>/1/model.py <shm> ... <instance> ...``) and that ignore SIGTERM, as a busy stub does; the
entrypoint's ``run_server`` runs in a subprocess so that real signals are sent.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mobilesamv2.runner import entrypoint, procs
from mobilesamv2.runner.local import free_port
from mobilesamv2.runner.server import TritonProcess, exit_code, ready_url

FAKE_STUB = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a stub busy in a model does not stop on SIGTERM
while True:
    time.sleep(1)
"""

FAKE_SERVER = """
import http.server, os, signal, sys, threading, time
repo, exit_after, code = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
port = int(sys.argv[4].split("=")[1])


class Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


server = http.server.HTTPServer(("127.0.0.1", port), Ready)
threading.Thread(target=server.serve_forever, daemon=True).start()
stub = os.path.join(repo, "triton_python_backend_stub")
for model, instances in (("object_discovery", 1), ("segment_everything", 2)):
    for i in range(instances):
        model_py = os.path.join(repo, model, "1", "model.py")
        args = [stub, model_py, "shm", "1048576", "1048576", str(os.getpid()), repo, "336", f"{model}_0_{i}"]
        os.posix_spawn(sys.executable, args, os.environ)  # argv[0] names the stub; python runs model.py
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # exits without stopping its stubs
started = time.monotonic()
while exit_after <= 0 or time.monotonic() - started < exit_after:
    time.sleep(0.05)
sys.exit(code)
"""


@pytest.fixture()
def fake_repo(tmp_path: Path) -> Path:
    for model in ("object_discovery", "segment_everything"):
        (tmp_path / model / "1").mkdir(parents=True)
        (tmp_path / model / "1" / "model.py").write_text(FAKE_STUB)
    (tmp_path / "fake_tritonserver.py").write_text(FAKE_SERVER)
    return tmp_path


STARTED: list[subprocess.Popen] = []
SERVERS: list[int] = []


@pytest.fixture(autouse=True)
def _no_leftovers():
    """Whatever a failing test leaves running (the entrypoint, the fake server, its stubs) is killed."""
    yield
    while STARTED:
        process = STARTED.pop()
        if process.poll() is None:
            process.kill()
            process.wait()
    while SERVERS:  # each fake server leads its own group, with its stubs
        procs.kill_group(SERVERS.pop(), timeout=5)


def fake_command(fake_repo: Path, exit_after: float = 0, code: int = 0) -> list[str]:
    script = str(fake_repo / "fake_tritonserver.py")
    return [sys.executable, script, str(fake_repo), str(exit_after), str(code), f"--http-port={free_port()}"]


def run_serve(fake_repo: Path, exit_after: float = 0, code: int = 0, watch: float = 0) -> subprocess.Popen:
    command = fake_command(fake_repo, exit_after, code)
    script = textwrap.dedent(
        f"""
        import os, sys
        from mobilesamv2.runner import entrypoint
        sys.exit(entrypoint.run_server({command!r}, stub_watch_interval={watch}, environ=os.environ))
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    STARTED.append(process)
    return process


def server_pid(process: subprocess.Popen) -> int:
    line = process.stdout.readline()
    match = re.search(r"tritonserver pid (\d+)", line)
    assert match, line
    SERVERS.append(int(match[1]))
    return int(match[1])


def wait_for_stubs(pid: int, count: int = 3) -> list[procs.Stub]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        stubs = procs.stubs_of(pid)
        if len(stubs) == count:
            return stubs
        time.sleep(0.05)
    raise AssertionError(f"fake stubs did not start: {procs.stubs_of(pid)}")


def gone(pids: list[int]) -> bool:
    return all(procs.proc_info(p) is None or procs.proc_info(p).state == "Z" for p in pids)


def test_sigterm_is_forwarded_and_the_group_is_killed(fake_repo: Path) -> None:
    process = run_serve(fake_repo)
    pid = server_pid(process)
    stubs = wait_for_stubs(pid)
    assert {s.model for s in stubs} == {"object_discovery", "segment_everything"}
    assert all(procs.proc_info(s.pid).pgid == pid for s in stubs)  # the server leads its own group
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 0  # the server's own exit code
    out = process.stdout.read()
    assert "killed 3 processes left in tritonserver's group" in out, out
    assert gone([pid] + [s.pid for s in stubs]) and not procs.group_members(pid)


def test_sigint_is_forwarded_too(fake_repo: Path) -> None:
    process = run_serve(fake_repo)
    pid = server_pid(process)
    wait_for_stubs(pid)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=20) == 128 + signal.SIGINT  # the fake server dies of it (KeyboardInterrupt)
    assert not procs.group_members(pid)


def test_a_server_that_dies_passes_its_status_on_and_leaves_no_stubs(fake_repo: Path) -> None:
    process = run_serve(fake_repo, exit_after=1.5, code=7)
    pid = server_pid(process)
    stubs = wait_for_stubs(pid)
    assert process.wait(timeout=20) == 7
    assert gone([s.pid for s in stubs]) and not procs.group_members(pid)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "stopped"])
def test_a_lost_stub_stops_the_server_with_status_4(fake_repo: Path, sig: int) -> None:
    process = run_serve(fake_repo, watch=0.1)
    pid = server_pid(process)
    stubs = wait_for_stubs(pid)
    # the entrypoint counts its baseline once "ready": wait for it (a stub stopped earlier would not count)
    line = "-"
    while line and "serving; Python stub processes per model" not in line:
        line = process.stdout.readline()
    assert line, "the entrypoint ended before counting its stubs"
    victim = next(s for s in stubs if s.model == "segment_everything")
    os.kill(victim.pid, sig)
    assert process.wait(timeout=20) == 4
    out = process.stdout.read()
    assert "segment_everything 1/2" in out, out
    assert gone([pid] + [s.pid for s in stubs]) and not procs.group_members(pid)


def test_options_and_ready_url() -> None:
    command = ["tritonserver", "--http-port=9000", "--exit-timeout-secs", "12", "--http-address=0.0.0.0"]
    assert TritonProcess(command).exit_timeout_s == 12
    assert TritonProcess(["tritonserver"]).exit_timeout_s == 30
    assert ready_url(command) == "http://127.0.0.1:9000/v2/health/ready"
    assert ready_url(["tritonserver"]) == "http://127.0.0.1:8000/v2/health/ready"
    assert ready_url(["tritonserver", "--allow-http=false"]) is None
    assert exit_code(7 << 8) == 7
    assert exit_code(signal.SIGKILL) == 137


def test_stub_watch_interval_option() -> None:
    args, rest = entrypoint.parse_args(["--stub-watch-interval", "0", "--log-verbose=1"], {})
    assert args.stub_watch_interval == 0 and rest == ["--log-verbose=1"]
    args, _ = entrypoint.parse_args([], {"STUB_WATCH_INTERVAL": "2.5"})
    assert args.stub_watch_interval == 2.5


def test_the_server_gets_default_signal_handling_even_if_the_entrypoint_ignores_them(fake_repo: Path) -> None:
    """A process started with SIGINT ignored (a shell's background job) still forwards it, and tritonserver
    does not inherit the ignore."""
    original = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        command = fake_command(fake_repo)
        script = (
            "import os, sys\n"
            "from mobilesamv2.runner import entrypoint\n"
            f"sys.exit(entrypoint.run_server({command!r}, stub_watch_interval=0, environ=os.environ))\n"
        )
        process = subprocess.Popen(
            [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        STARTED.append(process)
    finally:
        signal.signal(signal.SIGINT, original)
    pid = server_pid(process)
    wait_for_stubs(pid)
    assert procs.proc_info(process.pid) is not None
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=20) == 128 + signal.SIGINT
    assert not procs.group_members(pid)
