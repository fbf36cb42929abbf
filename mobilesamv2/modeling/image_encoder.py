"""The image encoder as served: SAM's normalisation and zero padding inside the graph.

Input is the uint8 ``(B, 1024, 1024, 3)`` RGB canvas made by ``processing.image.encoder_canvas`` (resized
image at the top-left, anything in the rest) and its valid ``(B, 2)`` ``[newh, neww]``. Doing the
normalisation in the graph keeps the request 4x smaller (uint8) and lets images of any aspect ratio share one
batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..processing.image import ENCODER_IMAGE_SIZE, PIXEL_MEAN, PIXEL_STD


class ImageEncoderGraph(nn.Module):
    """uint8 canvas + valid size -> ``(B, 256, 64, 64)`` image embeddings."""

    def __init__(self, encoder: nn.Module, input_pool: int = 1) -> None:
        super().__init__()
        self.encoder = encoder
        self.input_pool = input_pool
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("positions", torch.arange(ENCODER_IMAGE_SIZE), persistent=False)

    def forward(self, image: torch.Tensor, image_size: torch.Tensor) -> torch.Tensor:
        # Cast first: TensorRT takes a uint8 input only as the direct input of a Cast (NVIDIA/TensorRT#3985),
        # so the graph must read uint8 -> Cast -> Transpose, not uint8 -> Transpose -> Cast.
        x = (image.float().permute(0, 3, 1, 2) - self.pixel_mean) / self.pixel_std
        rows = self.positions.unsqueeze(0) < image_size[:, 0:1]
        cols = self.positions.unsqueeze(0) < image_size[:, 1:2]
        # SAM pads *after* normalising, so the padding is exactly zero
        x = x * (rows[:, None, :, None] & cols[:, None, None, :]).to(x.dtype)
        if self.input_pool > 1:
            # == the reference's bilinear halving (align_corners=False, exact factor 2)
            x = F.avg_pool2d(x, self.input_pool)
        return self.encoder(x)
