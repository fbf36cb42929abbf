"""Every ``docker run`` the project shows gives the container a /dev/shm that holds what the GPU repository's
pipeline may put there (mobilesamv2/runner/memory.py: its instances with an image and a response each at the
limits, and the embedding cache); Docker's default of 64 MB does not."""

from __future__ import annotations

import re
from pathlib import Path

from mobilesamv2.export.gpu import gpu_model_config
from mobilesamv2.runner.memory import PipelineMemory

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [
    REPO_ROOT / "Dockerfile",
    REPO_ROOT / "README.md",
    *sorted((REPO_ROOT / "docs").glob("*.md")),
    *sorted((REPO_ROOT / "deploy").rglob("*.md")),
]
UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30}  # docker's --shm-size units are binary


def docker_run_commands(text: str) -> list[str]:
    """``docker run`` commands with their backslash continuations joined (comment markers dropped)."""
    lines = [re.sub(r"^\s*#\s?", "", line) for line in text.splitlines()]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    return [line.strip() for line in joined.splitlines() if re.match(r"\s*docker run\b", line)]


def test_every_docker_run_sets_a_large_enough_shm_size(committed_repository):
    pipeline = (committed_repository / "segment_everything" / "config.pbtxt").read_text()
    needed = PipelineMemory.from_config(gpu_model_config(pipeline)).shm_bytes()
    commands = {str(path.relative_to(REPO_ROOT)): docker_run_commands(path.read_text()) for path in DOCUMENTS}
    assert commands["Dockerfile"] and commands["README.md"] and commands["docs/deploy.md"]
    for name, found in commands.items():
        for command in found:
            size = re.search(r"--shm-size[= ](\d+)([bkmg]?)\b", command, re.IGNORECASE)
            assert size, f"{name}: {command}"
            assert int(size.group(1)) * UNITS[size.group(2).lower()] >= needed, f"{name}: {command}"
