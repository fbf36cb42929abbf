"""The embedding caches without Triton: the shared one (files in a RAM-backed directory) and the in-process
one, and the pipeline's use of them (a cached image is neither decoded nor encoded again)."""

from __future__ import annotations

import asyncio
import os
import time

import numpy as np
import pytest

from mobilesamv2.inside_triton.embedding_cache import SharedEmbeddingCache, cache_directory
from mobilesamv2.pipeline import MemoryEmbeddingCache, Models, Pipeline, SegmentRequest
from segment_everything_contract import Prompts, Settings

EMBEDDING = np.arange(256 * 64 * 64, dtype=np.float32).reshape(1, 256, 64, 64)
MiB = 2**20


def test_shared_cache_round_trip_between_instances(tmp_path):
    first = SharedEmbeddingCache(tmp_path / "c", 64 * MiB)
    second = SharedEmbeddingCache(tmp_path / "c", 64 * MiB)  # another model instance, another process
    assert first.get("file:abc") is None and first.misses == 1
    assert first.put("file:abc", EMBEDDING, (1080, 810)) is EMBEDDING
    hit = second.get("file:abc")
    assert hit is not None and hit.image_size == (1080, 810)
    np.testing.assert_array_equal(hit.embedding, EMBEDDING)
    assert second.hits == 1 and not list((tmp_path / "c").glob("*.tmp"))


def test_least_recently_used_entries_go_first(tmp_path):
    cache = SharedEmbeddingCache(tmp_path, 3 * EMBEDDING.nbytes + 1000)
    for i, key in enumerate(("a", "b", "c")):
        cache.put(key, EMBEDDING + i, (10, 10))
        os.utime(next(tmp_path.glob(f"{key}.*")), (1000 + i, 1000 + i))
    assert cache.get("a") is not None  # a is now the most recently used
    cache.put("d", EMBEDDING, (10, 10))
    assert cache.get("b") is None  # the oldest untouched entry was evicted
    assert all(cache.get(k) is not None for k in ("a", "c", "d"))


def test_the_cache_holds_what_the_decoder_takes(tmp_path):
    cache = SharedEmbeddingCache(
        tmp_path, 64 * MiB, to_host=lambda t: t["array"], wrap=lambda a: {"wrapped": a}
    )
    cache.put("k", {"array": EMBEDDING}, (5, 6))
    assert set(cache.get("k").embedding) == {"wrapped"}


def test_directories_are_per_build_and_stale_ones_are_pruned(tmp_path):
    a, b = cache_directory(tmp_path, "repo:fingerprint-1"), cache_directory(tmp_path, "repo:fingerprint-2")
    assert a != b and a.parent == b.parent
    old = SharedEmbeddingCache(a, 64 * MiB)
    old.put("k", EMBEDDING, (1, 1))
    past = time.time() - 7200
    os.utime(a, (past, past))
    SharedEmbeddingCache(b, 64 * MiB).prune_stale_siblings()
    assert not a.exists() and b.exists()


class CountingModels:
    def __init__(self) -> None:
        self.encoded = 0

    def models(self) -> Models:
        async def encode(canvas, size):
            self.encoded += 1
            return np.zeros((1, 256, 64, 64), np.float32)

        async def discover(letterboxed, conf):
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32)

        async def decode(embedding, coords, labels, multimask, mask_input):
            return np.full((len(coords), 1, 256, 256), 1.0, np.float32), np.ones((len(coords), 1), np.float32)

        return Models(encode, discover, decode)


@pytest.mark.parametrize("cache", [MemoryEmbeddingCache(64 * MiB), "shared"])
def test_a_cached_image_is_neither_decoded_nor_encoded_again(tmp_path, monkeypatch, cache):
    import cv2

    import mobilesamv2.pipeline as pipeline_module

    if cache == "shared":
        cache = SharedEmbeddingCache(tmp_path, 64 * MiB)
    counting = CountingModels()
    pipeline = Pipeline(counting.models(), embeddings=cache)
    data = cv2.imencode(".png", np.full((40, 60, 3), 90, np.uint8))[1].tobytes()
    prompts = {"boxes": np.array([[1, 1, 20, 20]], np.float32)}

    def request() -> SegmentRequest:
        return SegmentRequest.from_inputs({"image": np.array([data], dtype=np.object_), **prompts})

    first = asyncio.run(pipeline.run(request()))
    monkeypatch.setattr(pipeline_module, "decode_image", lambda *a, **k: pytest.fail("decoded again"))
    second = asyncio.run(pipeline.run(request()))
    assert counting.encoded == 1
    assert first.image_size == second.image_size == (40, 60)
    assert "encoder_cached" in second.timings and "encoder_cached" not in first.timings
    assert first.rles == second.rles


def test_segevery_uses_a_cached_embedding_but_still_discovers():
    counting = CountingModels()
    pipeline = Pipeline(counting.models(), embeddings=MemoryEmbeddingCache(64 * MiB), overlap=True)
    image = np.full((40, 60, 3), 90, np.uint8)
    asyncio.run(
        pipeline.run(SegmentRequest(image, Settings(), Prompts(boxes=np.array([[1, 1, 9, 9]], np.float32))))
    )
    asyncio.run(pipeline.run(SegmentRequest(image)))
    assert counting.encoded == 1
