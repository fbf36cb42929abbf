"""The CPU mask post-processing (``processing.masks``) against straightforward references.

References, each written out here:
- ``opencv_reference``: SAM's two resizes with ``cv2.resize``, one mask at a time on OpenCV's own code path
  (IPP off), in the transposed frame: the arithmetic the implementation reproduces, so masks are *identical*.
- ``previous_implementation``: the module before the outline-block rewrite, verbatim (channels-last chunks,
  opencv-python's default, i.e. Intel IPP for 1-, 3- and 4-mask chunks, whose coefficients differ in the
  last bits): a few outline pixels may differ, IoU >= 0.999 for every mask.
- ``torch_reference``: MobileSAMv2's own ``F.interpolate`` twice (float coefficients): pixels may differ only
  where the logit is within float rounding of the threshold.

Run with ``-s`` to see the pixel-difference counts.
"""

from __future__ import annotations

import tracemalloc

import cv2
import numpy as np
import pytest
from synthetic_logits import noise_logits, smooth_logits

from mobilesamv2.processing.image import encoder_input_size
from mobilesamv2.processing.masks import masks_to_rles, upsample_masks
from segment_everything_contract import rle as rle_codec

#: (h, w): upscale, bus.jpg, 12 MP, odd sizes, extreme aspects, tiny, exact 2x downscale, no second resize
SIZES = [
    (300, 200),
    (1080, 810),
    (4000, 3000),
    (1023, 767),
    (100, 3000),
    (3000, 100),
    (8, 8),
    (512, 384),
    (1024, 768),
]


# ------------------------------------------------------------------------------------------------ logits


def count(size: tuple[int, int]) -> int:
    return 3 if size[0] * size[1] > 5e6 else 8


# -------------------------------------------------------------------------------------------- references


@pytest.fixture
def opencv_default():
    """opencv-python as shipped (IPP on where the build has it), whatever a previous test left."""
    before = cv2.ipp.useIPP()
    cv2.ipp.setUseIPP(True)
    yield
    cv2.ipp.setUseIPP(before)


def opencv_reference(logits: np.ndarray, input_size, size) -> np.ndarray:
    """Full-resolution float logits ``(N, h, w)``: ``cv2.resize`` to 1024, crop, ``cv2.resize`` to ``(h, w)``,
    one mask at a time in the transposed frame (rows x, columns y), IPP off."""
    (new_h, new_w), (h, w) = input_size, size
    before = cv2.ipp.useIPP()
    cv2.ipp.setUseIPP(False)
    try:
        out = np.empty((len(logits), h, w), np.float32)
        for i, lo in enumerate(logits):
            up = cv2.resize(np.ascontiguousarray(lo.T), (1024, 1024), interpolation=cv2.INTER_LINEAR)
            out[i] = cv2.resize(
                np.ascontiguousarray(up[:new_w, :new_h]), (h, w), interpolation=cv2.INTER_LINEAR
            ).T
        return out
    finally:
        cv2.ipp.setUseIPP(before)


def previous_implementation(logits: np.ndarray, input_size, size, chunk_bytes=16 * 2**20) -> np.ndarray:
    """The module before the rewrite (its ``upsample_masks``): masks ``(N, h, w)``, opencv-python default."""
    (new_h, new_w), (h, w) = input_size, size
    chunk = int(max(1, min(512, chunk_bytes // (max(h * w, 1024**2) * 4))))
    out = np.empty((len(logits), h, w), bool)
    for start in range(0, len(logits), chunk):
        block = np.ascontiguousarray(logits[start : start + chunk].transpose(2, 1, 0))
        up = cv2.resize(block, (1024, 1024), interpolation=cv2.INTER_LINEAR).reshape(1024, 1024, -1)
        up = np.ascontiguousarray(up[:new_w, :new_h])
        full = cv2.resize(up, (h, w), interpolation=cv2.INTER_LINEAR).reshape(w, h, -1)
        out[start : start + full.shape[2]] = (full > 0).transpose(2, 1, 0)
    return out


def torch_reference(logits: np.ndarray, input_size, size) -> np.ndarray:
    """MobileSAMv2's ``postprocess_masks`` logits (``F.interpolate`` twice), ``(N, h, w)``."""
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    x = F.interpolate(torch.from_numpy(logits)[:, None], (1024, 1024), mode="bilinear", align_corners=False)
    x = x[..., : input_size[0], : input_size[1]]
    return F.interpolate(x, size, mode="bilinear", align_corners=False)[:, 0].numpy()


def decode_all(rles: list[dict]) -> np.ndarray:
    return np.stack([rle_codec.decode(r) for r in rles])


def per_mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    inter = (a & b).reshape(len(a), -1).sum(1)
    union = (a | b).reshape(len(a), -1).sum(1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


# --------------------------------------------------------------------------- identical to OpenCV's own path


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", ["smooth", "noise"])
def test_identical_to_opencv_two_step(size, kind):
    """Masks and RLE strings bit for bit those of the two ``cv2.resize`` calls (OpenCV's own code)."""
    n = count(size)
    logits = smooth_logits(n, seed=size[0]) if kind == "smooth" else noise_logits(n, seed=size[1])
    input_size = encoder_input_size(*size)
    expected = opencv_reference(logits, input_size, size) > 0
    rles = masks_to_rles(logits, input_size, size)
    assert [r["size"] for r in rles] == [list(size)] * n
    got = decode_all(rles)
    differing = int((got != expected).sum())
    print(f"\n{kind} {size[0]}x{size[1]} n={n}: {differing} pixels differ from the OpenCV two-step")
    assert differing == 0
    assert rles == [rle_codec.encode(m) for m in expected]  # the codec's own encoding of the same masks
    dense = upsample_masks(logits, input_size, size)
    assert dense.dtype == np.bool_ and dense.shape == (n, *size)
    np.testing.assert_array_equal(dense, expected)
    if kind == "smooth":
        assert 0 < expected.mean() < 1  # real outlines, not trivial masks


@pytest.mark.parametrize("threshold", [-1.5, 2.5, 1e-3])
def test_other_thresholds(threshold):
    size = (1080, 810)
    logits = smooth_logits(6, seed=11)
    input_size = encoder_input_size(*size)
    expected = opencv_reference(logits, input_size, size) > threshold
    np.testing.assert_array_equal(
        decode_all(masks_to_rles(logits, input_size, size, threshold=threshold)), expected
    )
    np.testing.assert_array_equal(upsample_masks(logits, input_size, size, threshold=threshold), expected)


# --------------------------------------------------------------------- against the previous implementation


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", ["smooth", "noise"])
def test_against_the_previous_implementation(opencv_default, size, kind):
    """IoU >= 0.999 on every mask against the previous implementation (IPP); smooth logits lose at most a
    couple of outline pixels per mask, where the logit is within IPP's rounding (~1e-4) of 0."""
    n = count(size)
    logits = smooth_logits(n, seed=size[0]) if kind == "smooth" else noise_logits(n, seed=size[1])
    input_size = encoder_input_size(*size)
    previous = previous_implementation(logits, input_size, size)
    got = decode_all(masks_to_rles(logits, input_size, size))
    differ = got != previous
    iou = per_mask_iou(got, previous)
    logit = np.abs(opencv_reference(logits, input_size, size))
    near = float(logit[differ].max()) if differ.any() else 0.0
    print(
        f"\n{kind} {size[0]}x{size[1]} n={n}: {int(differ.sum())} pixels differ from the previous "
        f"implementation (max |logit| there {near:.1e}), min IoU {iou.min():.7f}"
    )
    assert iou.min() >= 0.999
    assert near < 1e-3  # only where the logit sits at the threshold
    if kind == "smooth":
        assert differ.sum() <= 2 * n


@pytest.mark.parametrize("size", [(1080, 810), (300, 200), (1023, 767)])
def test_against_mobilesamv2s_torch_postprocess(size):
    logits = smooth_logits(6, seed=3)
    input_size = encoder_input_size(*size)
    theirs = torch_reference(logits, input_size, size)
    got = upsample_masks(logits, input_size, size)
    differ = got != (theirs > 0)
    print(f"\n{size[0]}x{size[1]}: {int(differ.sum())} pixels differ from F.interpolate")
    assert per_mask_iou(got, theirs > 0).min() >= 0.999
    assert not differ.any() or np.abs(theirs[differ]).max() < 1e-3


# ---------------------------------------------------------------------------------------------- edge cases


def test_empty_full_and_border_masks():
    size, input_size = (1080, 810), encoder_input_size(1080, 810)
    n = 1080 * 810
    logits = np.full((6, 256, 256), -3.0, np.float32)
    logits[1] = 3.0  # all ones
    logits[2, :, :40] = 3.0  # starts with ones (first column), ends with zeros
    logits[3, :, 150:] = 3.0  # starts with zeros, ends with ones (the crop keeps x < 192 of 256)
    logits[4, 100:140, 50:90] = 3.0  # an island
    logits[5, 0, 0] = 3.0  # one low-res pixel in the corner
    rles = masks_to_rles(logits, input_size, size)
    assert rle_codec.counts(rles[0]).tolist() == [n]
    assert rle_codec.counts(rles[1]).tolist() == [0, n]
    assert rle_codec.counts(rles[2])[0] == 0 and len(rle_codec.counts(rles[2])) == 3
    assert len(rle_codec.counts(rles[3])) == 2
    expected = opencv_reference(logits, input_size, size) > 0
    np.testing.assert_array_equal(decode_all(rles), expected)
    np.testing.assert_array_equal(upsample_masks(logits, input_size, size), expected)
    assert expected[5].any()


def test_no_masks_and_bad_input():
    assert masks_to_rles(np.zeros((0, 256, 256), np.float32), (768, 1024), (600, 800)) == []
    dense = upsample_masks(np.zeros((0, 256, 256), np.float32), (768, 1024), (600, 800))
    assert dense.shape == (0, 600, 800) and dense.dtype == np.bool_
    with pytest.raises(ValueError, match="N, H, W"):
        masks_to_rles(np.zeros((256, 256), np.float32), (768, 1024), (600, 800))


def test_other_dtypes_and_non_contiguous_logits():
    size, input_size = (333, 517), encoder_input_size(333, 517)
    logits = smooth_logits(4, seed=8)
    expected = masks_to_rles(logits, input_size, size)
    assert masks_to_rles(logits.astype(np.float64), input_size, size) == expected
    doubled = np.repeat(logits, 2, axis=0)[::2]  # a strided view
    assert masks_to_rles(doubled, input_size, size) == expected


def test_non_finite_logits_match_opencv():
    """inf and NaN are never "certain" (inf times a zero weight is NaN): they take the exact path."""
    size, input_size = (1080, 810), encoder_input_size(1080, 810)
    logits = smooth_logits(4, seed=9)
    logits[0, 100:110, 100:110] = np.inf
    logits[1, 50:60, 70:80] = -np.inf
    logits[2, 30:40, 30:40] = np.nan
    expected = opencv_reference(logits, input_size, size) > 0
    np.testing.assert_array_equal(decode_all(masks_to_rles(logits, input_size, size)), expected)


# ------------------------------------------------------------------------------------ chunks and memory


def test_chunk_boundaries_and_mixed_paths():
    """Smooth and noise masks interleaved (outline blocks and dense path in one chunk), in chunks of one mask
    (and one mixed block per slice), of a few masks, and all at once: the same strings, in order."""
    size, input_size = (1080, 810), encoder_input_size(1080, 810)
    logits = np.concatenate([smooth_logits(5, seed=4), noise_logits(2, seed=4)])[[0, 5, 1, 2, 6, 3, 4]]
    expected = [rle_codec.encode(m) for m in opencv_reference(logits, input_size, size) > 0]
    for chunk_bytes in (1, 3 * 2**20, 2**30):
        assert masks_to_rles(logits, input_size, size, chunk_bytes=chunk_bytes) == expected, chunk_bytes
        np.testing.assert_array_equal(
            upsample_masks(logits, input_size, size, chunk_bytes=chunk_bytes), decode_all(expected)
        )


def test_memory_of_300_masks_at_12_mp_is_bounded():
    """300 masks of a 4000x3000 image (14 GB as floats, 3.6 GB as booleans): numpy never holds more than a
    few dozen MB at once."""
    size, input_size = (4000, 3000), encoder_input_size(4000, 3000)
    logits = np.repeat(smooth_logits(10, seed=5), 30, axis=0)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        rles = masks_to_rles(logits, input_size, size)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    print(f"\n300 masks at 4000x3000: peak {peak / 2**20:.1f} MiB of numpy allocations")
    assert len(rles) == 300 and rles[0] == rles[10]
    assert peak < 64 * 2**20


# -------------------------------------------------------------------------------------------------- codec


def test_batched_strings_equal_one_at_a_time_and_pycocotools():
    rng = np.random.default_rng(0)
    runs = [rng.integers(0, 2 ** int(rng.integers(1, 40)), int(rng.integers(0, 40))) for _ in range(300)]
    runs += [[], [0], [7], [0, 5], [3, 0, 2], np.zeros(0, np.int64)]
    assert rle_codec.counts_to_strings(runs) == [rle_codec.counts_to_string(r) for r in runs]
    assert rle_codec.counts_to_strings([]) == []
    pycocotools = pytest.importorskip("pycocotools.mask")
    masks_ = [rng.random((int(rng.integers(1, 30)), int(rng.integers(1, 30)))) < 0.5 for _ in range(50)]
    ours = rle_codec.counts_to_strings([rle_codec.mask_to_counts(m) for m in masks_])
    theirs = [pycocotools.encode(np.asfortranarray(m.astype(np.uint8)))["counts"].decode() for m in masks_]
    assert ours == theirs
