"""The server's memory outside its models (mobilesamv2/runner/memory.py): Triton's CUDA and pinned pools and
/dev/shm, sized from the pipeline's configuration; the chart's /dev/shm holds it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

import segment_everything_contract as contract
from mobilesamv2.export.gpu import BLS_INSTANCES, gpu_model_config
from mobilesamv2.runner.memory import MiB, PipelineMemory, shm_warning

REPO_ROOT = Path(__file__).resolve().parents[2]
LOGITS_320 = 320 * 256 * 256 * 4  # one answer of the prompt decoder at 320 prompts: 84 MB


@pytest.fixture(scope="module")
def configs(committed_repository) -> dict[str, PipelineMemory]:
    cpu = (committed_repository / "segment_everything" / "config.pbtxt").read_text()
    return {"cpu": PipelineMemory.from_config(cpu), "gpu": PipelineMemory.from_config(gpu_model_config(cpu))}


def test_the_pipeline_settings_are_read_from_either_config(configs):
    cpu, gpu = configs["cpu"], configs["gpu"]
    assert (cpu.instances, cpu.max_prompts_per_call, cpu.host_postprocess) == (2, 320, True)
    assert (gpu.instances, gpu.max_prompts_per_call, gpu.host_postprocess) == (BLS_INSTANCES, 320, False)
    assert cpu.limits == gpu.limits == contract.HARD_LIMITS  # empty parameters: the contract's
    assert cpu.embedding_cache_bytes == 256 * MiB  # in /dev/shm unless embedding_cache_dir says elsewhere
    elsewhere = PipelineMemory.from_config(
        'parameters [ { key: "embedding_cache_dir", value: { string_value: "/var/cache/e" } },\n'
        '  { key: "max_response_bytes", value: { string_value: "1000000" } } ]\n'
        "instance_group [ { count: 3, kind: KIND_CPU } ]"
    )
    assert (elsewhere.embedding_cache_bytes, elsewhere.instances, elsewhere.limits.max_response_bytes) == (
        0,
        3,
        1_000_000,
    )


def test_the_cuda_pool_holds_the_largest_decoder_answer_of_every_instance(configs):
    gpu = configs["gpu"]
    pool = gpu.cuda_pool_bytes()
    assert pool >= gpu.instances * LOGITS_320 and pool > 64 * MiB  # Triton's default: 64 MB
    assert pool % (64 * MiB) == 0 and pool < gpu.instances * LOGITS_320 + 256 * MiB
    interactive = PipelineMemory(instances=1, max_prompts_per_call=64)  # 64 clicks x 4 masks > 64 masks
    assert interactive.largest_decoder_answer == 64 * 4 * 256 * 256 * 4
    assert gpu.server_args(2) == [
        f"--cuda-memory-pool-byte-size=0:{pool}",
        f"--cuda-memory-pool-byte-size=1:{pool}",
        f"--pinned-memory-pool-byte-size={pool}",
    ]


def test_dev_shm_need_follows_instances_limits_and_where_masks_are_made(configs):
    cpu, gpu = configs["cpu"], configs["gpu"]
    image = 3 * contract.HARD_LIMITS.max_image_pixels  # raw RGB at the limit, larger than an encoded file
    per_instance = image + contract.HARD_LIMITS.max_response_bytes + 256 * 64 * 64 * 4
    assert gpu.shm_bytes() == gpu.instances * per_instance + 256 * MiB  # device postprocess: no logits there
    assert cpu.shm_bytes() == cpu.instances * (per_instance + LOGITS_320) + 256 * MiB
    assert gpu.shm_bytes() > 2 * 2**30  # more than the 2 GiB sized for the CPU's two instances


def test_the_charts_dev_shm_holds_what_the_gpu_configuration_needs(configs):
    """The GPU repository's four pipeline instances, each with an image and a response at the limits, and
    the embedding cache (every `docker run` shown: tests/deploy/test_shm_size.py)."""
    values = yaml.safe_load(
        (REPO_ROOT / "deploy" / "helm" / "segment-everything" / "values.yaml").read_text()
    )
    number, unit = re.fullmatch(r"(\d+)(Gi|Mi)", values["server"]["shmSize"]).groups()
    assert int(number) * {"Gi": 2**30, "Mi": 2**20}[unit] >= configs["gpu"].shm_bytes()


def test_a_small_dev_shm_is_reported_in_one_line(configs):
    gpu = configs["gpu"]
    line = shm_warning(gpu.shm_bytes(), 64 * MiB, gpu)
    assert line.startswith("/dev/shm is 0.1 GiB, the pipeline may hold up to 3.0 GiB there (4 instances")
    assert "\n" not in line and "--shm-size" in line
    assert shm_warning(gpu.shm_bytes(), 8 * 2**30, gpu) is None and shm_warning(1, None, gpu) is None
