"""Fixtures for tests that start a real tritonserver (from the nvidia-pytriton wheel)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mobilesamv2.server.launcher import TritonServer


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
    for server in reversed(servers):
        server.stop()
