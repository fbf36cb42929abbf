"""The allocator policy: heap tuning only in the processes whose allocations are bounded.

``glue.keep_large_blocks_in_heap`` is checked by its effect (glibc's ``mallinfo2``: a 64 MiB block is an
mmap'd chunk by default and a heap chunk once applied), in a fresh interpreter each time since it changes the
process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mobilesamv2.runner import local

REPO_ROOT = Path(__file__).resolve().parents[2]
REPOSITORY = REPO_ROOT / "model_repository"

PROBE = """
import ctypes, json, sys
from mobilesamv2.inside_triton.glue import keep_large_blocks_in_heap

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
applied = keep_large_blocks_in_heap() if sys.argv[1] == "apply" else False
before = libc.mallinfo2().hblkhd
block = bytearray(64 << 20)
mapped = libc.mallinfo2().hblkhd - before
del block
print(json.dumps({"applied": applied, "mapped": mapped}))
"""


def probe(mode: str, **env: str) -> dict:
    import os

    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    environ.pop("MOBILESAMV2_ALLOCATOR", None)
    environ.update(env)
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode],
        env=environ,
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_large_blocks_are_mapped_by_default_and_kept_in_the_heap_once_applied():
    assert probe("none") == {"applied": False, "mapped": pytest.approx(64 << 20, rel=0.01)}
    assert probe("apply") == {"applied": True, "mapped": 0}


@pytest.mark.parametrize("choice", ["glibc", "jemalloc", "tcmalloc"])
def test_an_explicit_allocator_choice_turns_the_tuning_off(choice):
    result = probe("apply", MOBILESAMV2_ALLOCATOR=choice)
    assert result["applied"] is False
    assert result["mapped"] >= 64 << 20


def model_parameters(model: str) -> dict[str, str]:
    """``key -> string_value`` of a model's config.pbtxt (parsed as Triton's ModelConfig)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    config = text_format.Parse((REPOSITORY / model / "config.pbtxt").read_text(), mc.ModelConfig())
    return {key: value.string_value for key, value in config.parameters.items()}


def test_only_the_bounded_onnx_runtime_stubs_tune_their_heap():
    tuned = {m.name for m in REPOSITORY.iterdir() if (m / "config.pbtxt").is_file()
             if model_parameters(m.name).get("malloc_keep_large_blocks") == "true"}  # fmt: skip
    # encoder: fixed 1024 canvas; decoders: prompts and points bounded by their input guards (max_dims)
    assert tuned == {"image_encoder", "prompt_decoder", "interactive_decoder"}
    for model in tuned:
        assert "max_dims" in model_parameters(model) or model == "image_encoder"


def test_the_launcher_sets_nothing_process_wide_by_default(tmp_path, monkeypatch):
    for key in ("MOBILESAMV2_ALLOCATOR", "MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "LD_PRELOAD"):
        monkeypatch.delenv(key, raising=False)
    env = local.TritonServer(tmp_path).environment()
    assert not [k for k in env if k.startswith("MALLOC_")]
    assert "LD_PRELOAD" not in env
    tuned = local.TritonServer(tmp_path, env={"MOBILESAMV2_ALLOCATOR": "glibc-tuned"}).environment()
    assert tuned["MALLOC_MMAP_MAX_"] == "0"
