"""Mask post-processing where the logits are (a CUDA device, or the CPU): the torch twin of :mod:`.masks`.

:class:`TorchPostprocessor` implements the pipeline's ``MaskPostprocessor`` protocol for logits held as torch
tensors (any device) or numpy arrays. Per chunk of masks, on the logits' device: bilinear 256 -> 1024, crop
``[:newh, :neww]``, bilinear to ``(h, w)``, ``> 0``, then the COCO RLE runs: the positions where the
column-major pixel sequence flips are found with ``nonzero`` and turned into run lengths there. Only the run
lengths (a few KB per mask) cross to the host, which writes them as COCO strings with
:func:`segment_everything_contract.rle.counts_to_string`.

Same numbers as the host path, bit for bit. Each resize is written as OpenCV's ``INTER_LINEAR`` on float32
computes it: separable, along the transposed frame's columns first (the mask's y) and then its rows (x), with
OpenCV's coefficients (``fx = (float)((dx + 0.5) * scale - 0.5)`` in double with ``scale = 1 / (dst / src)``,
weights ``1 - fx`` and ``fx`` in float; at the borders the column pass clamps the weight and the row pass
clamps the source row) and each output as ``a * w0 + b * w1`` in separate, correctly rounded float32 multiply
and add kernels (no fused multiply-add), so CPU and CUDA give the same bits.
``torch.nn.functional.interpolate`` would not: its coefficients are computed in float and its CUDA kernel
contracts to FMAs, which flips the odd pixel that sits within an ulp of the threshold.

What "the host path" computes is itself not unique, which the tests pin down:
- opencv-python ships with Intel IPP, which takes over ``cv2.resize`` for 1, 3 and 4 channels (the host's
  chunks hold 1 to 4 masks as channels) with different coefficients: unit-scale logits differ by up to
  ~2.5e-4 from OpenCV's own code path, which 2 and >= 5 channels (or ``cv2.ipp.setUseIPP(False)``) take.
  This module reproduces OpenCV's own path; masks from IPP differ by a few pixels per mask along the
  outlines, mostly none on smooth logits.
- an exact 2x downscale in both directions (images whose long side is 512) makes OpenCV average 2x2 blocks
  instead: ``((a + b) + (c + d)) / 4`` for 1 and 4 channels, which is bilinear's result bit for bit (what this
  module computes), but ``(((a + b) + c) + d) / 4`` for the other channel counts.

Memory: a 4000x3000 float mask is 48 MB, so masks are processed in chunks whose transient tensors fit in
``chunk_bytes``; nothing full-resolution outlives its chunk except the dense output's booleans.

torch is imported lazily: this module imports without it (the CPU server's environment has none).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from segment_everything_contract import STABILITY_SCORE_OFFSET
from segment_everything_contract import rle as rle_codec

from .image import ENCODER_IMAGE_SIZE, encoder_input_size
from .masks import DEFAULT_CHUNK_BYTES, MASK_THRESHOLD, linear_taps
from .quality import stability_from_areas

DEFAULT_DEVICE_CHUNK_BYTES = 256 * 2**20
"""Transient accelerator memory per chunk (all full-resolution intermediates of its masks together). The CPU
uses the host path's cache-sized ``DEFAULT_CHUNK_BYTES`` (16 MiB): 3x faster per mask there than 256 MiB."""

LOW_RES_SIZE = 256


# ------------------------------------------------------------------------------------- OpenCV's coefficients


_device_taps_cache: dict[tuple, tuple] = {}


def _device_taps(src: int, dst: int, clamp_weights: bool, keep: int, device) -> tuple:
    """:func:`linear_taps` (its first ``keep`` outputs) as tensors on ``device``, cached."""
    import torch

    key = (src, dst, clamp_weights, keep, str(device))
    taps = _device_taps_cache.get(key)
    if taps is None:
        i0, i1, w0, w1 = (a[:keep] for a in linear_taps(src, dst, clamp_weights))
        taps = tuple(torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in (i0, i1, w0, w1))
        if len(_device_taps_cache) > 256:
            _device_taps_cache.clear()
        _device_taps_cache[key] = taps
    return taps


def _resize_axis(x, dim: int, taps):
    """OpenCV's linear pass along ``dim`` of a float32 tensor: ``x[i0] * w0 + x[i1] * w1``, two roundings per
    product and one per sum (in-place ops: no fused multiply-add, no extra temporaries)."""
    i0, i1, w0, w1 = taps
    shape = [1] * x.dim()
    shape[dim] = -1
    out = x.index_select(dim, i0).mul_(w0.view(shape))
    return out.add_(x.index_select(dim, i1).mul_(w1.view(shape)))


def upsample_transposed(low_res, input_size: tuple[int, int], original_size: tuple[int, int]):
    """Full-resolution logits of ``low_res (k, 256, 256)`` (float32 tensor) as ``(w, h, k)``: transposed and
    channels last, as ``processing.masks.iter_upsampled_transposed`` yields them, with the same bits as it on
    OpenCV's own code path. Every pass gathers whole ``k``-blocks (no gather along the innermost axis)."""
    new_h, new_w = input_size
    h, w = original_size
    side = low_res.shape[-1]
    device = low_res.device
    x = low_res.permute(2, 1, 0)  # (x, y, k): the host's transposed, channels-last frame
    # OpenCV's horizontal pass runs along this frame's columns (the mask's y), then its vertical pass along
    # the rows (x); the crop [:neww, :newh] of the 1024 canvas is folded into the first resize (it keeps the
    # first outputs).
    x = _resize_axis(x, 1, _device_taps(side, ENCODER_IMAGE_SIZE, True, new_h, device))  # (256, newh, k)
    x = _resize_axis(x, 0, _device_taps(side, ENCODER_IMAGE_SIZE, False, new_w, device))  # (neww, newh, k)
    x = _resize_axis(x, 1, _device_taps(new_h, h, True, h, device))  # (neww, h, k)
    return _resize_axis(x, 0, _device_taps(new_w, w, False, w, device))  # (w, h, k)


def run_lengths(binary_t) -> tuple[Any, Any]:
    """COCO run lengths of ``binary_t (k, w, h)`` bool (transposed masks), computed on its device.

    Returns ``(counts, sizes)``: all masks' run lengths concatenated (zeros first; a mask of n pixels with t
    value flips has t + 1 runs, the first possibly empty) and the number of runs of each mask, both int64
    tensors on the same device.
    """
    import torch

    k = binary_t.shape[0]
    flat = binary_t.reshape(k, -1)
    n = flat.shape[1]
    flips = torch.empty_like(flat)
    flips[:, :1] = flat[:, :1]  # a mask starting with ones flips at 0 (its first run of zeros is empty)
    torch.ne(flat[:, 1:], flat[:, :-1], out=flips[:, 1:])
    where = torch.nonzero(flips.reshape(-1)).squeeze(1)  # sorted: mask-major, then position
    owner = torch.div(where, n, rounding_mode="floor")
    position = where - owner * n
    sizes = torch.bincount(owner, minlength=k) + 1
    last = torch.cumsum(sizes, 0) - 1  # slot of each mask's final run
    # Mask i's runs sit at slots first_i .. last_i; its j-th flip ends run j and starts run j + 1.
    slot = torch.arange(where.numel(), device=where.device) + owner
    ends = torch.empty(int(where.numel()) + k, dtype=torch.int64, device=where.device)
    starts = torch.empty_like(ends)
    ends[slot] = position
    ends[last] = n
    starts[slot + 1] = position
    starts[last - sizes + 1] = 0
    return ends - starts, sizes


# ----------------------------------------------------------------------------------------- the postprocessor


@dataclass(frozen=True)
class TorchPostprocessor:
    """The pipeline's ``MaskPostprocessor`` where the logits are: torch tensors stay on their device (CUDA on
    a GPU server), numpy logits go to ``device`` (default: the CPU).

    Args:
        chunk_bytes: transient memory per chunk of masks (all intermediates of its masks together); ``None``:
            :data:`DEFAULT_DEVICE_CHUNK_BYTES` on an accelerator, the host path's 16 MiB on the CPU.
        device: where numpy logits are processed (``None``: CPU); tensors are processed where they are.
        threshold: mask threshold on the logits.
    """

    chunk_bytes: int | None = None
    device: str | None = None
    threshold: float = MASK_THRESHOLD

    # --- the protocol -------------------------------------------------------------------------------------

    def rles(self, logits: Any, input_size: tuple[int, int], image_size: tuple[int, int]) -> list[dict]:
        import torch

        h, w = (int(v) for v in image_size)
        out: list[dict] = []
        for block in self._binary_chunks(logits, input_size, (h, w)):
            counts, sizes = run_lengths(block.permute(2, 0, 1).contiguous())  # (k, w, h): column-major masks
            if h * w < 2**31:
                counts = counts.to(torch.int32)  # half the bytes to copy
            counts_host = counts.cpu().numpy()
            bounds = np.cumsum(sizes.cpu().numpy())[:-1]
            out.extend(
                {"size": [h, w], "counts": rle_codec.counts_to_string(c)}
                for c in np.split(counts_host, bounds)
            )
        return out

    def dense(self, logits: Any, input_size: tuple[int, int], image_size: tuple[int, int]) -> np.ndarray:
        import torch

        h, w = (int(v) for v in image_size)
        x = self._as_tensor(logits)
        out = np.empty((x.shape[0], h, w), dtype=bool)
        start = 0
        for block in self._binary_chunks(x, input_size, (h, w)):
            k = block.shape[2]
            torch.from_numpy(out[start : start + k]).copy_(block.permute(2, 1, 0).contiguous())  # (k, h, w)
            start += k
        return out

    def to_host(self, logits: Any) -> np.ndarray:
        import torch

        if isinstance(logits, torch.Tensor):
            return logits.detach().to(device="cpu", dtype=torch.float32).numpy()
        return np.asarray(logits, dtype=np.float32)

    def concatenate(self, parts: list[Any]) -> Any:
        """Tensors are joined on their device (a request split into several decoder calls stays there);
        anything else on the host."""
        import torch

        if all(isinstance(part, torch.Tensor) for part in parts):
            return torch.cat([part.detach() for part in parts])
        return np.concatenate([self.to_host(part) for part in parts])

    # --- start-up -----------------------------------------------------------------------------------------

    def warm_up(
        self, devices: list[str] | None = None, image_size: tuple[int, int] = (768, 1024)
    ) -> list[str]:
        """Import torch, create each device's CUDA context and run the postprocess once there (kernels, the
        resize coefficients of a typical image), so that the first request of a model instance does not pay
        for it: seconds each, once per instance, enough for the first requests after a start to miss a
        liveness probe's deadline. ``devices``: every visible GPU, else the CPU. Returns them."""
        import torch

        if devices is None:
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            devices = [f"cuda:{i}" for i in range(count)] or ["cpu"]
        input_size = encoder_input_size(*image_size)
        for device in devices:
            self.rles(torch.zeros((1, LOW_RES_SIZE, LOW_RES_SIZE), device=device), input_size, image_size)
        return devices

    # --- chunks -------------------------------------------------------------------------------------------

    def masks_per_chunk(
        self, input_size: tuple[int, int], image_size: tuple[int, int], device_type: str = "cuda"
    ) -> int:
        """How many masks one chunk holds within ``chunk_bytes``: the peak per mask is a resize pass (its
        input, output and second product, float32) or the run extraction (the mask, its transposed copy, the
        flips and up to n/8 flip positions with their int64 bookkeeping)."""
        new_h, new_w = input_size
        h, w = image_size
        side = LOW_RES_SIZE
        sizes = [side * side, side * new_h, new_w * new_h, new_w * h, w * h]
        resize_peak = max(4 * (sizes[i] + 2 * sizes[i + 1]) for i in range(len(sizes) - 1))
        budget = self.chunk_bytes
        if budget is None:
            budget = DEFAULT_CHUNK_BYTES if device_type == "cpu" else DEFAULT_DEVICE_CHUNK_BYTES
        return max(1, int(budget // max(resize_peak, 8 * w * h)))

    def _as_tensor(self, logits: Any):
        import torch

        if isinstance(logits, torch.Tensor):
            x = logits.detach()
        else:
            x = torch.from_numpy(np.ascontiguousarray(np.asarray(logits, dtype=np.float32)))
            if self.device is not None:
                x = x.to(self.device)
        if x.dim() < 2:
            raise ValueError(f"expected logits (..., H, W), got shape {tuple(x.shape)}")
        count = int(np.prod(x.shape[:-2], dtype=np.int64))
        return x.reshape(count, *x.shape[-2:])

    def stability_scores(
        self, logits: Any, input_size: tuple[int, int], image_size: tuple[int, int]
    ) -> np.ndarray:
        """SAM's stability score per mask (``processing.quality``): both areas are counted on the device, per
        chunk of upsampled logits; only two integers per mask reach the host."""
        import torch

        offset = STABILITY_SCORE_OFFSET
        high, low = [], []
        for up in self._upsampled_chunks(logits, input_size, image_size):
            high.append((up > self.threshold + offset).sum(dim=(0, 1)))
            low.append((up > self.threshold - offset).sum(dim=(0, 1)))
        if not high:
            return np.zeros(0, np.float32)
        areas = torch.stack((torch.cat(high), torch.cat(low))).cpu().numpy()
        return stability_from_areas(areas[0], areas[1])

    def _binary_chunks(self, logits: Any, input_size: tuple[int, int], image_size: tuple[int, int]):
        """Yield ``(w, h, k)`` bool tensors (transposed masks, channels last) for consecutive chunks."""
        for up in self._upsampled_chunks(logits, input_size, image_size):
            yield up > self.threshold

    def _upsampled_chunks(self, logits: Any, input_size: tuple[int, int], image_size: tuple[int, int]):
        """Yield the full-resolution logits ``(w, h, k)`` (transposed, channels last) of each chunk."""
        x = self._as_tensor(logits)
        if tuple(x.shape[-2:]) != (LOW_RES_SIZE, LOW_RES_SIZE):
            raise ValueError(f"expected {LOW_RES_SIZE}x{LOW_RES_SIZE} logits, got shape {tuple(x.shape)}")
        input_size = (int(input_size[0]), int(input_size[1]))
        step = self.masks_per_chunk(input_size, image_size, x.device.type)
        for start in range(0, x.shape[0], step):
            block = x[start : start + step].float()
            yield upsample_transposed(block, input_size, image_size)
