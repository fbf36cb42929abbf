"""COCO run-length encoding (RLE) of binary masks, byte-compatible with pycocotools.

Part of the wire contract: the server encodes its masks with :func:`encode` and the client
decodes them with :func:`decode`, so both sides agree by construction.

Format (as in ``pycocotools/common/maskApi.c``):

* the mask is read in column-major (Fortran) order; the runs alternate zeros, ones, zeros, ...
  and always start with a run of zeros, which may be empty;
* the counts are written as a compressed string: from the fourth count on (index ``i > 2``) the
  count minus ``counts[i - 2]`` is stored, each value as little-endian groups of 5 bits plus a
  continuation bit (``0x20``), sign given by bit ``0x10`` of the last group, each group offset
  by 48 to make it printable ASCII.

Everything is vectorised with numpy: the cost is one pass over the pixel rows that hold the
object, plus work proportional to the number of runs, so small objects on big images are cheap.

>>> import numpy as np
>>> m = np.zeros((4, 5), dtype=bool)
>>> m[1:3, 1:4] = True
>>> rle = encode(m)
>>> rle
{'size': [4, 5], 'counts': '5220003'}
>>> bool((decode(rle) == m).all()), area(rle), to_bbox(rle)
(True, 6, [1.0, 1.0, 3.0, 2.0])
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TypedDict

import numpy as np

try:  # cv2.transpose is ~10x faster than numpy's transposing copy; numpy is the fallback.
    import cv2 as _cv2
except ImportError:  # pragma: no cover - exercised only without OpenCV
    _cv2 = None

__all__ = [
    "RLE",
    "area",
    "counts",
    "counts_to_string",
    "counts_to_strings",
    "decode",
    "decode_into",
    "dumps",
    "encode",
    "encode_runs_from_transposed",
    "loads",
    "mask_to_counts",
    "string_to_counts",
    "to_bbox",
]


class RLE(TypedDict):
    """A COCO RLE: ``size`` is ``[h, w]``; ``counts`` the compressed string (uncompressed: a list of runs)."""

    size: list[int]
    counts: str | list[int]


# --------------------------------------------------------------------------------------------- runs


def _first_last_true(flags: np.ndarray) -> tuple[int, int] | None:
    idx = np.flatnonzero(flags)
    if idx.size == 0:
        return None
    return int(idx[0]), int(idx[-1])


def _rows_any(mask: np.ndarray) -> np.ndarray:
    """``mask.any(axis=1)`` for a 2-D bool array, reading 8 pixels at a time when possible."""
    w = mask.shape[1]
    if mask.flags.c_contiguous and w % 8 == 0 and w > 0:
        return mask.view(np.uint64).any(axis=1)
    return mask.any(axis=1)


def _runs_from_transitions(positions: np.ndarray, n: int) -> np.ndarray:
    """Run lengths (starting with zeros) from the sorted flat positions where the value flips."""
    counts = np.empty(positions.size + 1, dtype=np.int64)
    if positions.size:
        counts[0] = positions[0]
        np.subtract(positions[1:], positions[:-1], out=counts[1:-1])
        counts[-1] = n - positions[-1]
    else:
        counts[0] = n
    # A mask ending with ones has no final zero run (pycocotools does not write an empty one).
    if counts.size > 1 and counts[-1] == 0:
        counts = counts[:-1]
    return counts


def mask_to_counts(mask: np.ndarray) -> np.ndarray:
    """Column-major run lengths of an ``HxW`` mask (int64, first run counts zeros).

    Works on the row-major array without transposing it: in column-major order the value
    flips exactly where a pixel differs from the pixel above it (plus at column boundaries),
    and those vertical differences are a cheap contiguous comparison of neighbouring rows,
    restricted to the rows and columns that hold the object.

    >>> mask_to_counts(np.array([[0, 1], [1, 1]], dtype=bool)).tolist()
    [1, 3]
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {mask.shape}")
    if mask.dtype != np.bool_:
        mask = mask != 0
    h, w = mask.shape
    n = h * w
    if mask.flags.f_contiguous and not mask.flags.c_contiguous:
        return _counts_from_transposed(mask.T)
    span = _first_last_true(_rows_any(mask)) if n else None
    if span is None:
        return np.array([n], dtype=np.int64)
    r0, r1 = span
    band = mask[r0 : r1 + 1]
    c0, c1 = _first_last_true(band.any(axis=0))  # type: ignore[misc]
    crop = band[:, c0 : c1 + 1]
    ch, cw = crop.shape
    # Flip positions as (row entered, column) in crop coordinates, with an implicit zero row
    # above and below the crop: "entering" row 0 from above, rows 1..ch-1 from the row above,
    # and row ch (just below the crop) from the last row. Gathered in row-major order.
    inner = np.flatnonzero(crop[1:] != crop[:-1])  # flat index over (ch-1, cw)
    if inner.size * 16 > crop.size and _cv2 is not None:
        # Speckled masks: sorting millions of flips costs more than one fast transpose.
        dense = np.ascontiguousarray(mask).view(np.uint8)
        return _counts_from_transposed(_cv2.transpose(dense).view(np.bool_))
    top = np.flatnonzero(crop[0])
    bottom = np.flatnonzero(crop[-1])
    ii = np.concatenate((np.zeros(top.size, np.int64), inner // cw + 1, np.full(bottom.size, ch, np.int64)))
    jj = np.concatenate((top, inner % cw, bottom))
    # Column-major order = stable sort by column (radix sort for 16-bit keys).
    order = np.argsort(jj.astype(np.uint16) if cw <= 0xFFFF else jj, kind="stable")
    positions = (jj[order] + c0) * h + (ii[order] + r0)
    if r0 == 0 and r1 == h - 1:
        # A column ending in 1 followed by a column starting with 1 produced an "off" flip
        # (below the last row) and an "on" flip (above row 0) at the same position: they cancel.
        dup = positions[1:] == positions[:-1]
        if dup.any():
            keep = np.ones(positions.size, dtype=np.bool_)
            keep[1:][dup] = False
            keep[:-1][dup] = False
            positions = positions[keep]
    return _runs_from_transitions(positions, n)


def _counts_from_transposed(mask_t: np.ndarray) -> np.ndarray:
    """Run lengths from ``mask.T`` (shape ``WxH``), whose row-major order is the column-major order."""
    w, h = mask_t.shape
    n = h * w
    mask_t = np.ascontiguousarray(mask_t, dtype=np.bool_)
    span = _first_last_true(_rows_any(mask_t)) if n else None
    if span is None:
        return np.array([n], dtype=np.int64)
    c0, c1 = span
    seg = mask_t[c0 : c1 + 1].reshape(-1)
    base = c0 * h
    inner = np.flatnonzero(seg[1:] != seg[:-1]) + (base + 1)
    parts = []
    if seg[0]:
        parts.append(np.array([base], dtype=np.int64))
    parts.append(inner.astype(np.int64, copy=False))
    if seg[-1]:
        parts.append(np.array([base + seg.size], dtype=np.int64))
    positions = np.concatenate(parts) if len(parts) > 1 else parts[0]
    return _runs_from_transitions(positions, n)


# ------------------------------------------------------------------------------------- string codec


def _group_counts(x: np.ndarray) -> np.ndarray:
    """Characters needed per value: 5-bit groups holding the value's bits plus a sign bit."""
    magnitude = np.where(x < 0, ~x, x)
    bit_length = np.frexp(magnitude.astype(np.float64))[1]  # exact below 2**53
    return np.maximum(1, (bit_length + 1 + 4) // 5)


def _compressed(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The characters (uint8) of values ``x`` (already delta-coded), and how many each value takes."""
    ngroups = _group_counts(x)
    offsets = np.cumsum(ngroups) - ngroups
    out = np.empty(int(ngroups.sum()), dtype=np.uint8)
    for k in range(int(ngroups.max(initial=0))):
        sel = np.flatnonzero(ngroups > k) if k else slice(None)
        xs = x[sel] >> (5 * k)  # arithmetic shift, as the C code does on a signed long
        more = ngroups[sel] > k + 1
        out[offsets[sel] + k] = ((xs & 0x1F) | (more * 0x20)) + 48
    return out, ngroups


def counts_to_string(counts: np.ndarray | list[int]) -> str:
    """pycocotools' compressed string for a list of run lengths (``rleToString``).

    >>> counts_to_string([0, 20])
    '0d0'
    """
    cnts = np.asarray(counts, dtype=np.int64)
    if cnts.size == 0:
        return ""
    x = cnts.copy()
    # Reference quirk: the delta against counts[i-2] starts at i == 3, not i == 2.
    x[3:] -= cnts[1:-2]
    return _compressed(x)[0].tobytes().decode("ascii")


def counts_to_strings(runs: Sequence[np.ndarray | list[int]]) -> list[str]:
    """:func:`counts_to_string` of many masks' run lengths in one vectorised pass (the same strings): cheaper
    than one call per mask when the masks have few runs each.

    >>> counts_to_strings([[0, 20], [], [3, 1, 2, 5]])
    ['0d0', '', '3124']
    """
    arrays = [np.asarray(c, dtype=np.int64).reshape(-1) for c in runs]
    if not arrays:
        return []
    sizes = np.array([a.size for a in arrays], dtype=np.int64)
    cnts = np.concatenate(arrays)
    x = cnts.copy()
    index = np.arange(cnts.size) - np.repeat(np.cumsum(sizes) - sizes, sizes)  # position within its mask
    delta = np.flatnonzero(index > 2)
    x[delta] -= cnts[delta - 2]
    chars, ngroups = _compressed(x)
    ends = np.concatenate(([0], np.cumsum(ngroups)))[np.cumsum(sizes)].tolist()
    text = chars.tobytes().decode("ascii")
    return [text[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)]


def string_to_counts(s: str | bytes) -> np.ndarray:
    """Inverse of :func:`counts_to_string` (``rleFrString``).

    >>> string_to_counts("0d0").tolist()
    [0, 20]
    """
    raw = s.encode("ascii") if isinstance(s, str) else bytes(s)
    if not raw:
        return np.zeros(0, dtype=np.int64)
    c = np.frombuffer(raw, dtype=np.uint8)
    if c.min() < 48 or c.max() > 48 + 63:
        raise ValueError("not a COCO compressed RLE string")
    c = (c - 48).astype(np.int64)
    ends = np.flatnonzero((c & 0x20) == 0)
    if ends.size == 0 or ends[-1] != c.size - 1:
        raise ValueError("truncated COCO compressed RLE string")
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    nchars = ends - starts + 1
    x = c[starts] & 0x1F
    for k in range(1, int(nchars.max())):
        sel = np.flatnonzero(nchars > k)
        x[sel] |= (c[starts[sel] + k] & 0x1F) << (5 * k)
    negative = (c[ends] & 0x10) != 0
    x[negative] |= np.left_shift(np.int64(-1), 5 * nchars[negative])
    counts = x.copy()
    # Undo the delta: counts[m] = x[m] + counts[m-2] for m > 2, i.e. running sums over the
    # odd indices from 1 and over the even indices from 2 (index 0 stands alone).
    counts[1::2] = np.cumsum(x[1::2])
    counts[2::2] = np.cumsum(x[2::2])
    return counts


# ------------------------------------------------------------------------------------------ public


def encode(mask: np.ndarray) -> RLE:
    """Encode a boolean ``HxW`` mask as ``{"size": [h, w], "counts": str}``.

    Equal to ``pycocotools.mask.encode(np.asfortranarray(mask))`` with ``counts`` decoded to
    ``str`` (JSON-ready). A Fortran-ordered array (or ``mask_t.T``) takes the fast path of
    :func:`encode_runs_from_transposed`.

    >>> encode(np.ones((2, 3), dtype=bool))
    {'size': [2, 3], 'counts': '06'}
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {mask.shape}")
    h, w = mask.shape
    return {"size": [int(h), int(w)], "counts": counts_to_string(mask_to_counts(mask))}


def encode_runs_from_transposed(mask_t: np.ndarray) -> RLE:
    """Encode a mask given as its transpose ``mask.T`` (shape ``WxH``, ideally C-contiguous).

    Column-major order of the mask is row-major order of its transpose, so producers that can
    write masks transposed (e.g. by upsampling ``logits.transpose(-1, -2)``) skip all
    reordering: the runs come from one contiguous comparison.

    >>> m = np.eye(3, 4, dtype=bool)
    >>> encode_runs_from_transposed(np.ascontiguousarray(m.T)) == encode(m)
    True
    """
    mask_t = np.asarray(mask_t)
    if mask_t.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {mask_t.shape}")
    w, h = mask_t.shape
    if mask_t.dtype != np.bool_:
        mask_t = mask_t != 0
    return {"size": [int(h), int(w)], "counts": counts_to_string(_counts_from_transposed(mask_t))}


def counts(rle: RLE) -> np.ndarray:
    """The run lengths of a compressed or uncompressed RLE (zeros first), int64."""
    given = rle["counts"]
    if isinstance(given, (str, bytes, bytearray)):
        return string_to_counts(given)
    return np.asarray(given, dtype=np.int64)  # uncompressed RLE: a list of ints


def _size(rle: RLE) -> tuple[int, int]:
    h, w = rle["size"]
    return int(h), int(w)


def _fortran_flat(rle: RLE) -> tuple[np.ndarray, int, int]:
    """The mask as a ``WxH`` C-ordered array (the transpose of the mask), straight from the runs."""
    h, w = _size(rle)
    runs = counts(rle)
    total = int(runs.sum())
    if total != h * w or (runs < 0).any():
        raise ValueError(f"RLE counts sum to {total}, expected {h}*{w}={h * w}")
    values = (np.arange(runs.size) % 2).astype(np.bool_)
    return np.repeat(values, runs).reshape(w, h), h, w


def _transpose_into(src_t: np.ndarray, out: np.ndarray) -> np.ndarray:
    if _cv2 is not None and src_t.size and max(src_t.shape) < 2**31:
        _cv2.transpose(src_t.view(np.uint8), dst=out.view(np.uint8))
    else:
        out[...] = src_t.T
    return out


def decode(rle: RLE) -> np.ndarray:
    """Decode a compressed (or uncompressed, list-of-ints) RLE into a C-ordered bool ``HxW`` mask.

    >>> decode({"size": [2, 2], "counts": "121"}).tolist()
    [[False, True], [True, False]]
    """
    flat_t, h, w = _fortran_flat(rle)
    return _transpose_into(flat_t, np.empty((h, w), dtype=np.bool_))


def decode_into(rle: RLE, out: np.ndarray) -> np.ndarray:
    """Decode into a preallocated C-contiguous bool ``HxW`` array (used to stack many masks)."""
    flat_t, h, w = _fortran_flat(rle)
    if out.shape != (h, w) or out.dtype != np.bool_ or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous bool array of shape {(h, w)}")
    return _transpose_into(flat_t, out)


def area(rle: RLE) -> int:
    """Number of foreground pixels.

    >>> area(encode(np.ones((3, 3), dtype=bool)))
    9
    """
    return int(counts(rle)[1::2].sum())


def to_bbox(rle: RLE) -> list[float]:
    """Tight bounding box ``[x, y, w, h]`` (COCO xywh, pixels), ``[0, 0, 0, 0]`` when empty.

    Same result as ``pycocotools.mask.toBbox``.

    >>> to_bbox(encode(np.pad(np.ones((2, 3), dtype=bool), ((1, 0), (2, 0)))))
    [2.0, 1.0, 3.0, 2.0]
    """
    h, _ = _size(rle)
    runs = counts(rle)
    m = (runs.size // 2) * 2
    if m == 0 or h == 0:
        return [0.0, 0.0, 0.0, 0.0]
    cc = np.cumsum(runs[:m])
    first = cc[0::2]  # flat index of the first pixel of each run of ones
    last = cc[1::2] - 1  # flat index of its last pixel
    nonempty = last >= first
    if not nonempty.any():
        return [0.0, 0.0, 0.0, 0.0]
    first, last = first[nonempty], last[nonempty]
    x0, y0 = first // h, first % h
    x1, y1 = last // h, last % h
    xs, xe = int(x0.min()), int(x1.max())
    if (x1 > x0).any():  # a run wraps into the next column: it touches the top and the bottom
        ys, ye = 0, h - 1
    else:
        ys, ye = int(min(y0.min(), y1.min())), int(max(y0.max(), y1.max()))
    return [float(xs), float(ys), float(xe - xs + 1), float(ye - ys + 1)]


def dumps(rle: RLE) -> bytes:
    """The wire form used in the ``masks_rle`` output: compact JSON, UTF-8.

    >>> dumps(encode(np.zeros((1, 2), dtype=bool)))
    b'{"size":[1,2],"counts":"2"}'
    """
    counts = rle["counts"]
    if isinstance(counts, (bytes, bytearray)):
        counts = bytes(counts).decode("ascii")
    return json.dumps({"size": list(_size(rle)), "counts": counts}, separators=(",", ":")).encode()


def loads(data: str | bytes | bytearray | memoryview) -> RLE:
    """Parse one ``masks_rle`` element (see :func:`dumps`).

    >>> loads(b'{"size":[1,2],"counts":"2"}')
    {'size': [1, 2], 'counts': '2'}
    """
    if isinstance(data, memoryview):
        data = data.tobytes()
    obj = json.loads(data)
    if not isinstance(obj, dict) or "size" not in obj or "counts" not in obj:
        raise ValueError("an RLE must be a JSON object with 'size' and 'counts'")
    counts = obj["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    return {"size": [int(v) for v in obj["size"]], "counts": counts}
