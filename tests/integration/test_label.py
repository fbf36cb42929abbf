"""``segment-everything label`` against the real server: a run killed with SIGKILL midway and started again
writes the same dataset file as an uninterrupted run, sends no finished image again, records the image that
fails, and shows its progress bar only on a terminal."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

pytestmark = pytest.mark.server

CLI = [sys.executable, "-m", "segment_everything_client.cli"]
GOOD_IMAGES = 6


@pytest.fixture(scope="module")
def folder(tmp_path_factory, sample_images) -> Path:
    """Six small JPEGs cut from the sample images, each with a random corner (so no earlier run of the suite
    left their embeddings in the server's cache: the first run below must be slow enough to be killed), and
    one file that is no image."""
    out = tmp_path_factory.mktemp("label-images")
    rng = np.random.default_rng(int.from_bytes(os.urandom(4), "little"))
    sources = [cv2.imread(str(p)) for p in sample_images]
    for i in range(GOOD_IMAGES):
        image = sources[i % len(sources)]
        h, w = image.shape[:2]
        y, x = (i * 97) % (h // 2), (i * 131) % (w // 2)
        crop = cv2.resize(image[y : y + h // 2, x : x + w // 2], (192, 144), interpolation=cv2.INTER_AREA)
        crop[:4, :4] = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        assert cv2.imwrite(str(out / f"img_{i:02d}.jpg"), crop)
    (out / "broken.jpg").write_bytes(b"\xff\xd8 this is not a JPEG")
    return out


def requests_served(server) -> int:
    """Requests the pipeline answered so far (successes and failures), from Triton's metrics."""
    with urllib.request.urlopen(f"http://{server.metrics_url}/metrics", timeout=10) as response:
        text = response.read().decode()
    pattern = r'nv_inference_request_(?:success|failure)\{[^}]*model="segment_everything"[^}]*\} (\d+)'
    return sum(int(v) for v in re.findall(pattern, text))


def label_command(server, folder: Path, out: Path, *extra: str) -> list[str]:
    # One request at a time: the image encoder then never batches two images (its dynamic batching), whose
    # embeddings differ in the last bits from each one encoded alone; so every run computes the same numbers.
    options = ["--url", server.grpc_url, "--max-prompts", "4", "--concurrency", "1", *extra]
    return [*CLI, "label", str(folder), "--out", str(out), *options]


def run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)


def test_killed_run_resumes_to_the_uninterrupted_result(triton_server, folder, tmp_path):
    resumed, whole = tmp_path / "resumed.json", tmp_path / "whole.json"
    journal = tmp_path / "resumed.json.journal"
    served_before = requests_served(triton_server)

    # one request at a time, killed once two images are in the journal
    proc = subprocess.Popen(
        label_command(triton_server, folder, resumed),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists() and journal.read_bytes().count(b"\n") >= 3:  # header + 2 images
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.kill()
    proc.wait(timeout=30)
    assert not resumed.exists()  # the dataset is written only once complete
    lines = journal.read_bytes().split(b"\n")
    finished = [json.loads(line) for line in lines[1:] if line]  # the complete lines are valid JSON
    assert 2 <= len(finished) < GOOD_IMAGES + 1
    with journal.open("ab") as f:  # a kill in the middle of a write leaves a line cut short
        f.write(b'{"index": 5, "height": 14')

    again = run(label_command(triton_server, folder, resumed))
    assert again.returncode == 1, again.stderr  # 1: an image failed
    assert f"{len(finished)} from an earlier run" in again.stdout
    assert f"{GOOD_IMAGES + 1 - len(finished)} sent" in again.stdout
    assert not journal.exists()
    # every image reached the server once, finished ones were not sent again (at most the one in flight
    # at the kill was answered to nobody and sent again)
    assert requests_served(triton_server) - served_before <= GOOD_IMAGES + 1 + 1

    # an uninterrupted run, with its stdout on a terminal: the progress bar is drawn on stderr
    leader, follower = pty.openpty()
    try:
        whole_run = subprocess.run(
            label_command(triton_server, folder, whole),
            check=False,
            stdout=follower,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
        )
    finally:
        os.close(follower)
        os.close(leader)
    assert whole_run.returncode == 1
    assert "img/s" in whole_run.stderr and "masks" in whole_run.stderr
    assert "img/s" not in again.stderr  # not a terminal: quiet

    assert resumed.read_bytes() == whole.read_bytes()
    dataset = json.loads(resumed.read_text())
    names = sorted(p.name for p in folder.iterdir())
    assert [image["file_name"] for image in dataset["images"]] == [n for n in names if n != "broken.jpg"]
    assert [f["file_name"] for f in dataset["failures"]] == ["broken.jpg"]
    assert (
        dataset["failures"][0]["image_id"] == names.index("broken.jpg") + 1
        and dataset["failures"][0]["reason"]
    )
    assert [a["id"] for a in dataset["annotations"]] == list(range(1, len(dataset["annotations"]) + 1))
    assert dataset["annotations"], "no masks at all"
    keys = {"segmentation", "bbox", "area", "score", "predicted_iou", "stability_score", "image_id"}
    assert all(keys <= set(a) for a in dataset["annotations"])

    # started again once complete: nothing to do, nothing sent
    served = requests_served(triton_server)
    done = run(label_command(triton_server, folder, resumed))
    assert done.returncode == 1 and " 0 sent" in done.stdout
    assert requests_served(triton_server) == served
