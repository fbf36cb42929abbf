"""The health probe (``python -m mobilesamv2.runner.probe``): its verdicts against a fake server that
answers, refuses, fails, hangs or lies, and one real run against tritonserver (under the models' Python
environment when ``$MOBILESAMV2_SERVER_PYTHON_ENV`` names one, as the container's HEALTHCHECK runs it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mobilesamv2.runner import probe
from mobilesamv2.runner.local import PYTHON_ENV_VAR, REPO_ROOT, PythonEnv, TritonServer


def _answer(body: dict) -> dict:
    """A correct answer for the probe's request ``body``."""
    names = {i["name"] for i in body["inputs"]}
    masks = 3 if "multimask" in names else 1
    data = {
        "boxes": [1.0, 2.0, 3.0, 4.0] * masks,
        "iou_predictions": [0.5] * masks,
        "prompt_index": [0] * masks,
        "image_size": [probe.HEIGHT, probe.WIDTH],
    }
    return {"outputs": [{"name": n, "data": v} for n, v in data.items()]}


Behaviour = Callable[[dict], tuple[int, dict]]


@pytest.fixture()
def fake(request) -> Iterator[Callable[[Behaviour], str]]:
    servers: list[ThreadingHTTPServer] = []
    seen: list[dict] = []

    def start(behaviour: Behaviour) -> str:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                seen.append({"path": self.path, "body": body, "headers": dict(self.headers)})
                status, answer = behaviour(body)
                payload = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        # a short poll: shutdown() waits for serve_forever's next look at its flag
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        servers.append(server)
        return f"127.0.0.1:{server.server_address[1]}"

    start.seen = seen  # type: ignore[attr-defined]
    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_every_request_answered_right_is_ok(fake) -> None:
    url = fake(lambda body: (200, _answer(body)))
    result = probe.Prober(url, timeout=5).run()
    assert result.ok, result.line()
    requests = [s["body"] for s in fake.seen]
    assert len(requests) == 3 and all(s["path"] == "/v2/models/segment_everything/infer" for s in fake.seen)
    inputs = [{i["name"] for i in r["inputs"]} for r in requests]
    assert inputs == [
        {"image_raw", "boxes"},
        {"image_raw", "points", "point_labels", "multimask"},
        {"image_raw", "max_prompts"},
    ]
    for r in requests:
        assert r["parameters"]["priority"] == 1 and 0 < r["parameters"]["timeout"] <= 5_000_000
    images = [next(i for i in r["inputs"] if i["name"] == "image_raw")["data"] for r in requests]
    assert images[0] == images[1] == images[2]  # one image per probe, through the cache after the first
    assert probe.Prober(url, timeout=5).run().ok
    assert fake.seen[3]["body"]["inputs"][0]["data"] != images[0]  # a fresh image for every probe


def test_no_interactive_skips_the_multimask_request(fake) -> None:
    url = fake(lambda body: (200, _answer(body)))
    assert probe.Prober(url, timeout=5, interactive=False, headers={"X-Key": "k"}).run().ok
    assert len(fake.seen) == 2 and fake.seen[0]["headers"]["X-Key"] == "k"


def test_a_full_queue_is_overloaded_not_failed(fake) -> None:
    url = fake(lambda body: (503, {"error": "Exceeds maximum queue size"}))
    result = probe.Prober(url, timeout=5).run()
    assert result.overloaded and "Exceeds maximum queue size" in result.message


def test_a_model_error_fails_with_the_reason(fake) -> None:
    url = fake(lambda body: (500, {"error": "Stub process 'image_encoder_0_0' is not healthy."}))
    result = probe.Prober(url, timeout=5).run()
    assert result.code == probe.FAILED and "not healthy" in result.message and "SegAny box" in result.message


def test_a_hang_fails_at_the_deadline(fake) -> None:
    def hang(body: dict) -> tuple[int, dict]:
        time.sleep(3)
        return 200, _answer(body)

    url = fake(hang)
    started = time.monotonic()
    result = probe.Prober(url, timeout=1).run()
    assert result.code == probe.FAILED and "deadline" in result.message
    assert time.monotonic() - started < 2


@pytest.mark.parametrize(
    "lie, reason",
    [
        (lambda a: a["outputs"].__setitem__(3, {"name": "image_size", "data": [1, 1]}), "image_size"),
        (lambda a: a["outputs"].__setitem__(2, {"name": "prompt_index", "data": []}), "0 masks"),
        (lambda a: a["outputs"].pop(1), "outputs missing"),
        (lambda a: a["outputs"].__setitem__(1, {"name": "iou_predictions", "data": ["NaN"]}), "non-finite"),
    ],
)
def test_a_wrong_success_fails(fake, lie, reason) -> None:
    def lying(body: dict) -> tuple[int, dict]:
        answer = _answer(body)
        lie(answer)
        return 200, answer

    result = probe.Prober(fake(lying), timeout=5).run()
    assert result.code == probe.FAILED and reason in result.message, result.message


def test_unreachable_fails() -> None:
    result = probe.Prober("127.0.0.1:9", timeout=2).run()
    assert result.code == probe.FAILED and "unreachable" in result.message


def test_cli_exit_codes_and_liveness_state(fake, tmp_path: Path, capsys) -> None:
    full = fake(lambda body: (503, {"error": "Exceeds maximum queue size"}))
    assert probe.main(["--url", full, "--timeout", "5"]) == probe.OVERLOADED
    state = tmp_path / "state"
    live = [
        "--url",
        full,
        "--timeout",
        "5",
        "--overloaded-ok",
        "--max-overloaded",
        "3",
        "--state-file",
        str(state),
    ]
    assert [probe.main(live) for _ in range(4)] == [0, 0, probe.FAILED, probe.FAILED]
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("OVERLOADED") and out[1].endswith("(alive)")
    assert "3 probes in a row" in out[3]
    good = fake(lambda body: (200, _answer(body)))
    assert probe.main(["--url", good, "--overloaded-ok", "--state-file", str(state)]) == 0
    assert state.read_text().strip() == "0"  # a success resets the count
    assert capsys.readouterr().out.startswith("ok: 3 requests")


def test_probe_of_the_real_server(triton_server: TritonServer) -> None:
    """The module as the HEALTHCHECK runs it, under the models' Python when one is configured."""
    env_dir = os.environ.get(PYTHON_ENV_VAR)
    python = str(PythonEnv.of(env_dir).bin_dir / "python") if env_dir else sys.executable
    result = subprocess.run(
        [python, "-I", "-m", "mobilesamv2.runner.probe", "--url", triton_server.http_url, "--timeout", "60"],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        cwd=REPO_ROOT if not env_dir else "/",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ok: 3 requests through every model")
