"""Memory the served repository needs besides its models' own: Triton's CUDA and pinned memory pools and the
size of ``/dev/shm``, from the pipeline's configuration (``segment_everything/config.pbtxt``).

CUDA memory pool (``--cuda-memory-pool-byte-size``, 64 MB per GPU by default). Triton's Python backend passes
GPU tensors between the server and a Python model's stub through it: on a GPU the pipeline receives the
decoder's logits on the device (the device postprocess) and hands the encoder's embedding on to the decoder.
One answer of the prompt decoder at 320 prompts is 84 MB, more than the default pool: python_backend then
allocates with ``cudaMalloc`` and shares the memory by CUDA IPC, and the ``cudaFree`` that follows waits for
the whole device, so with several pipeline instances every request waits for the others. The pool is sized
for every pipeline instance holding the largest decoder answer (the prompt decoder's
``decoder_max_prompts_per_call`` single masks, or the interactive decoder's
``INTERACTIVE_DECODER_MAX_PROMPTS`` prompts of four masks) and an embedding at the same time.

Pinned memory pool (``--pinned-memory-pool-byte-size``, 256 MB by default): Triton's host buffers for copies
between host and device; the same size, so that each instance's largest answer fits when it is copied to the
host (``output_format=logits``, or a stub that cannot map CUDA memory).

``/dev/shm``: every tensor between Triton and a Python stub passes through it. Per pipeline instance at once:
the request's image (encoded bytes or raw pixels, up to the limits), its response (up to
``max_response_bytes``), the decoder's logits when they are post-processed on the host, and the embedding;
plus the embedding cache when it lives there (``embedding_cache_dir`` empty). The entrypoint warns when
``/dev/shm`` is smaller; ``docker run --shm-size`` and the Helm chart's ``server.shmSize`` set it.

Standard library and the wire contract only: the container's entrypoint (Python 3.10) imports this.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import segment_everything_contract as contract

from ..export.tensorrt import config_string_parameters

MiB = 2**20
LOW_RES_MASK_BYTES = 256 * 256 * 4
EMBEDDING_BYTES = 256 * 64 * 64 * 4
INTERACTIVE_MASKS_PER_PROMPT = 4  # the interactive decoder answers all four mask tokens
POOL_GRANULE = 64 * MiB
DEFAULT_MAX_PROMPTS_PER_CALL = 320
DEFAULT_INSTANCES = 1
DEFAULT_EMBEDDING_CACHE_MB = 256
_INSTANCE_COUNT = re.compile(r"instance_group\s*:?\s*\[?\s*\{[^}]*?\bcount\s*:\s*(\d+)")


def _round_up(value: int, granule: int) -> int:
    return -(-value // granule) * granule


@dataclass(frozen=True)
class PipelineMemory:
    """What one pipeline instance may hold at once, and how many there are."""

    instances: int = DEFAULT_INSTANCES
    max_prompts_per_call: int = DEFAULT_MAX_PROMPTS_PER_CALL
    limits: contract.Limits = contract.HARD_LIMITS
    host_postprocess: bool = True
    embedding_cache_bytes: int = DEFAULT_EMBEDDING_CACHE_MB * MiB  # counted in /dev/shm (0: off or elsewhere)

    @classmethod
    def from_config(cls, config_text: str) -> PipelineMemory:
        """From ``segment_everything``'s ``config.pbtxt`` (hand-written or generated; absent settings take
        the defaults the pipeline takes)."""
        params = config_string_parameters(config_text)
        count = _INSTANCE_COUNT.search(config_text)
        cache_mb = int(params.get("embedding_cache_mb") or DEFAULT_EMBEDDING_CACHE_MB)
        cache_dir = (params.get("embedding_cache_dir") or "").strip()
        in_shm = not cache_dir or os.path.abspath(cache_dir).startswith("/dev/shm")
        return cls(
            instances=int(count.group(1)) if count else DEFAULT_INSTANCES,
            max_prompts_per_call=int(
                params.get("decoder_max_prompts_per_call") or DEFAULT_MAX_PROMPTS_PER_CALL
            ),
            limits=contract.Limits.from_parameters(params),
            host_postprocess=(params.get("mask_postprocess") or "host") == "host",
            embedding_cache_bytes=max(cache_mb, 0) * MiB if in_shm else 0,
        )

    @property
    def largest_decoder_answer(self) -> int:
        prompt_decoder = self.max_prompts_per_call * LOW_RES_MASK_BYTES
        interactive = (
            min(self.max_prompts_per_call, contract.INTERACTIVE_DECODER_MAX_PROMPTS)
            * INTERACTIVE_MASKS_PER_PROMPT
            * LOW_RES_MASK_BYTES
        )
        return max(prompt_decoder, interactive)

    @property
    def largest_image(self) -> int:
        """An encoded file, or raw RGB pixels, at the limits."""
        return max(self.limits.max_image_bytes, 3 * self.limits.max_image_pixels)

    def cuda_pool_bytes(self) -> int:
        """Triton's CUDA memory pool per GPU (see the module docstring), in whole 64 MiB."""
        return _round_up(self.instances * (self.largest_decoder_answer + EMBEDDING_BYTES), POOL_GRANULE)

    def shm_bytes(self) -> int:
        """The most the pipeline may hold in ``/dev/shm`` at once (see the module docstring)."""
        per_instance = self.largest_image + self.limits.max_response_bytes + EMBEDDING_BYTES
        if self.host_postprocess:
            per_instance += self.largest_decoder_answer
        return self.instances * per_instance + self.embedding_cache_bytes

    def server_args(self, gpu_count: int) -> list[str]:
        """tritonserver's pool options: a CUDA pool per GPU the server sees (ids 0..n-1), the pinned pool."""
        pool = self.cuda_pool_bytes()
        return [
            *(f"--cuda-memory-pool-byte-size={gpu}:{pool}" for gpu in range(gpu_count)),
            f"--pinned-memory-pool-byte-size={pool}",
        ]


def shm_size(path: str = "/dev/shm") -> int | None:
    """The size of the file system at ``path`` in bytes (None when there is none)."""
    try:
        stat = os.statvfs(path)
    except OSError:
        return None
    return stat.f_blocks * stat.f_frsize


def gib(value: int) -> str:
    return f"{value / 2**30:.1f} GiB"


def shm_warning(needed: int, available: int | None, memory: PipelineMemory) -> str | None:
    """One line when ``/dev/shm`` is smaller than the pipeline may need, else None."""
    if available is None or available >= needed:
        return None
    return (
        f"/dev/shm is {gib(available)}, the pipeline may hold up to {gib(needed)} there "
        f"({memory.instances} instances with an image and a response each at the limits, and the embedding "
        "cache): requests may fail with shared-memory errors. Raise it: docker run --shm-size, or the Helm "
        "chart's server.shmSize"
    )
