"""The runner's stop on SIGTERM (the container entrypoint's and ``mobilesamv2-serve``'s serve loop): the
pipeline is told to drain first, tritonserver gets its SIGTERM once nothing is in flight, or after its exit
timeout when something stays in flight.

A fake tritonserver (a Python script) answers ``/v2/health/ready`` and ``/metrics``: 2 requests in flight
until the drain file named in its environment exists, then 0 after ``settle`` seconds (never with a negative
``settle``); on SIGTERM it prints what it saw and exits.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from mobilesamv2.runner.local import free_port
from mobilesamv2.runner.server import DRAIN_FILE_VAR

FAKE_SERVER = f"""
import http.server, os, signal, sys, threading, time
options = dict(a[2:].split("=", 1) for a in sys.argv[1:])
settle = float(options["settle"])
drain = os.environ["{DRAIN_FILE_VAR}"]
began = []


def in_flight():
    if not os.path.exists(drain):
        return 2
    began[:] = began or [time.monotonic()]
    return 0 if 0 <= settle <= time.monotonic() - began[0] else 2


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f'segevery_requests_in_flight{{{{model="segment_everything"}}}} {{in_flight()}}\\n'.encode()
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body if self.path == "/metrics" else b"")

    def log_message(self, *args):
        pass


for port in (options["http-port"], options["metrics-port"]):
    server = http.server.HTTPServer(("127.0.0.1", int(port)), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()


def stop(*_):
    waited = time.monotonic() - began[0] if began else -1
    print(f"SIGTERM drain_file={{os.path.exists(drain)}} after_drain_began={{waited:.2f}}", flush=True)
    sys.exit(0)


signal.signal(signal.SIGTERM, stop)
while True:
    time.sleep(0.05)
"""


@pytest.fixture()
def fake_server(tmp_path: Path) -> Path:
    script = tmp_path / "fake_tritonserver.py"
    script.write_text(FAKE_SERVER)
    return script


def run_entrypoint(script: Path, settle: float, exit_timeout: int) -> tuple[int, str, float]:
    """Start the entrypoint's server loop on the fake server, SIGTERM it once the server is ready; its exit
    status, its output and how long it took to stop."""
    http_port = free_port()
    command = [
        sys.executable,
        str(script),
        f"--http-port={http_port}",
        f"--metrics-port={free_port()}",
        f"--exit-timeout-secs={exit_timeout}",
        f"--settle={settle}",
    ]
    code = textwrap.dedent(
        f"""
        import os, sys
        from mobilesamv2.runner import entrypoint
        sys.exit(entrypoint.run_server({command!r}, stub_watch_interval=0, environ=os.environ))
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and process.poll() is None, "the fake server did not start"
                time.sleep(0.05)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        status = process.wait(timeout=exit_timeout + 15)
        return status, process.stdout.read(), time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_sigterm_drains_the_pipeline_before_triton_stops(fake_server: Path) -> None:
    status, out, took = run_entrypoint(fake_server, settle=0.5, exit_timeout=10)
    assert status == 0, out
    seen = re.search(r"SIGTERM drain_file=(\w+) after_drain_began=([\d.-]+)", out)
    assert seen, out
    assert seen[1] == "True"  # the pipeline was told to refuse new requests first
    assert float(seen[2]) >= 0.5  # and Triton's stop waited until the running requests were done
    assert took < 5


def test_a_drain_that_never_ends_stops_at_the_exit_timeout(fake_server: Path) -> None:
    status, out, took = run_entrypoint(fake_server, settle=-1, exit_timeout=1)
    assert status == 0, out
    seen = re.search(r"SIGTERM drain_file=(\w+) after_drain_began=([\d.-]+)", out)
    assert seen and seen[1] == "True", out
    assert 1 <= took < 1 + 5
