"""COCO RLE: round trips, byte-equality with pycocotools (or a textbook reference), area and bbox."""

from __future__ import annotations

import numpy as np
import pytest

from segment_everything_contract import rle

try:
    from pycocotools import mask as coco_mask
except ImportError:  # pragma: no cover - the textbook reference below is used instead
    coco_mask = None


# --------------------------------------------------------------------- textbook reference


def reference_counts(mask: np.ndarray) -> list[int]:
    """Run lengths in column-major order, first run counts zeros (pure Python, slow)."""
    flat = mask.flatten(order="F").tolist()
    counts, current, run = [], 0, 0
    for v in flat:
        if v != current:
            counts.append(run)
            current, run = v, 0
        run += 1
    counts.append(run)
    return counts


def reference_string(counts: list[int]) -> str:
    """pycocotools' rleToString, transcribed line by line."""
    out = []
    for i, c in enumerate(counts):
        x = c
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            ch = x & 0x1F
            x >>= 5
            more = (x != -1) if (ch & 0x10) else (x != 0)
            if more:
                ch |= 0x20
            out.append(chr(ch + 48))
    return "".join(out)


def reference_encode(mask: np.ndarray) -> str:
    if coco_mask is not None:
        return coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()
    return reference_string(reference_counts(mask))


def random_masks(seed: int = 0, n: int = 300):
    rng = np.random.default_rng(seed)
    for k in range(n):
        h, w = (int(v) for v in rng.integers(1, 24, 2))
        if k % 7 == 0:
            h = 1
        if k % 11 == 0:
            w = 1
        mode = k % 4
        if mode == 0:
            m = rng.random((h, w)) < rng.random()
        elif mode == 1:  # a rectangle
            m = np.zeros((h, w), bool)
            y0, x0 = rng.integers(0, h), rng.integers(0, w)
            m[y0 : rng.integers(y0, h + 1), x0 : rng.integers(x0, w + 1)] = True
        elif mode == 2:  # rows touching top and bottom (exercises column wrap-around)
            m = np.zeros((h, w), bool)
            m[:, rng.integers(0, w) :] = True
            m[rng.integers(0, h) :, :] ^= rng.random() < 0.5
        else:
            m = rng.random((h, w)) < 0.9
        yield m


# ------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize(
    "mask",
    [
        np.zeros((5, 7), bool),
        np.ones((5, 7), bool),
        np.ones((1, 9), bool),
        np.ones((9, 1), bool),
        np.zeros((1, 9), bool),
        np.eye(6, dtype=bool),
        np.eye(6, dtype=bool)[::-1],
        np.pad(np.ones((3, 3), bool), 2),
    ],
    ids=["empty", "full", "1xN", "Nx1", "empty-1xN", "diag", "anti-diag", "centered-square"],
)
def test_edge_cases_match_reference_and_round_trip(mask: np.ndarray) -> None:
    encoded = rle.encode(mask)
    assert encoded["size"] == list(mask.shape)
    assert encoded["counts"] == reference_encode(mask)
    np.testing.assert_array_equal(rle.decode(encoded), mask)


def test_random_masks_match_reference_and_round_trip() -> None:
    for m in random_masks():
        encoded = rle.encode(m)
        assert encoded["counts"] == reference_encode(m), m.astype(int)
        np.testing.assert_array_equal(rle.decode(encoded), m)


def test_counts_match_textbook_runs() -> None:
    for m in random_masks(seed=1, n=100):
        assert rle.mask_to_counts(m).tolist() == reference_counts(m)


def test_string_codec_matches_textbook_for_large_and_negative_deltas() -> None:
    rng = np.random.default_rng(2)
    counts = rng.integers(0, 2**40, size=500).tolist()  # deltas of both signs, multi-group values
    s = rle.counts_to_string(counts)
    assert s == reference_string(counts)
    assert rle.string_to_counts(s).tolist() == counts


def test_fortran_and_transposed_inputs_take_the_fast_path_with_same_result() -> None:
    for m in random_masks(seed=3, n=60):
        expected = rle.encode(m)
        assert rle.encode(np.asfortranarray(m)) == expected
        assert rle.encode_runs_from_transposed(np.ascontiguousarray(m.T)) == expected


def test_non_contiguous_and_non_bool_masks() -> None:
    rng = np.random.default_rng(4)
    big = rng.random((40, 60)) < 0.5
    view = big[3::2, 5::3]
    assert rle.encode(view)["counts"] == reference_encode(np.ascontiguousarray(view))
    as_uint8 = view.astype(np.uint8) * 255
    assert rle.encode(as_uint8) == rle.encode(view)


def test_large_blob_mask_round_trip() -> None:
    m = np.zeros((600, 800), bool)
    yy, xx = np.mgrid[:600, :800]
    m[((yy - 300) / 200.0) ** 2 + ((xx - 350) / 300.0) ** 2 < 1] = True
    m[:, 790:] = True  # touches top and bottom: runs wrap across columns
    encoded = rle.encode(m)
    assert encoded["counts"] == reference_encode(m)
    np.testing.assert_array_equal(rle.decode(encoded), m)


@pytest.mark.skipif(coco_mask is None, reason="pycocotools not installed")
def test_area_and_bbox_match_pycocotools() -> None:
    for m in random_masks(seed=5, n=200):
        ours = rle.encode(m)
        theirs = coco_mask.encode(np.asfortranarray(m.astype(np.uint8)))
        assert rle.area(ours) == int(coco_mask.area(theirs))
        assert rle.to_bbox(ours) == coco_mask.toBbox(theirs).tolist()


def test_area_and_bbox_textbook() -> None:
    m = np.zeros((10, 12), bool)
    m[2:5, 3:9] = True
    m[7, 10] = True
    encoded = rle.encode(m)
    assert rle.area(encoded) == 19
    assert rle.to_bbox(encoded) == [3.0, 2.0, 8.0, 6.0]
    assert rle.to_bbox(rle.encode(np.zeros((3, 3), bool))) == [0.0, 0.0, 0.0, 0.0]
    assert rle.to_bbox(rle.encode(np.ones((3, 4), bool))) == [0.0, 0.0, 4.0, 3.0]


def test_decode_accepts_uncompressed_counts_and_bytes() -> None:
    m = np.array([[0, 1, 1], [1, 0, 1]], bool)
    counts = reference_counts(m)
    np.testing.assert_array_equal(rle.decode({"size": [2, 3], "counts": counts}), m)
    encoded = rle.encode(m)
    np.testing.assert_array_equal(rle.decode({"size": [2, 3], "counts": encoded["counts"].encode()}), m)


def test_json_wire_form_round_trip() -> None:
    encoded = rle.encode(np.eye(4, dtype=bool))
    assert rle.loads(rle.dumps(encoded)) == encoded
    assert rle.loads(rle.dumps(encoded).decode()) == encoded


def test_decode_into_stacks_masks() -> None:
    masks = [np.eye(5, 7, k, dtype=bool) for k in range(3)]
    out = np.zeros((3, 5, 7), bool)
    for i, m in enumerate(masks):
        rle.decode_into(rle.encode(m), out[i])
    np.testing.assert_array_equal(out, np.stack(masks))


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"size": [2, 2], "counts": "5"}, "sum to"),
        ({"size": [2, 2], "counts": "1\x01"}, "not a COCO"),
        ({"size": [2, 2], "counts": "Q"}, "truncated"),
    ],
)
def test_decode_rejects_malformed(bad: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        rle.decode(bad)


def test_encode_rejects_non_2d() -> None:
    with pytest.raises(ValueError, match="2-D"):
        rle.encode(np.zeros((2, 2, 2), bool))
