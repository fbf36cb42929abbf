"""SAM building blocks: the prompt encoder + mask decoder and the TinyViT / ViT image encoders.

ultralytics' SAM modules use the official module names (``image_encoder.*``, ``prompt_encoder.*``,
``mask_decoder.*``), so official state dicts load into them as they are.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

EMBED_DIM = 256
IMAGE_SIZE = 1024
EMBEDDING_SIZE = 64  # IMAGE_SIZE // 16


def build_prompt_encoder() -> nn.Module:
    from ultralytics.models.sam.modules.encoders import PromptEncoder

    return PromptEncoder(
        embed_dim=EMBED_DIM,
        image_embedding_size=(EMBEDDING_SIZE, EMBEDDING_SIZE),
        input_image_size=(IMAGE_SIZE, IMAGE_SIZE),
        mask_in_chans=16,
    )


def build_mask_decoder() -> nn.Module:
    from ultralytics.models.sam.modules.decoders import MaskDecoder
    from ultralytics.models.sam.modules.transformer import TwoWayTransformer

    return MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=EMBED_DIM, mlp_dim=2048, num_heads=8),
        transformer_dim=EMBED_DIM,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )


def _exportable_patch_merging() -> type:
    from ultralytics.models.sam.modules.tiny_encoder import PatchMerging

    class ExportablePatchMerging(PatchMerging):
        """ultralytics' PatchMerging reads the batch with ``len(x)``, which torch.export turns into a constant
        (an ONNX graph with a fixed batch); ``x.shape[0]`` stays symbolic. Same computation otherwise."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.ndim == 3:
                h, w = self.input_resolution
                x = x.view(x.shape[0], h, w, -1).permute(0, 3, 1, 2)
            x = self.act(self.conv1(x))
            x = self.act(self.conv2(x))
            return self.conv3(x).flatten(2).transpose(1, 2)

    return ExportablePatchMerging


def build_tiny_vit() -> nn.Module:
    """MobileSAM's TinyViT-5M image encoder (1024x1024 input, 256x64x64 output)."""
    from ultralytics.models.sam.modules.tiny_encoder import PatchMerging, TinyViT

    model = _tiny_vit(TinyViT)
    merging = _exportable_patch_merging()
    for module in model.modules():
        if type(module) is PatchMerging:
            module.__class__ = merging
    return model


def _tiny_vit(TinyViT: type) -> nn.Module:
    return TinyViT(
        img_size=IMAGE_SIZE,
        in_chans=3,
        num_classes=1000,
        embed_dims=[64, 128, 160, 320],
        depths=[2, 2, 6, 2],
        num_heads=[2, 4, 5, 10],
        window_sizes=[7, 7, 14, 7],
        mlp_ratio=4.0,
        drop_rate=0.0,
        drop_path_rate=0.0,
        use_checkpoint=False,
        mbconv_expand_ratio=4.0,
        local_conv_size=3,
        layer_lr_decay=0.8,
    )


VIT_H = {"embed_dim": 1280, "depth": 32, "num_heads": 16, "global_attn_indexes": (7, 15, 23, 31)}


def build_vit(
    embed_dim: int = VIT_H["embed_dim"],
    depth: int = VIT_H["depth"],
    num_heads: int = VIT_H["num_heads"],
    global_attn_indexes: tuple[int, ...] = VIT_H["global_attn_indexes"],
) -> nn.Module:
    """SAM's ViT image encoder; the defaults are ViT-H (``sam_vit_h_4b8939.pth``)."""
    from ultralytics.models.sam.modules.encoders import ImageEncoderViT

    return ImageEncoderViT(
        depth=depth,
        embed_dim=embed_dim,
        img_size=IMAGE_SIZE,
        mlp_ratio=4,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        num_heads=num_heads,
        patch_size=16,
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=tuple(global_attn_indexes),
        window_size=14,
        out_chans=EMBED_DIM,
    )


class PromptDecoder(nn.Module):
    """Prompt encoder + mask decoder as one graph: one image embedding, N prompts -> N single masks.

    Prompts are SAM's point form: ``point_coords (N, P, 2)`` in the 1024 encoder frame and
    ``point_labels (N, P)`` with 1 = foreground, 0 = background, -1 = padding, 2 / 3 = box top-left /
    bottom-right. A box as the two labelled corners gives exactly the prompt encoder's box embedding. The
    dense prompt is ``no_mask_embed`` (no mask input), broadcast rather than repeated N times. Output is
    MobileSAMv2's single mask (mask token 0) and its IoU prediction, written with arithmetic instead of
    boolean indexing so it exports with a dynamic N.
    """

    def __init__(self, prompt_encoder: nn.Module, mask_decoder: nn.Module) -> None:
        super().__init__()
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder

    def embed_points(self, point_coords: torch.Tensor, point_labels: torch.Tensor) -> torch.Tensor:
        pe_layer = self.prompt_encoder.pe_layer
        coords = (point_coords + 0.5) / IMAGE_SIZE
        coords = (2 * coords - 1) @ pe_layer.positional_encoding_gaussian_matrix
        coords = 2 * torch.pi * coords
        embedding = torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)
        labels = point_labels.unsqueeze(-1)
        is_padding = (labels == -1).to(embedding.dtype)
        embedding = embedding * (1 - is_padding) + self.prompt_encoder.not_a_point_embed.weight * is_padding
        for i, point_embedding in enumerate(self.prompt_encoder.point_embeddings):
            embedding = embedding + point_embedding.weight * (labels == i).to(embedding.dtype)
        return embedding

    def forward(
        self, image_embeddings: torch.Tensor, point_coords: torch.Tensor, point_labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        sparse = self.embed_points(point_coords, point_labels)
        dense = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(
            1, -1, EMBEDDING_SIZE, EMBEDDING_SIZE
        )
        masks, iou_predictions = self.mask_decoder.predict_masks(
            image_embeddings=image_embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
        )
        return masks[:, :1], iou_predictions[:, :1]


class InteractiveDecoder(nn.Module):
    """SAM's decoder as its interactive predictor uses it: every output token and an optional previous mask.

    Same prompts as :class:`PromptDecoder`, plus ``mask_input (N, 1, 256, 256)`` (an earlier prediction's
    low-res logits, SAM's refinement input) with ``has_mask_input (N,)`` (1 where a mask is given, else the
    dense prompt is ``no_mask_embed``, exactly like SAM's ONNX export). Outputs all four mask tokens
    ``(N, 4, 256, 256)`` and their IoU predictions ``(N, 4)``: token 0 is the single-mask answer, tokens 1-3
    SAM's three multimask candidates. The dense prompt differs per prompt here, so the image side cannot be
    shared across prompts as :class:`~mobilesamv2.modeling.fast_decoder.FactorizedPromptDecoder` does: this
    graph serves few prompts (clicks), the factorized one serves SegEvery's hundreds.
    """

    def __init__(self, decoder: PromptDecoder) -> None:
        super().__init__()
        self.decoder = decoder  # shares the weights

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        prompt_encoder = self.decoder.prompt_encoder
        sparse = self.decoder.embed_points(point_coords, point_labels)
        given = has_mask_input.reshape(-1, 1, 1, 1)
        dense = given * prompt_encoder.mask_downscaling(mask_input) + (1 - given) * (
            prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        )
        return self.decoder.mask_decoder.predict_masks(
            image_embeddings=image_embeddings,
            image_pe=prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
        )
