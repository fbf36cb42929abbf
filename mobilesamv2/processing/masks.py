"""Mask post-processing: the decoder's 256x256 logits -> full-resolution binary masks -> COCO RLE.

SAM's ``postprocess_masks``: bilinear (align_corners=False) to 1024x1024, crop the valid ``[:newh, :neww]``,
bilinear to the original ``(h, w)``, then ``> 0``.

The numbers. Both resizes are OpenCV's ``INTER_LINEAR`` on float32 as OpenCV's own code computes it, which is
also what :mod:`.device_masks` computes on an accelerator, bit for bit. It works on the *transposed* frame
(rows are the mask's x, columns its y: the C order of that frame is COCO's column-major order); each resize is
a pass along the columns (y), then one along the rows (x); every output sample is ``a * w0 + b * w1`` in
float32 (two rounded products, one rounded sum) with OpenCV's taps and weights (:func:`linear_taps`).
opencv-python's Intel IPP kernels, which ``cv2.resize`` picks for 1, 3 or 4 channels by default, use other
coefficients (logits differ by ~1e-5, masks in the odd outline pixel), so the dense path turns IPP off.

The work. Bilinear weights are non-negative, so an output pixel is certainly above the threshold when every
low-res logit it depends on is (by a margin that covers float rounding), and certainly below when every one
is below. The transposed output is cut into blocks of about two low-res cells; per axis and block, the window
of low-res samples its pixels depend on is known in advance (:class:`_AxisPlan`, cached per geometry), and
integral images of the two "certain" flags classify every block of every mask of a chunk at once. Only the
*mixed* blocks, along the outlines (a few % of the pixels of a real mask), are computed: the four passes as
gathers on the samples each block needs, so their pixels have exactly the bits of the dense computation. The
COCO runs come straight from the blocks: value flips inside mixed blocks, plus flips at block starts (the
first pixel of a block's row segment against the last pixel of the segment before it in column-major order).
No full-resolution float or boolean image is made for such masks.

Masks whose mixed blocks cover much of the image (noise from random weights) take the dense path instead,
one at a time: two ``cv2.resize`` calls, threshold, runs.

Memory. 300 float masks of a 4000x3000 image would be 14 GB. Masks are classified in chunks whose per-mask
bookkeeping fits ``chunk_bytes``, mixed blocks are computed in slices that fit it too, and the dense path
holds one mask at a time: the transient memory is bounded whatever the number of masks.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from segment_everything_contract import rle as rle_codec

from .image import ENCODER_IMAGE_SIZE

MASK_THRESHOLD = 0.0
DEFAULT_CHUNK_BYTES = 16 * 1024 * 1024  # measured: 4x faster per mask than 256 MB chunks (cache-sized)
_CV_MAX_CHANNELS = 512  # OpenCV's CV_CN_MAX

_MAX_MASKS_PER_CHUNK = 64  # beyond this, batching masks saves no more Python overhead
_DENSE_FRACTION = 0.15  # masks with more of their pixels in mixed blocks take the dense path (measured)
_STRING_BATCH_RUNS = 2**16  # run lengths written to strings together (bounds that buffer, amortises calls)
_STRIP_BLOCKS = 256  # mixed blocks computed together (measured: larger strips gain nothing)
_RELATIVE_MARGIN = 2.0**-16  # "certain" margin relative to |threshold|: 4 passes round by < 2**-20


# ------------------------------------------------------------------------------------ OpenCV's coefficients


@functools.lru_cache(maxsize=128)
def linear_taps(src: int, dst: int, clamp_weights: bool) -> tuple[np.ndarray, ...]:
    """Source indices ``i0, i1`` (int64) and float32 weights ``w0, w1`` of OpenCV's ``INTER_LINEAR`` resize of
    one axis from ``src`` to ``dst`` samples: ``out[d] = in[i0[d]] * w0[d] + in[i1[d]] * w1[d]``.

    ``clamp_weights``: OpenCV's horizontal pass (outside the source the weight goes to the border sample:
    ``in[0] * 1 + in[1] * 0``); otherwise its vertical pass (the source index is clamped, the weights kept:
    ``in[0] * w0 + in[0] * w1``, which need not round to ``in[0]``). Shared with the device postprocess
    (:mod:`mobilesamv2.processing.device_masks`), so host and device use the very same coefficients.
    """
    if src < 1 or dst < 1:
        raise ValueError(f"cannot resize {src} samples to {dst}")
    scale = 1.0 / (dst / src)  # OpenCV: inv_scale = (double)dsize / ssize; scale = 1. / inv_scale
    pos = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    i0 = np.floor(pos).astype(np.int64)
    frac = (pos - i0.astype(np.float32)).astype(np.float32)  # exact: pos minus its integer part
    if clamp_weights:
        outside = (i0 < 0) | (i0 >= src - 1)
        frac[outside] = 0.0
        i0 = np.clip(i0, 0, src - 1)
        i1 = np.minimum(i0 + 1, src - 1)
    else:
        i1 = np.clip(i0 + 1, 0, src - 1)
        i0 = np.clip(i0, 0, src - 1)
    return i0, i1, (np.float32(1.0) - frac).astype(np.float32), frac


@dataclass(frozen=True, eq=False)
class _AxisPlan:
    """One axis of the composite resize ``src -> 1024 -> [:crop] -> size``, cut into output blocks.

    Per block ``j`` (``block`` outputs, the last block padded by repeating the last output): ``src[j]`` are
    the low-res samples it depends on; ``first`` (``i0, i1, w0, w1``, each ``(count, n_mid)``) makes the
    needed 1024-frame samples from them (indices into ``src[j]``), ``second`` (each ``(count, block)``) the
    outputs from those (indices into the needed mid samples). ``lo, hi``: the block's low-res window
    (inclusive), a superset of ``src[j]``.
    """

    size: int
    block: int
    count: int
    src: np.ndarray
    first: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    second: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    lo: np.ndarray
    hi: np.ndarray

    @property
    def padded(self) -> int:
        return self.count * self.block


def _padded_rows(rows: list[np.ndarray]) -> np.ndarray:
    width = max(len(r) for r in rows)
    return np.stack([np.pad(r, (0, width - len(r)), mode="edge") for r in rows])


def _positions(table: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Row-wise ``searchsorted``: where each of ``values[j]`` sits in the sorted ``table[j]``."""
    return np.stack([np.searchsorted(t, v) for t, v in zip(table, values, strict=True)])


@functools.lru_cache(maxsize=64)
def _axis_plan(src: int, crop: int, size: int, clamp_weights: bool, block: int) -> _AxisPlan:
    f0, f1, fw0, fw1 = (a[:crop] for a in linear_taps(src, ENCODER_IMAGE_SIZE, clamp_weights))
    s0, s1, sw0, sw1 = linear_taps(crop, size, clamp_weights)
    count = -(-size // block)
    out = np.minimum(np.arange(count * block), size - 1).reshape(count, block)
    mids = _padded_rows([np.unique(np.concatenate((s0[o], s1[o]))) for o in out])
    srcs = _padded_rows([np.unique(np.concatenate((f0[m], f1[m]))) for m in mids])
    first = (_positions(srcs, f0[mids]), _positions(srcs, f1[mids]), fw0[mids], fw1[mids])
    second = (_positions(mids, s0[out]), _positions(mids, s1[out]), sw0[out], sw1[out])
    return _AxisPlan(size, block, count, srcs, first, second, srcs.min(1), srcs.max(1))


def _block_size(src: int, crop: int, size: int) -> int:
    """Block edge along an axis, in output pixels: a multiple of 8 near 8 + one low-res cell (measured)."""
    cell = size / (crop * src / ENCODER_IMAGE_SIZE)  # output pixels per low-res sample
    return int(np.clip(8 * round((8 + cell) / 8), 8, 64))


# ------------------------------------------------------------------------------------------ the dense path


@contextlib.contextmanager
def _opencv_own_path() -> Iterator[None]:
    """``cv2.resize`` on OpenCV's own code, not Intel IPP's (a per-thread setting, restored afterwards)."""
    before = cv2.ipp.useIPP()
    cv2.ipp.setUseIPP(False)
    try:
        yield
    finally:
        cv2.ipp.setUseIPP(before)


def _resize(x: np.ndarray, width: int, height: int) -> np.ndarray:
    """``cv2.resize`` bilinear; an exact 2x downscale of both axes (which OpenCV would average as INTER_AREA,
    in a channel-dependent order) is done as two one-axis resizes, which are bilinear's formula."""
    out = x
    if x.shape[1] == 2 * width and x.shape[0] == 2 * height:
        out = cv2.resize(out, (width, x.shape[0]), interpolation=cv2.INTER_LINEAR)
    out = cv2.resize(out, (width, height), interpolation=cv2.INTER_LINEAR)
    return out if out.ndim == x.ndim else out[..., None]  # OpenCV drops a single channel


def iter_upsampled_transposed(
    low_res_logits: np.ndarray,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> Iterator[np.ndarray]:
    """Yield full-resolution logits of consecutive chunks of masks as float32 ``(w, h, k)`` (transposed,
    channels last), computed densely. ``low_res_logits`` is ``(N, 256, 256)`` float32."""
    n = low_res_logits.shape[0]
    new_h, new_w = input_size
    h, w = original_size
    per_mask = max(h * w, ENCODER_IMAGE_SIZE**2) * 4
    chunk = int(max(1, min(_CV_MAX_CHANNELS, chunk_bytes // per_mask)))
    for start in range(0, n, chunk):
        # (k, 256, 256) -> transposed, channels last: (256[x], 256[y], k)
        block = np.ascontiguousarray(
            low_res_logits[start : start + chunk].transpose(2, 1, 0), dtype=np.float32
        )
        with _opencv_own_path():  # not across the yield: the caller's code runs with its own setting
            up = _resize(block, ENCODER_IMAGE_SIZE, ENCODER_IMAGE_SIZE)
            up = np.ascontiguousarray(up[:new_w, :new_h])
            # transposed frame: rows are x (w of them), columns are y (h of them)
            out = _resize(up, h, w)
        yield out


def _dense_transposed(
    logits: np.ndarray, input_size: tuple[int, int], original_size: tuple[int, int], threshold: float
) -> np.ndarray:
    """One mask ``(Y, X)`` the dense way: its thresholded full-resolution mask, transposed ``(w, h)``."""
    (up,) = iter_upsampled_transposed(logits[None], input_size, original_size, chunk_bytes=1)  # one mask
    return up[:, :, 0] > threshold


# ------------------------------------------------------------------------------------- the outline blocks


def _classify(lo: np.ndarray, py: _AxisPlan, px: _AxisPlan, threshold: float) -> np.ndarray:
    """Block states ``(k, px.count, py.count)`` int8 of logits ``lo (k, Y, X)``: 1 where every pixel of the
    block is certainly above ``threshold``, 0 certainly not, 2 mixed (to compute). A block is certain when all
    the low-res samples of its window are, counted with integral images."""
    k, ny, nx = lo.shape
    margin = abs(threshold) * _RELATIVE_MARGIN + 1e-30  # 1e-30: products of tiny logits never underflow to 0
    flags = [lo > threshold + margin, lo < threshold - margin]
    if not np.isfinite(lo).all():  # inf * 0 (a zero weight) is NaN: non-finite logits are never certain
        flags = [f & np.isfinite(lo) for f in flags]
    sums = np.empty((2, k, ny + 1, nx + 1), np.int32)
    for f, s in zip(flags, sums, strict=True):
        for i in range(k):
            cv2.integral(f[i].view(np.uint8), s[i])
    ys, xs = np.concatenate((py.hi + 1, py.lo)), np.concatenate((px.hi + 1, px.lo))
    corners = sums[:, :, ys[:, None], xs[None, :]]  # (2, k, 2 nQ, 2 nP)
    nq, n_p = py.count, px.count
    counts = corners[:, :, :nq, :n_p] - corners[:, :, nq:, :n_p] - corners[:, :, :nq, n_p:]
    counts += corners[:, :, nq:, n_p:]
    full = counts == (py.hi - py.lo + 1)[:, None] * (px.hi - px.lo + 1)[None, :]  # (2, k, nQ, nP)
    states = np.full((k, nq, n_p), 2, np.int8)
    states[full[0]] = 1
    states[full[1]] = 0
    return states.transpose(0, 2, 1)


def _lerp_columns(
    x: np.ndarray, i0: np.ndarray, i1: np.ndarray, w0: np.ndarray, w1: np.ndarray
) -> np.ndarray:
    """``x[:, i0] * w0 + x[:, i1] * w1``, rounded as OpenCV does (two rounded products, one rounded sum)."""
    out = x[:, i0]
    out *= w0
    other = x[:, i1]
    other *= w1
    out += other
    return out


def _lerp_rows(x: np.ndarray, i0: np.ndarray, i1: np.ndarray, w0: np.ndarray, w1: np.ndarray) -> np.ndarray:
    """``x[i0] * w0 + x[i1] * w1`` per row, rounded as OpenCV does."""
    out = x[i0]
    out *= w0[:, None]
    other = x[i1]
    other *= w1[:, None]
    out += other
    return out


def _mixed_pixels(
    lo: np.ndarray,
    pp: np.ndarray,
    kk: np.ndarray,
    qq: np.ndarray,
    py: _AxisPlan,
    px: _AxisPlan,
    threshold: float,
    max_blocks: int,
) -> np.ndarray:
    """Thresholded full-resolution pixels ``(nb, px.block, py.block)`` of the mixed blocks ``(pp, qq)`` of
    masks ``kk``, sorted by ``pp``: the four passes (y, x, y, x) on the low-res samples each block needs.

    Blocks in the same block row ``p`` share their x taps, so they are computed together, at most
    ``max_blocks`` at a time, as one strip: rows are x samples, columns the y samples of the blocks side by
    side. Passes along x then gather whole rows, passes along y one index array over the columns.
    """
    nb = kk.size
    bx, by = px.block, py.block
    n_iy, n_my = py.src.shape[1], py.first[0].shape[1]
    starts = np.union1d(np.flatnonzero(np.diff(pp, prepend=-1)), np.arange(0, nb, max_blocks))
    ends = np.append(starts[1:], nb)
    slot = np.arange(nb) - np.repeat(starts, ends - starts)  # position of each block in its strip
    # y taps of every block, as column indices of its strip
    src_mask, src_y = np.repeat(kk, n_iy), py.src[qq].reshape(-1)
    first = [(t[qq] + (slot * n_iy)[:, None]).reshape(-1) for t in py.first[:2]]
    first += [t[qq].reshape(-1) for t in py.first[2:]]
    second = [(t[qq] + (slot * n_my)[:, None]).reshape(-1) for t in py.second[:2]]
    second += [t[qq].reshape(-1) for t in py.second[2:]]
    out = np.empty((nb, bx, by), bool)
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        p = pp[a]
        cols = slice(a * n_iy, b * n_iy)
        strip = lo[src_mask[None, cols], src_y[None, cols], px.src[p][:, None]]  # (x low-res, y low-res)
        cols = slice(a * n_my, b * n_my)
        strip = _lerp_columns(strip, *(t[cols] for t in first))  # (x low-res, y mid)
        strip = _lerp_rows(strip, *(t[p] for t in px.first))  # (x mid, y mid)
        cols = slice(a * by, b * by)
        strip = _lerp_columns(strip, *(t[cols] for t in second))  # (x mid, y)
        strip = _lerp_rows(strip, *(t[p] for t in px.second))  # (x, y)
        out[a:b] = (strip > threshold).reshape(bx, b - a, by).transpose(1, 0, 2)
    return out


def _block_bytes(py: _AxisPlan, px: _AxisPlan) -> int:
    """Transient bytes per mixed block in :func:`_mixed_pixels`: its strip's float passes (outputs and
    gathered copies), its pixels, and its y taps (int64 indices, float32 weights)."""
    n_iy, n_ix = py.src.shape[1], px.src.shape[1]
    n_my, n_mx = py.first[0].shape[1], px.first[0].shape[1]
    passes = n_ix * n_my + n_mx * n_my + n_mx * py.block + px.block * py.block
    return 4 * (n_iy * n_ix + 3 * passes) + 2 * px.block * py.block + 16 * n_iy + 24 * (n_my + py.block)


def _flatnonzero_sparse(flags: np.ndarray) -> np.ndarray:
    """``np.flatnonzero`` of a 1-D bool array that is mostly False, reading 8 flags at a time."""
    n = flags.size
    m = n - n % 8
    words = np.flatnonzero(flags[:m].view(np.uint64))
    if words.size * 16 > m // 8:
        return np.flatnonzero(flags)
    hits = (words[:, None] * 8 + np.arange(8)).reshape(-1)
    hits = hits[flags[hits]]
    if m < n:
        hits = np.concatenate((hits, np.flatnonzero(flags[m:]) + m))
    return hits


@dataclass(frozen=True)
class _Geometry:
    input_size: tuple[int, int]
    original_size: tuple[int, int]
    py: _AxisPlan  # along the mask's y: the columns of the transposed frame
    px: _AxisPlan  # along the mask's x: its rows

    @classmethod
    def of(cls, low_res_shape: tuple[int, int], input_size, original_size) -> _Geometry:
        ny, nx = (int(v) for v in low_res_shape)
        new_h, new_w = (min(int(v), ENCODER_IMAGE_SIZE) for v in input_size)
        h, w = (int(v) for v in original_size)
        if min(ny, nx, new_h, new_w, h, w) < 1:
            raise ValueError(f"bad sizes: logits {ny}x{nx}, input {new_h}x{new_w}, image {h}x{w}")
        py = _axis_plan(ny, new_h, h, True, _block_size(ny, new_h, h))  # OpenCV's horizontal pass
        px = _axis_plan(nx, new_w, w, False, _block_size(nx, new_w, w))  # its vertical pass
        return cls((new_h, new_w), (h, w), py, px)


def _sparse_runs(lo: np.ndarray, states: np.ndarray, geo: _Geometry, threshold: float, chunk_bytes: int):
    """COCO run lengths of masks ``lo (k, Y, X)`` from their block ``states``: one int64 array per mask."""
    py, px = geo.py, geo.px
    h, w = geo.original_size
    n = h * w
    k = lo.shape[0]
    bx, by = px.block, py.block
    # First and last pixel of each row segment that a block covers; rows beyond w are padding.
    first = np.repeat(states == 1, bx, axis=1)  # (k, padded w, count y)
    last = first.copy()
    inner = []
    pp, kk, qq = np.nonzero(states.transpose(1, 0, 2) == 2)  # sorted by block row
    step = max(1, chunk_bytes // _block_bytes(py, px))
    for s in range(0, kk.size, step):
        bk, bp, bq = kk[s : s + step], pp[s : s + step], qq[s : s + step]
        pixels = _mixed_pixels(lo, bp, bk, bq, py, px, threshold, _STRIP_BLOCKS)  # (nb, bx, by)
        rows = bp[:, None] * bx + np.arange(bx)
        first[bk[:, None], rows, bq[:, None]] = pixels[:, :, 0]
        last[bk[:, None], rows, bq[:, None]] = pixels[:, :, -1]
        # flips inside the blocks' row segments (padding columns repeat the last one: no flips there)
        flat = pixels.reshape(-1)
        flips = np.empty(flat.size, bool)
        np.not_equal(flat[1:], flat[:-1], out=flips[1:])
        flips[::by] = False
        b, rest = np.divmod(_flatnonzero_sparse(flips), bx * by)
        r, c = np.divmod(rest, by)
        x = bp[b] * bx + r
        keep = x < w
        inner.append(bk[b[keep]] * n + x[keep] * h + bq[b[keep]] * by + c[keep])
    # flips at segment starts: a segment's first pixel against the previous segment's last (column-major
    # order runs through the row segments of the transposed frame; each mask starts after a virtual 0)
    seg_first = first[:, :w].reshape(-1)
    seg_last = last[:, :w].reshape(-1)
    flips = np.empty(seg_first.size, bool)
    np.not_equal(seg_first[1:], seg_last[:-1], out=flips[1:])
    per_mask = w * py.count
    flips[::per_mask] = seg_first[::per_mask]
    mask, seg = np.divmod(_flatnonzero_sparse(flips), per_mask)
    x, q = np.divmod(seg, py.count)
    starts = mask * n + x * h + q * by
    keys = np.sort(np.concatenate([starts, *inner]))
    bounds = np.searchsorted(keys, np.arange(k + 1) * n)
    return [np.diff(np.concatenate(([0], keys[bounds[i] : bounds[i + 1]] - i * n, [n]))) for i in range(k)]


def _iter_masks(
    low_res_logits: np.ndarray,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    threshold: float,
    chunk_bytes: int,
    dense: bool,
) -> Iterator[tuple[np.ndarray | None, np.ndarray | None]]:
    """Per mask, in order: ``(counts, None)`` (COCO run lengths) or, for masks computed densely when
    ``dense``, ``(None, mask_t)`` (the transposed bool mask, ``(w, h)``)."""
    logits = np.asarray(low_res_logits, dtype=np.float32)
    if logits.ndim != 3:
        raise ValueError(f"expected logits (N, H, W), got shape {logits.shape}")
    if logits.shape[0] == 0:
        return
    geo = _Geometry.of(logits.shape[1:], input_size, original_size)
    py, px = geo.py, geo.px
    # per mask: first/last pixel of each row segment (bool), the two flags (bool) and their integrals (int32)
    per_mask = 2 * px.padded * py.count + 10 * (logits.shape[1] + 1) * (logits.shape[2] + 1)
    chunk = int(max(1, min(_MAX_MASKS_PER_CHUNK, chunk_bytes // per_mask)))
    block_pixels = px.block * py.block
    for start in range(0, logits.shape[0], chunk):
        lo = np.ascontiguousarray(logits[start : start + chunk])
        states = _classify(lo, py, px, threshold)
        mixed = (states == 2).sum(axis=(1, 2)) * block_pixels
        dense_masks = mixed > _DENSE_FRACTION * px.padded * py.padded
        if dense_masks.any():
            lo, states = lo[~dense_masks], states[~dense_masks]
        runs = iter(_sparse_runs(lo, states, geo, threshold, chunk_bytes) if len(lo) else [])
        for i, dense_mask in enumerate(dense_masks):
            if not dense_mask:
                yield next(runs), None
                continue
            mask_t = _dense_transposed(logits[start + i], geo.input_size, geo.original_size, threshold)
            yield (None, mask_t) if dense else (rle_codec.mask_to_counts(mask_t.T), None)


# ------------------------------------------------------------------------------------------------- public


def upsample_masks(
    low_res_logits: np.ndarray,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    threshold: float = MASK_THRESHOLD,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> np.ndarray:
    """Full-resolution boolean masks ``(N, h, w)`` (the dense output; RLE is far smaller)."""
    h, w = (int(v) for v in original_size)
    out = np.empty((len(low_res_logits), h, w), bool)
    masks = _iter_masks(low_res_logits, input_size, original_size, threshold, chunk_bytes, dense=True)
    for i, (counts, mask_t) in enumerate(masks):
        if counts is not None:
            rle_codec.decode_into({"size": [h, w], "counts": counts}, out[i])
        else:
            cv2.transpose(mask_t.view(np.uint8), dst=out[i].view(np.uint8))
    return out


def masks_to_rles(
    low_res_logits: np.ndarray,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    threshold: float = MASK_THRESHOLD,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> list[dict]:
    """COCO RLEs (``{"size": [h, w], "counts": str}``) of the thresholded full-resolution masks, one per logit
    map, without ever holding more than one chunk of full-resolution work."""
    h, w = (int(v) for v in original_size)
    strings: list[str] = []
    pending: list[np.ndarray] = []  # run lengths not yet written, encoded together (a few masks' worth)
    pending_runs = 0
    for counts, _ in _iter_masks(low_res_logits, input_size, original_size, threshold, chunk_bytes, False):
        pending.append(counts)
        pending_runs += counts.size
        if pending_runs >= _STRING_BATCH_RUNS:
            strings += rle_codec.counts_to_strings(pending)
            pending, pending_runs = [], 0
    strings += rle_codec.counts_to_strings(pending)
    return [{"size": [h, w], "counts": s} for s in strings]


def mask_areas(
    low_res_logits: np.ndarray,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    threshold: float = MASK_THRESHOLD,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> np.ndarray:
    """Pixels of each full-resolution mask above ``threshold``, int64 ``(N,)``: the run lengths of
    :func:`masks_to_rles` at that threshold, counted without writing strings (SAM's stability score compares
    the areas at ``+1`` and ``-1``, :mod:`.quality`)."""
    masks = _iter_masks(low_res_logits, input_size, original_size, threshold, chunk_bytes, dense=False)
    return np.array([int(counts[1::2].sum()) for counts, _ in masks], np.int64)


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """Tight xyxy boxes (pixel edges, float32) of boolean masks ``(N, h, w)``; zeros for empty masks."""
    out = np.zeros((len(masks), 4), np.float32)
    for i, mask in enumerate(masks):
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        if len(rows):
            out[i] = cols[0], rows[0], cols[-1] + 1, rows[-1] + 1
    return out


def rle_boxes(rles: list[dict]) -> np.ndarray:
    """Tight xyxy boxes of COCO RLE masks (same convention as :func:`mask_boxes`)."""
    xywh = np.array([rle_codec.to_bbox(r) for r in rles], np.float32).reshape(-1, 4)
    xywh[:, 2:] += xywh[:, :2]
    return xywh
