"""The prompt decoder reorganised for SegEvery's many prompts on one image: same weights, same outputs.

SAM's two-way transformer repeats the image embedding once per prompt and projects all 4096 image tokens in
every attention of every prompt. With box or point prompts and no mask input, the image-side input of the
first layer (image embedding + ``no_mask_embed``, and its positional encoding) is the same for every prompt,
and most projections can be moved to the 7-token side by associativity. Per prompt this turns 3.6 GFLOP into
~1.6:

- layer 0, token->image: keys and values of the image tokens are computed **once per call**, not per prompt;
- layer 0, image->token: the queries of the image tokens, likewise once per call;
- every image->token attention: ``softmax(Q K^T) V W_o = P (V W_o)`` with ``P`` (4096 x 7 per head), so the
  output projection costs a (4096 x 56) @ (56 x 256) product instead of (4096 x 128) @ (128 x 256), and in
  layer 1 the image-side query projection folds into the 7 token keys (``Q K^T = X (W_q K^T)``);
- every token->image attention (7 queries): ``(q W_q)(X W_k)^T = (q W_q W_k^T) X^T`` and
  ``P (X W_v) = (P X) W_v``: no projection of the 4096 image tokens at all;
- only mask token 0 (MobileSAMv2's single-mask output) goes through its hypernetwork MLP.

Softmax rows sum to one, so biases of key projections cancel (they shift all logits of a row equally) and
value biases pass through unchanged; both are kept exactly where they matter. Results equal the reference
decoder to float rounding (logits within 1e-4 in FP32), tested at N = 1, 7, 64, 300.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .sam import EMBEDDING_SIZE, PromptDecoder


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(..., T, H*D) -> (..., H, T, D)"""
    *lead, t, c = x.shape
    return x.reshape(*lead, t, heads, c // heads).transpose(-3, -2)


def _head_weights(linear: nn.Linear, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A projection's weight split per head: (H, D, in) and bias (H, D)."""
    out, inp = linear.weight.shape
    return linear.weight.reshape(heads, out // heads, inp), linear.bias.reshape(heads, out // heads)


class FactorizedPromptDecoder(nn.Module):
    """Drop-in for :class:`PromptDecoder` (same inputs, outputs and weights), organised for many prompts."""

    def __init__(self, decoder: PromptDecoder) -> None:
        super().__init__()
        self.decoder = decoder  # shares the weights; no parameter of its own
        transformer = decoder.mask_decoder.transformer
        assert len(transformer.layers) == 2 and transformer.layers[0].skip_first_layer_pe
        self.heads = transformer.layers[0].cross_attn_token_to_image.num_heads

    # --- attentions in their factorised forms ---------------------------------------------------------------

    def _token_to_image(
        self, attn, q_tokens: torch.Tensor, keys_pe: torch.Tensor, values: torch.Tensor
    ) -> torch.Tensor:
        """7 token queries attend to the image tokens ``keys_pe`` / ``values`` (N, 4096, 256) without
        projecting them: scores = (q W_q + b_q) W_k^T X^T (+ a per-row constant that softmax removes),
        out = (P X) W_v + b_v."""
        h = self.heads
        wq, _bq = _head_weights(attn.q_proj, h)
        wk, _ = _head_weights(attn.k_proj, h)
        wv, bv = _head_weights(attn.v_proj, h)
        d = wq.shape[1]
        q = _heads(F.linear(q_tokens, attn.q_proj.weight, attn.q_proj.bias), h)  # (N, H, T, D)
        a = torch.matmul(q, wk) / math.sqrt(d)  # (N, H, T, 256): query folded into the key projection
        n, _, t, c = a.shape
        scores = torch.matmul(a.reshape(n, h * t, c), keys_pe.transpose(1, 2))  # (N, H*T, 4096)
        p = torch.softmax(scores, dim=-1)
        mixed = torch.matmul(p, values).reshape(n, h, t, c)  # (N, H, T, 256)
        out = torch.matmul(mixed, wv.transpose(1, 2)) + bv[:, None, :]  # (N, H, T, D)
        out = out.transpose(1, 2).reshape(n, t, h * d)
        return attn.out_proj(out)

    def _token_to_image_shared(
        self, attn, q_tokens: torch.Tensor, k_img: torch.Tensor, v_img: torch.Tensor
    ) -> torch.Tensor:
        """Layer 0: image keys/values projected once per call, (H, 4096, D)."""
        h = self.heads
        q = _heads(attn.q_proj(q_tokens), h)  # (N, H, T, D)
        scores = torch.matmul(q, k_img.transpose(-1, -2).unsqueeze(0)) / math.sqrt(q.shape[-1])
        out = torch.matmul(torch.softmax(scores, dim=-1), v_img.unsqueeze(0))  # (N, H, T, D)
        n, _, t, d = out.shape
        return attn.out_proj(out.transpose(1, 2).reshape(n, t, h * d))

    def _image_to_token(self, attn, scores: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Image queries' attention ``scores`` (N, H, 4096, T) over the tokens -> (N, 4096, 256), with the
        output projection folded into the 7 token values: P (V W_o)."""
        h = self.heads
        p = torch.softmax(scores, dim=-1)
        v = _heads(attn.v_proj(tokens), h)  # (N, H, T, D)
        wo = attn.out_proj.weight.reshape(-1, h, v.shape[-1]).permute(1, 2, 0)  # (H, D, 256)
        m = torch.matmul(v, wo)  # (N, H, T, 256)
        n, _, q_len, t = p.shape
        out = torch.matmul(p.permute(0, 2, 1, 3).reshape(n, q_len, h * t), m.reshape(n, h * t, -1))
        return out + attn.out_proj.bias

    # --- forward --------------------------------------------------------------------------------------------

    def forward(
        self, image_embeddings: torch.Tensor, point_coords: torch.Tensor, point_labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pe_module, md = self.decoder.prompt_encoder, self.decoder.mask_decoder
        transformer, h = md.transformer, self.heads
        layer0, layer1 = transformer.layers
        sparse = self.decoder.embed_points(point_coords, point_labels)
        n = sparse.shape[0]
        output_tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(n, -1, -1), sparse], dim=1)  # (N, T, 256)

        # image side, once per call
        src = (
            (image_embeddings[0] + pe_module.no_mask_embed.weight.reshape(-1, 1, 1)).flatten(1).T
        )  # (4096, 256)
        pos = pe_module.get_dense_pe()[0].flatten(1).T  # (4096, 256)
        src_pos = src + pos
        k0 = _heads(layer0.cross_attn_token_to_image.k_proj(src_pos), h)  # (H, 4096, D)
        v0 = _heads(layer0.cross_attn_token_to_image.v_proj(src), h)
        i2t0 = layer0.cross_attn_image_to_token
        q0 = _heads(i2t0.q_proj(src_pos), h) / math.sqrt(i2t0.internal_dim // h)  # (H, 4096, D)

        # layer 0 (skip_first_layer_pe: no residual, no PE in the self-attention)
        queries = layer0.norm1(layer0.self_attn(q=tokens, k=tokens, v=tokens))
        queries = layer0.norm2(
            queries + self._token_to_image_shared(layer0.cross_attn_token_to_image, queries + tokens, k0, v0)
        )
        queries = layer0.norm3(queries + layer0.mlp(queries))
        k_tok = _heads(i2t0.k_proj(queries + tokens), h)  # (N, H, T, D)
        scores = torch.matmul(q0.unsqueeze(0), k_tok.transpose(-1, -2))  # (N, H, 4096, T)
        keys = layer0.norm4(src.unsqueeze(0) + self._image_to_token(i2t0, scores, queries))  # (N, 4096, 256)

        # layer 1
        q = queries + tokens
        queries = layer1.norm1(queries + layer1.self_attn(q=q, k=q, v=queries))
        keys_pe = keys + pos
        queries = layer1.norm2(
            queries + self._token_to_image(layer1.cross_attn_token_to_image, queries + tokens, keys_pe, keys)
        )
        queries = layer1.norm3(queries + layer1.mlp(queries))
        i2t1 = layer1.cross_attn_image_to_token
        wq, bq = _head_weights(i2t1.q_proj, h)  # (H, D, 256), (H, D)
        k_tok = _heads(i2t1.k_proj(queries + tokens), h)  # (N, H, T, D)
        d = wq.shape[1]
        b = torch.matmul(k_tok, wq.unsqueeze(0)) / math.sqrt(
            d
        )  # (N, H, T, 256): image query projection folded in
        bias = torch.matmul(k_tok, bq[None, :, :, None]) / math.sqrt(d)  # (N, H, T, 1)
        t = b.shape[2]
        scores = torch.matmul(keys_pe, b.reshape(n, h * t, -1).transpose(1, 2))  # (N, 4096, H*T)
        scores = (
            (scores + bias.reshape(n, 1, h * t)).reshape(n, -1, h, t).permute(0, 2, 1, 3)
        )  # (N, H, 4096, T)
        keys = layer1.norm4(keys + self._image_to_token(i2t1, scores, queries))

        # final token -> image attention
        attn_out = self._token_to_image(
            transformer.final_attn_token_to_image, queries + tokens, keys + pos, keys
        )
        queries = transformer.norm_final_attn(queries + attn_out)

        # masks from mask token 0 only; IoU from the IoU token
        hyper = md.output_hypernetworks_mlps[0](queries[:, 1])  # (N, 32)
        masks = self._upscale_and_project(keys, hyper)
        iou = md.iou_prediction_head(queries[:, 0])[:, :1]
        return masks, iou

    def _upscale_and_project(self, keys: torch.Tensor, hyper: torch.Tensor) -> torch.Tensor:
        """SAM's output upscaling (two 2x2 stride-2 transposed convolutions, LayerNorm2d, GELUs) and the
        hypernetwork product, channels-last. A stride-2 2x2 transposed convolution has no overlapping taps: it
        is a matmul per pixel (C -> 4 C') followed by depth-to-space. Keeping the sub-pixel axes apart until
        the very end makes every step a plain matmul / LayerNorm over the last axis, and only the final
        (N, 256, 256) logits get rearranged, instead of transposing (N, 256, 64, 64) activations into NCHW for
        convolutions."""
        up1, norm, _, up2, _ = self.decoder.mask_decoder.output_upscaling
        n, s = keys.shape[0], EMBEDDING_SIZE
        c1, c2 = up1.weight.shape[1], up2.weight.shape[1]
        # (N*4096, 256) @ (256, 2*2*64) + bias -> (N, y, x, i, j, 64); 2-D so that the bias fuses into a Gemm
        w1 = up1.weight.permute(0, 2, 3, 1).reshape(up1.weight.shape[0], 4 * c1)
        x = torch.addmm(up1.bias.repeat(4), keys.reshape(-1, keys.shape[-1]), w1).reshape(-1, c1)
        x = F.gelu(F.layer_norm(x, (c1,), norm.weight, norm.bias, norm.eps))
        # (N*4096*4, 64) @ (64, 2*2*32) + bias -> (N, y, x, i, j, i2, j2, 32)
        w2 = up2.weight.permute(0, 2, 3, 1).reshape(c1, 4 * c2)
        x = F.gelu(torch.addmm(up2.bias.repeat(4), x, w2))
        # hypernetwork product over the 32 channels, then pixels (y, i, i2) x (x, j, j2) -> 256 x 256
        logits = torch.matmul(x.reshape(n, -1, c2), hyper.unsqueeze(-1)).reshape(n, s, s, 2, 2, 2, 2)
        return logits.permute(0, 1, 3, 5, 2, 4, 6).reshape(n, 1, 4 * s, 4 * s)
