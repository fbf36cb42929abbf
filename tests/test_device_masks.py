"""TorchPostprocessor (mask post-processing where the logits are) against the host path, on the CPU.

The device path reproduces OpenCV's own INTER_LINEAR code path bit for bit, so with IPP off
(``cv2.ipp.setUseIPP(False)``) its logits, masks and RLE strings equal HostPostprocessor's exactly, on smooth
and on noise logits alike. opencv-python's default also routes 1-, 3- and 4-channel resizes (the host's usual
chunks) through Intel IPP, whose coefficients differ slightly: against that default the masks differ in a few
pixels along the outlines, which the ``ipp`` tests measure and bound (run with ``-s`` to see the counts).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from synthetic_logits import noise_logits, smooth_logits

from mobilesamv2.pipeline import HostPostprocessor, Models, Pipeline, SegmentRequest
from mobilesamv2.processing.device_masks import (
    TorchPostprocessor,
    linear_taps,
    run_lengths,
    upsample_transposed,
)
from mobilesamv2.processing.image import encoder_input_size
from mobilesamv2.processing.masks import iter_upsampled_transposed
from segment_everything_contract import Prompts, Settings
from segment_everything_contract import rle as rle_codec

HOST = HostPostprocessor()
DEVICE = TorchPostprocessor()

#: (h, w): upscaling, big downscaling, the bus image, odd sizes, extreme aspects, an exact 2x downscale
SIZES = [(300, 200), (4000, 3000), (1080, 810), (1023, 767), (100, 3000), (3000, 100), (512, 384)]


@pytest.fixture
def opencv_own_path():
    """cv2.resize on OpenCV's own code for every channel count (IPP off), restored afterwards."""
    before = cv2.ipp.useIPP()
    cv2.ipp.setUseIPP(False)
    yield
    cv2.ipp.setUseIPP(before)


@pytest.fixture
def opencv_default():
    """opencv-python as shipped (IPP on where the build has it), whatever a previous test left."""
    before = cv2.ipp.useIPP()
    cv2.ipp.setUseIPP(True)
    yield
    cv2.ipp.setUseIPP(before)


# ------------------------------------------------------------------------------------------------ logits


def count(size: tuple[int, int]) -> int:
    return 3 if size[0] * size[1] > 5e6 else 6  # 6 = host chunks of 4 + 2: both of OpenCV's paths


def decode_all(rles: list[dict]) -> np.ndarray:
    return np.stack([rle_codec.decode(r) for r in rles])


def per_mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    inter = (a & b).reshape(len(a), -1).sum(1)
    union = (a | b).reshape(len(a), -1).sum(1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


# ----------------------------------------------------------------------------------- exactness, bit for bit


@pytest.mark.parametrize("channels", [1, 2, 3, 5])
@pytest.mark.parametrize("size", [(1080, 810), (1023, 767), (300, 200), (100, 3000)])
def test_logits_are_opencvs_bit_for_bit(opencv_own_path, size, channels):
    """Full-resolution float logits equal the host's, whatever the number of masks per OpenCV call."""
    logits = noise_logits(channels, seed=channels)
    input_size = encoder_input_size(*size)
    per_mask = max(size[0] * size[1], 1024**2) * 4
    (host,) = iter_upsampled_transposed(logits, input_size, size, chunk_bytes=channels * per_mask)
    got = upsample_transposed(torch.from_numpy(logits), input_size, size).numpy()
    assert got.shape == host.shape == (size[1], size[0], channels)
    assert np.array_equal(got.view(np.uint32), host.view(np.uint32))


def test_taps_are_opencvs_on_a_single_axis(opencv_own_path):
    rng = np.random.default_rng(0)
    for src, dst in [(256, 1024), (1024, 1080), (768, 810), (1024, 100), (7, 3), (3, 7), (5, 5)]:
        row = rng.standard_normal((1, src)).astype(np.float32)
        i0, i1, w0, w1 = linear_taps(src, dst, clamp_weights=True)
        expected = cv2.resize(row, (dst, 1), interpolation=cv2.INTER_LINEAR)[0]
        assert np.array_equal(row[0, i0] * w0 + row[0, i1] * w1, expected), (src, dst)
        column = row.T.copy()
        i0, i1, w0, w1 = linear_taps(src, dst, clamp_weights=False)
        expected = cv2.resize(column, (1, dst), interpolation=cv2.INTER_LINEAR)[:, 0]
        assert np.array_equal(column[i0, 0] * w0 + column[i1, 0] * w1, expected), (src, dst)


@pytest.mark.parametrize("size", SIZES)
def test_smooth_logits_identical_to_host(opencv_own_path, size):
    """(a) Masks and RLE strings identical to HostPostprocessor's."""
    n = 8 if size == (512, 384) else count(size)  # 512 long side: 4-channel chunks, see the module docstring
    logits = smooth_logits(n, seed=size[0])
    input_size = encoder_input_size(*size)
    rles = DEVICE.rles(torch.from_numpy(logits), input_size, size)
    assert rles == HOST.rles(logits, input_size, size)
    dense = DEVICE.dense(torch.from_numpy(logits), input_size, size)
    assert dense.dtype == np.bool_ and dense.shape == (n, *size)
    np.testing.assert_array_equal(dense, HOST.dense(logits, input_size, size))
    np.testing.assert_array_equal(dense, decode_all(rles))
    assert 0 < dense.mean() < 1  # real outlines, not trivial masks


@pytest.mark.parametrize("size", [(1080, 810), (4000, 3000), (1023, 767), (100, 3000)])
def test_noise_logits_identical_to_host_on_opencvs_path(opencv_own_path, size):
    """(b) Even noise, where thousands of pixels sit near the threshold, gives the same masks."""
    logits = noise_logits(count(size), seed=1)
    input_size = encoder_input_size(*size)
    assert DEVICE.rles(torch.from_numpy(logits), input_size, size) == HOST.rles(logits, input_size, size)


# ------------------------------------------------------------------------------ against IPP (the default)


@pytest.mark.parametrize(("kind", "size"), [("smooth", s) for s in SIZES] + [("noise", s) for s in SIZES[:5]])
def test_against_the_ipp_default(opencv_default, kind, size):
    """opencv-python as shipped: IPP resizes the host's 1/3/4-mask chunks with slightly different
    coefficients. Smooth logits lose at most a handful of outline pixels, noise logits keep IoU >= 0.9999."""
    n = count(size)
    logits = smooth_logits(n, seed=size[0]) if kind == "smooth" else noise_logits(n, seed=1)
    input_size = encoder_input_size(*size)
    host = decode_all(HOST.rles(logits, input_size, size))
    device = decode_all(DEVICE.rles(torch.from_numpy(logits), input_size, size))
    differing = int((host != device).sum())
    iou = per_mask_iou(host, device)
    print(f"\n{kind} {size[0]}x{size[1]} n={n}: {differing} differing pixels, min IoU {iou.min():.7f}")
    assert iou.min() >= 0.9999
    if kind == "smooth":
        assert differing <= 2 * n, differing


# ---------------------------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("logits", [np.zeros((0, 256, 256), np.float32), torch.zeros(0, 1, 256, 256)])
def test_no_masks(logits):
    assert DEVICE.rles(logits, (768, 1024), (600, 800)) == []
    assert HOST.rles(np.zeros((0, 256, 256), np.float32), (768, 1024), (600, 800)) == []
    dense = DEVICE.dense(logits, (768, 1024), (600, 800))
    assert dense.shape == (0, 600, 800) and dense.dtype == np.bool_


def test_all_negative_all_positive_and_border_runs(opencv_own_path):
    size, input_size = (1080, 810), encoder_input_size(1080, 810)
    n = 1080 * 810
    logits = np.full((5, 256, 256), -3.0, np.float32)
    logits[1] = 3.0  # all ones
    logits[2, :, :40] = 3.0  # starts with ones (first column), ends with zeros
    logits[3, :, 150:] = 3.0  # starts with zeros, ends with ones (the crop keeps x < 192 of 256)
    logits[4, 100:140, 50:90] = 3.0  # an island
    rles = DEVICE.rles(torch.from_numpy(logits), input_size, size)
    assert rles == HOST.rles(logits, input_size, size)
    assert rle_codec.counts(rles[0]).tolist() == [n]
    assert rle_codec.counts(rles[1]).tolist() == [0, n]
    assert rle_codec.counts(rles[2])[0] == 0 and len(rle_codec.counts(rles[2])) == 3
    assert len(rle_codec.counts(rles[3])) == 2
    dense = DEVICE.dense(torch.from_numpy(logits), input_size, size)
    assert not dense[0].any() and dense[1].all()
    for r, m in zip(rles, dense, strict=True):
        assert r == rle_codec.encode(m)


def test_chunk_boundaries(opencv_own_path):
    """7 masks in chunks of 1, of 3 (3 + 3 + 1) and in one chunk: the same masks as the host's."""
    size, input_size = (1080, 810), encoder_input_size(1080, 810)
    logits = torch.from_numpy(smooth_logits(7, seed=3))
    per_mask = 10**12 // TorchPostprocessor(chunk_bytes=10**12).masks_per_chunk(input_size, size)
    posts = [TorchPostprocessor(chunk_bytes=b) for b in (1, 3 * per_mask + 1, 10**12)]
    assert [p.masks_per_chunk(input_size, size) for p in posts[:2]] == [1, 3]
    assert posts[2].masks_per_chunk(input_size, size) > 7
    expected = HOST.rles(logits.numpy(), input_size, size)
    for post in posts:
        assert post.rles(logits, input_size, size) == expected
        np.testing.assert_array_equal(post.dense(logits, input_size, size), decode_all(expected))


def test_memory_bound_at_4000x3000():
    """300 masks at 4000x3000 are never all full-resolution at once: the default budget holds a few."""
    input_size = encoder_input_size(4000, 3000)
    assert TorchPostprocessor().masks_per_chunk(input_size, (4000, 3000), "cuda") <= 3
    assert TorchPostprocessor().masks_per_chunk(input_size, (4000, 3000), "cpu") == 1
    assert TorchPostprocessor().masks_per_chunk((1024, 768), (1080, 810), "cuda") >= 16


def test_input_forms(opencv_own_path):
    """numpy or tensor, (N, H, W) or (N, 1, H, W), float16 (converted like the host's float32 cast)."""
    size, input_size = (300, 200), encoder_input_size(300, 200)
    logits = smooth_logits(3, seed=5)
    expected = HOST.rles(logits, input_size, size)
    assert DEVICE.rles(logits, input_size, size) == expected
    assert TorchPostprocessor(device="cpu").rles(logits[:, None], input_size, size) == expected
    assert DEVICE.rles(torch.from_numpy(logits)[:, None], input_size, size) == expected
    half = torch.from_numpy(logits).half()
    assert DEVICE.rles(half, input_size, size) == HOST.rles(half.float().numpy(), input_size, size)
    host_logits = DEVICE.to_host(half)
    assert host_logits.dtype == np.float32 and np.array_equal(host_logits, half.float().numpy())
    with pytest.raises(ValueError, match="256x256"):
        DEVICE.rles(np.zeros((2, 64, 64), np.float32), input_size, size)


def test_run_lengths_match_the_codec():
    rng = np.random.default_rng(0)
    masks = rng.random((6, 7, 5)) < 0.5  # (k, w, h): transposed masks
    masks[0] = False
    masks[1] = True
    masks[2] = False
    masks[2, 0, 0] = True  # first pixel only
    masks[3] = False
    masks[3, -1, -1] = True  # last pixel only
    counts, sizes = run_lengths(torch.from_numpy(masks))
    split = np.split(counts.numpy(), np.cumsum(sizes.numpy())[:-1])
    for got, mask_t in zip(split, masks, strict=True):
        assert got.tolist() == rle_codec.mask_to_counts(mask_t.T).tolist()


def test_imports_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from mobilesamv2.processing.device_masks import TorchPostprocessor\n"
        "print(TorchPostprocessor().masks_per_chunk((1024, 768), (1080, 810)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout) > 0


# ------------------------------------------------------------------------------------------- the pipeline


def test_pipeline_with_tensor_logits(opencv_own_path):
    """The pipeline core with decoder logits left as tensors: same response as with the host path."""
    img = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    boxes = np.array([[100, 80, 300, 260], [350, 200, 600, 400], [0, 0, 640, 480]], np.float32)
    logits = torch.from_numpy(smooth_logits(3, seed=7))[:, None]

    async def encode(canvas, size):
        return "embedding"

    async def discover(letterboxed, conf):
        raise AssertionError("SegAny with boxes runs no discovery")

    async def decode(embedding, coords, labels, multimask, *_):
        return logits[: len(coords)], torch.ones(len(coords), 1)

    models = Models(encode, discover, decode)
    for output in ("rle", "dense", "logits"):
        request = SegmentRequest(img, Settings(output=output), Prompts(boxes=boxes))
        host = asyncio.run(Pipeline(models).run(request))
        device = asyncio.run(Pipeline(models, postprocess=TorchPostprocessor()).run(request))
        names = request.settings.outputs()  # not the timings
        host_out, device_out = host.to_outputs(names), device.to_outputs(names)
        assert set(host_out) == set(device_out)
        for name, value in host_out.items():
            np.testing.assert_array_equal(device_out[name], value, err_msg=f"{output}: {name}")
