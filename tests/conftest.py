"""Shared fixtures: official-format random-weight checkpoints, a built model repository, a real tritonserver.

Everything heavy is made once per session under ``work/test-cache`` (gitignored) and reused by later runs when
the inputs are unchanged (the build's fingerprint check), so a second ``pytest`` run starts in seconds.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from triton_calls import RawInfer  # tests/ is on sys.path (pytest's rootdir conftest)

from mobilesamv2.runner.local import TritonServer

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE = REPO_ROOT / "work" / "test-cache"
if str(REPO_ROOT) not in sys.path:  # benchmarks/ and loadtest/ live at the repository root, not installed
    sys.path.insert(0, str(REPO_ROOT))

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "False")
os.environ.setdefault("YOLO_CONFIG_DIR", str(REPO_ROOT / "work" / "ultralytics"))


def read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="session")
def sample_images() -> list[Path]:
    from mobilesamv2.assets import sample_images as images

    return images()


@pytest.fixture(scope="session")
def bus_rgb(sample_images) -> np.ndarray:
    return read_rgb(next(p for p in sample_images if p.name == "bus.jpg"))


@pytest.fixture(scope="session")
def fake_weights() -> Path:
    """Seeded random weights for all five official files (ViT-H at depth 2)."""
    from mobilesamv2.fake_checkpoints import FILENAMES, write_all

    out = CACHE / "weights"
    if not all((out / name).is_file() for name in FILENAMES.values()):
        write_all(out)
    return out


@pytest.fixture(scope="session")
def built_repository(fake_weights) -> Path:
    """The model repository built from the fake weights with the default encoder (EfficientViT-L2)."""
    from mobilesamv2.export.cli import build_repository

    out = CACHE / "model_repository"
    # parity at 1 and 7 prompts (the dynamic prompt axis); at 32, on a real image's embedding, the served
    # decoder meets SAM's in tests/test_fast_decoder.py, which saves the build ~15 s of PyTorch decoding
    build_repository(fake_weights, "fake", "efficientvit_l2", out, decoder_counts=(1, 7))
    return out


@pytest.fixture(scope="session")
def committed_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``model_repository/`` as committed (configs and Python models), without whatever a build wrote into the
    working tree: a test must not depend on what an earlier command (``scripts/demo.sh``) built."""
    from mobilesamv2.export.cli import copy_template

    out = tmp_path_factory.mktemp("committed") / "model_repository"
    copy_template(out)
    return out


@pytest.fixture(scope="session")
def reference_pipeline(fake_weights):
    from mobilesamv2.reference import ReferencePipeline

    return ReferencePipeline.from_checkpoints(fake_weights, encoder="efficientvit_l2")


@pytest.fixture(scope="session")
def triton_server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., TritonServer]]:
    """``start(model_repository, **TritonServer kwargs)`` -> a ready server; all are stopped at session end.

    Defaults keep the 2-core CI light: one ORT/OpenMP thread per model and the log in a temporary folder.
    """
    servers: list[TritonServer] = []

    def start(model_repository: str | Path, **kwargs: object) -> TritonServer:
        kwargs.setdefault("log_path", tmp_path_factory.mktemp("triton-log") / "tritonserver.log")
        kwargs.setdefault("env", {"OMP_NUM_THREADS": "1"})
        kwargs.setdefault("startup_timeout", 120.0)
        server = TritonServer(model_repository, **kwargs)  # type: ignore[arg-type]
        servers.append(server)
        return server.start()

    yield start
    stop_all(servers)


def stop_all(servers: list[TritonServer]) -> None:
    """Stop servers side by side: each SIGTERM drains and unloads its models for seconds, mostly waiting."""
    threads = [threading.Thread(target=server.stop) for server in servers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


@pytest.fixture(scope="session")
def triton_server(built_repository, triton_server_factory):
    """A real tritonserver (pip-installed 2.51) serving the built repository on free ports, shared by the
    session (stopped with the factory's servers)."""
    return triton_server_factory(
        built_repository,
        log_path=REPO_ROOT / "work" / "logs" / "pytest-tritonserver.log",
        startup_timeout=300,
        env={},
    )


@pytest.fixture(scope="session")
def bus_path(sample_images) -> Path:
    return next(p for p in sample_images if p.name == "bus.jpg")


@pytest.fixture(scope="session")
def bus_bytes(bus_path) -> bytes:
    return bus_path.read_bytes()


@pytest.fixture(scope="session")
def raw_infer() -> RawInfer:
    """Raw tritonclient calls (see ``tests/triton_calls.py``)."""
    return RawInfer()


#: Fixtures that export ONNX models or start tritonserver: every test using one is a "server" test, so that
#: ``pytest -m "not server"`` (the fast suite) never exports a model.
HEAVY_FIXTURES = {"built_repository", "triton_server", "triton_server_factory"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HEAVY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.server)
