"""What the GPU target keeps on the device and what it spends at start: logits of a request split into several
decoder calls stay tensors until the device postprocess, a SegEvery embedding is not copied into the
embedding cache, and the segment_everything model warms the device postprocess up in ``initialize``.
On the CPU, with torch tensors standing for device tensors."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from unittest import mock

import numpy as np
import pytest
import torch
from synthetic_logits import smooth_logits

from mobilesamv2.pipeline import (
    HostPostprocessor,
    MemoryEmbeddingCache,
    Models,
    Pipeline,
    SegmentRequest,
    select_mask_tokens,
)
from mobilesamv2.processing import device_masks
from mobilesamv2.processing.device_masks import TorchPostprocessor
from segment_everything_contract import Prompts, Settings

IMAGE = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)


class Recording(TorchPostprocessor):
    """The device postprocess, noting what reaches it and every copy of logits to the host."""

    def __init__(self) -> None:
        super().__init__()
        object.__setattr__(self, "seen", [])
        object.__setattr__(self, "host_copies", 0)

    def rles(self, logits, input_size, image_size):
        self.seen.append(logits)
        return super().rles(logits, input_size, image_size)

    def to_host(self, logits):
        object.__setattr__(self, "host_copies", self.host_copies + 1)
        return super().to_host(logits)


def tensor_models(calls: list[int]) -> Models:
    """A decoder that answers torch tensors, as the GPU's BLS glue hands them on (``logits_array``)."""
    logits = torch.from_numpy(smooth_logits(8, seed=3))

    async def encode(canvas, size):
        return np.zeros((1, 256, 64, 64), np.float32)

    async def discover(letterboxed, conf):
        raise AssertionError("SegAny runs no discovery")

    async def decode(embedding, coords, labels, multimask, mask_input):
        calls.append(len(coords))
        rows = torch.arange(len(coords)) % len(logits)
        tokens = 4 if multimask else 1
        answer = logits[rows][:, None].repeat(1, tokens, 1, 1) if multimask else logits[rows][:, None]
        ious = torch.linspace(0, 1, tokens).repeat(len(coords), 1)
        return select_mask_tokens(answer, ious.numpy(), multimask) if multimask else (answer, ious.numpy())

    return Models(encode, discover, decode)


@pytest.mark.parametrize(
    "prompts, multimask, cap, calls",
    [
        ({"boxes": np.tile(np.array([[4, 4, 40, 30]], np.float32), (20, 1))}, False, 8, [8, 8, 4]),
        (
            {"points": np.full((70, 1, 2), 12, np.float32), "point_labels": np.ones((70, 1), np.int32)},
            True,
            320,
            [64, 6],
        ),
    ],
    ids=[
        "boxes over the per-call cap, prompt decoder",
        "70 clicks, multimask, interactive decoder (64 a call)",
    ],
)
def test_a_request_split_into_several_decoder_calls_stays_on_the_device(prompts, multimask, cap, calls):
    """Above the per-call cap (``decoder_max_prompts_per_call``, 320 on the GPU; 64 for SAM's full decoder)
    the parts are joined where they are: the postprocess gets one tensor and nothing crosses to the host; the
    masks equal the host path's."""
    made: list[int] = []
    post = Recording()
    request = SegmentRequest(IMAGE, Settings(multimask=multimask), Prompts(**prompts))
    pipeline = Pipeline(tensor_models(made), postprocess=post, decoder_max_prompts_per_call=cap)
    result = asyncio.run(pipeline.run(request))
    assert made == calls
    [logits] = post.seen
    assert isinstance(logits, torch.Tensor) and len(logits) == sum(calls) * (3 if multimask else 1)
    assert post.host_copies == 0
    host = asyncio.run(
        Pipeline(tensor_models([]), postprocess=HostPostprocessor(), decoder_max_prompts_per_call=cap).run(
            request
        )
    )
    assert host.rles == result.rles


def test_joined_parts_keep_their_device_and_numpy_parts_go_to_the_host():
    parts = [torch.zeros(2, 256, 256), torch.ones(3, 256, 256)]
    joined = TorchPostprocessor().concatenate(parts)
    assert (
        isinstance(joined, torch.Tensor)
        and joined.shape == (5, 256, 256)
        and joined.device == parts[0].device
    )
    mixed = TorchPostprocessor().concatenate([np.zeros((1, 256, 256), np.float32), parts[1]])
    assert isinstance(mixed, np.ndarray) and mixed.shape == (4, 256, 256)
    assert HostPostprocessor().concatenate(parts).shape == (5, 256, 256)


def test_segevery_stores_its_embedding_only_where_asked_a_segany_one_always():
    """On a GPU (``cache_segevery`` false, the GPU config's ``embedding_cache_segevery``) a SegEvery
    embedding is not copied to the host for a click that may never come: encoding again costs milliseconds
    there. On the CPU a click after SegEvery on the same image reuses it. SegAny always keeps its own."""

    async def encode(canvas, size):
        return np.zeros((1, 256, 64, 64), np.float32)

    async def discover(letterboxed, conf):
        return np.array([[2, 2, 30, 30]], np.float32), np.array([0.9], np.float32), np.zeros(1, np.int32)

    async def decode(embedding, coords, labels, multimask, mask_input):
        return np.ones((len(coords), 1, 256, 256), np.float32), np.ones((len(coords), 1), np.float32)

    for cache_segevery in (False, True):
        for overlap in (True, False):
            cache = MemoryEmbeddingCache(64 * 2**20)
            pipeline = Pipeline(
                Models(encode, discover, decode),
                embeddings=cache,
                overlap=overlap,
                cache_segevery=cache_segevery,
            )
            result = asyncio.run(pipeline.run(SegmentRequest(IMAGE)))
            assert len(result) == 1 and "encoder" in result.timings
            assert len(cache) == int(cache_segevery)
    cache = MemoryEmbeddingCache(64 * 2**20)
    pipeline = Pipeline(Models(encode, discover, decode), embeddings=cache, cache_segevery=False)
    box = Prompts(boxes=np.array([[1, 1, 9, 9]], np.float32))
    asyncio.run(pipeline.run(SegmentRequest(IMAGE, Settings(), box)))
    assert len(cache) == 1


def test_warm_up_runs_the_device_postprocess_once_where_the_logits_will_be():
    device_masks._device_taps_cache.clear()
    assert TorchPostprocessor().warm_up() == (
        [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else ["cpu"]
    )
    assert device_masks._device_taps_cache  # the resize coefficients of a typical image are ready


def test_the_pipeline_model_warms_the_device_postprocess_up_in_initialize(committed_repository, monkeypatch):
    """torch's import and a CUDA context per instance cost seconds; the GPU target's pipeline pays them in
    initialize(), before Triton reports the model ready, not in its first request."""
    pb_utils = mock.MagicMock()
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb_utils)
    warmed = []
    monkeypatch.setattr(TorchPostprocessor, "warm_up", lambda self: warmed.append(self) or ["cuda:0"])
    path = committed_repository / "segment_everything" / "1" / "model.py"
    spec = importlib.util.spec_from_file_location("segment_everything_model_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = {
        "parameters": {
            "mask_postprocess": {"string_value": "device"},
            "embedding_cache_mb": {"string_value": "0"},
        }
    }
    args = {"model_config": json.dumps(config), "model_repository": str(path.parents[1])}
    model = module.TritonPythonModel()
    model.initialize(args)
    assert len(warmed) == 1 and model.pipeline.postprocess is warmed[0]
    logged = " ".join(str(c.args[0]) for c in pb_utils.Logger.log_info.call_args_list)
    assert "device postprocess ready on cuda:0" in logged
