"""The Python environment the Triton Python models run in (``TritonServer(python_env=...)``,
``mobilesamv2-serve --python-env``, ``$MOBILESAMV2_SERVER_PYTHON_ENV``).

``scripts/test.sh`` runs the server-side integration tests a second time with the models served from
``work/container-venv`` (``scripts/container_env.sh``: the Docker image's Python 3.10 with only
``deploy/docker/requirements.txt`` and the package installed ``--no-deps``); the last test here checks that
those servers really run their models there.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import psutil
import pytest

from mobilesamv2.runner import local
from mobilesamv2.runner.local import PYTHON_ENV_VAR, PythonEnv, TritonServer

THIS_VERSION = f"{sys.version_info[0]}.{sys.version_info[1]}"


def test_a_folder_without_python_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"container_env\.sh"):
        PythonEnv.of(tmp_path)
    with pytest.raises(FileNotFoundError):
        TritonServer(tmp_path, python_env=tmp_path / "nothing")


def test_an_explicit_env_gets_its_own_stub_folder_and_goes_first_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(PYTHON_ENV_VAR, raising=False)
    default = TritonServer(tmp_path)
    assert default.backend_directory == local.DEFAULT_BACKEND_DIR.resolve()
    assert default.python_env.version == THIS_VERSION

    server = TritonServer(tmp_path, python_env=sys.prefix)
    assert server.python_env.version == THIS_VERSION
    assert server.backend_directory.name == f"backends-py{THIS_VERSION}"
    env = server.environment()
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.prefix).absolute() / "bin")
    assert "nvidia_pytriton.libs" in env["LD_LIBRARY_PATH"].split(os.pathsep)[0]

    monkeypatch.setenv(PYTHON_ENV_VAR, sys.prefix)  # what the test fixtures' servers pick up
    assert TritonServer(tmp_path).backend_directory == server.backend_directory


def test_the_backend_directory_holds_the_stub_of_the_requested_version(tmp_path: Path) -> None:
    local.assemble_backend_directory(tmp_path / "b", "3.10")
    stub = tmp_path / "b" / "python" / "triton_python_backend_stub"
    shipped = local.find_pytriton() / "tritonserver" / "python_backend_stubs" / "3.10" / stub.name
    assert stub.read_bytes() == shipped.read_bytes()
    with pytest.raises(RuntimeError, match=r"no Python backend stub for Python 2\.7"):
        local.assemble_backend_directory(tmp_path / "c", "2.7")


def _stubs(server: TritonServer) -> list[psutil.Process]:
    return [
        p
        for p in psutil.Process(server.pid).children(recursive=True)
        if "triton_python_backend_stub" in " ".join(p.cmdline())
    ]


@pytest.mark.skipif(
    not os.environ.get(PYTHON_ENV_VAR), reason=f"runs in scripts/test.sh's step with ${PYTHON_ENV_VAR} set"
)
def test_the_served_models_run_in_the_requested_environment(triton_server: TritonServer) -> None:
    wanted = PythonEnv.of(os.environ[PYTHON_ENV_VAR])
    stubs = _stubs(triton_server)
    models = {Path(p.cmdline()[1]).parent.parent.name for p in stubs}  # <repository>/<model>/1/model.py
    assert {"segment_everything", "object_discovery", "image_encoder", "prompt_decoder"} <= models
    for stub in stubs:
        assert Path(stub.exe()).parent.parent.name == f"backends-py{wanted.version}"
        libraries = {Path(m.path).name for m in stub.memory_maps() if "libpython" in m.path}
        assert any(n.startswith(f"libpython{wanted.version}.") for n in libraries), (stub.pid, libraries)
        assert str(wanted.bin_dir) == stub.environ()["PATH"].split(os.pathsep)[0]
