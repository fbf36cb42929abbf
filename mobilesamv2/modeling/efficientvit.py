"""EfficientViT-SAM-L2 image encoder (the encoder MobileSAMv2 ships as ``l2.pt``).

This is an independent re-implementation of the image encoder from
mit-han-lab/efficientvit ("EfficientViT: Multi-Scale Linear Attention for
High-Resolution Dense Prediction", Cai et al., ICCV 2023), restricted to what
the L2 SAM encoder needs.  Module and attribute names deliberately mirror the
official code (``backbone.stages.N.op_list.M...``, ``neck.input_ops...``,
``context_module.main.qkv...``) because the official checkpoint is loaded with
``load_state_dict(strict=True)``; renaming anything here breaks weight loading.

Input contract of :func:`build_efficientvit_l2_image_encoder`: a float tensor of
shape ``(B, 3, 512, 512)``, already normalised with SAM's pixel mean/std and
zero padded.  MobileSAMv2 feeds the encoder a 1024x1024 padded image and halves
it with ``F.interpolate(x, (512, 512), mode="bilinear")`` (align_corners=False,
no antialias), which for an exact 2x reduction equals 2x2 average pooling; that
step is the caller's job here so the exported graph stays a pure encoder.
Output: ``(B, 256, 64, 64)`` image embeddings for the SAM prompt encoder/decoder.

Only depends on torch and numpy.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "L2_NORM_EPS",
    "OFFICIAL_L2_IMAGE_ENCODER_KEY_COUNT",
    "ConvLayer",
    "DAGBlock",
    "EfficientViTBlock",
    "EfficientViTLargeBackbone",
    "EfficientViTSamImageEncoder",
    "FusedMBConv",
    "IdentityLayer",
    "LayerNorm2d",
    "LiteMLA",
    "MBConv",
    "OpSequential",
    "ResBlock",
    "ResidualBlock",
    "SamNeck",
    "UpSampleLayer",
    "bicubic_resize_matrix",
    "build_efficientvit_l2_image_encoder",
    "image_encoder_state_dict",
    "resizes_as_matmul",
]

#: Number of ``image_encoder.*`` tensors (parameters + BN buffers) in the official ``l2.pt``.
OFFICIAL_L2_IMAGE_ENCODER_KEY_COUNT = 508

#: Epsilon of every BatchNorm2d and LayerNorm2d in the L2 encoder.  The official model zoo and
#: MobileSAMv2's builder both call ``set_norm_eps(model, 1e-6)`` after construction, overriding
#: the PyTorch defaults (BN 1e-5, LN 1e-5); the released weights are meant to run with 1e-6.
L2_NORM_EPS = 1e-6

# Fixed spatial size of the SAM image embedding (1024 / 16).
_EMBED_HW = 64


def _same_padding(kernel_size: int) -> int:
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel size must be odd, got {kernel_size}")
    return kernel_size // 2


def _broadcast(value: object, n: int) -> tuple:
    """Broadcast a scalar config value to ``n`` entries (the official ``val2tuple``).

    A shorter sequence is padded by repeating its *last* element, as upstream does.
    """
    if isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [value]
    while len(items) < n:
        items.append(items[-1])
    return tuple(items)


def _build_norm(name: str | None, num_features: int) -> nn.Module | None:
    if name is None:
        return None
    if name == "bn2d":
        return nn.BatchNorm2d(num_features, eps=L2_NORM_EPS)
    if name == "ln2d":
        return LayerNorm2d(num_features, eps=L2_NORM_EPS)
    raise ValueError(f"unsupported norm {name!r}")


def _build_act(name: str | None) -> nn.Module | None:
    if name is None:
        return None
    if name == "gelu":
        # Upstream registers "gelu" as the tanh approximation; the weights were trained with it.
        return nn.GELU(approximate="tanh")
    if name == "relu":
        return nn.ReLU()
    if name == "relu6":
        return nn.ReLU6()
    if name == "hswish":
        return nn.Hardswish()
    raise ValueError(f"unsupported activation {name!r}")


# ---------------------------------------------------------------------------------------------
# Basic layers
# ---------------------------------------------------------------------------------------------


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel axis of an NCHW tensor.

    Written out by hand (instead of permuting and calling ``F.layer_norm``) to reproduce the
    official arithmetic exactly; it also exports to plain ReduceMean/Sqrt ONNX ops.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x - torch.mean(x, dim=1, keepdim=True)
        out = out / torch.sqrt(torch.square(out).mean(dim=1, keepdim=True) + self.eps)
        if self.elementwise_affine:
            out = out * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return out


class ConvLayer(nn.Module):
    """Conv2d -> optional norm -> optional activation, with "same" padding.

    Attributes ``conv``/``norm``/``act`` are checkpoint key names.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        use_bias: bool = False,
        norm: str | None = "bn2d",
        act_func: str | None = "relu",
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size=kernel_size,
            stride=stride,
            padding=_same_padding(kernel_size),
            groups=groups,
            bias=use_bias,
        )
        self.norm = _build_norm(norm, out_channels)
        self.act = _build_act(act_func)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.act is not None:
            x = self.act(x)
        return x


#: PyTorch's bicubic convolution coefficient (``upsample_bicubic2d``; ONNX Resize's ``cubic_coeff_a``).
BICUBIC_A = -0.75


@functools.lru_cache(maxsize=32)
def bicubic_resize_matrix(size_in: int, size_out: int) -> np.ndarray:
    """``(size_out, size_in)`` float32 matrix ``M`` with ``M @ v`` == PyTorch's 1-D bicubic resize of ``v``
    (``align_corners=False``, sizes given, borders clamped), so ``M_h @ x @ M_w.T`` is
    ``F.interpolate(x, (h_out, w_out), mode="bicubic")`` for ``x`` of spatial size ``(h_in, w_in)``.

    Same source positions and weights as ``upsample_bicubic2d`` (``scale * (o + 0.5) - 0.5`` with ``scale
    = size_in / size_out``, four taps, indices clamped to the border); equal to rounding (~1e-6).
    """
    a, scale = BICUBIC_A, size_in / size_out

    def near(t: float) -> float:  # |t| <= 1
        return ((a + 2) * t - (a + 3)) * t * t + 1

    def far(t: float) -> float:  # 1 < |t| < 2
        return ((a * t - 5 * a) * t + 8 * a) * t - 4 * a

    matrix = np.zeros((size_out, size_in), np.float64)
    for o in range(size_out):
        source = scale * (o + 0.5) - 0.5
        first = math.floor(source)
        t = source - first
        for k, weight in enumerate((far(t + 1), near(t), near(1 - t), far(2 - t))):
            matrix[o, min(max(first - 1 + k, 0), size_in - 1)] += weight
    return matrix.astype(np.float32)


class UpSampleLayer(nn.Module):
    """Resize to a fixed spatial size (bicubic, ``align_corners=False`` as upstream).

    With ``as_matmul`` (set for an export by :func:`resizes_as_matmul`), a bicubic resize runs as two
    matrix products with :func:`bicubic_resize_matrix`: the same numbers to rounding, but ONNX Runtime's
    cubic ``Resize`` kernel took 17% of the L2 encoder's CPU time (two nodes, ~190 ms of ~1.1 s) where the
    products take well under 1% (BENCHMARKS.md, "Graph formulations").
    """

    def __init__(self, size: int | Sequence[int], mode: str = "bicubic", align_corners: bool = False) -> None:
        super().__init__()
        self.size = tuple(_broadcast(size, 2)[:2])
        self.mode = mode
        self.align_corners = align_corners
        self.as_matmul = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Spatial dims are static for a fixed input resolution, so this branch is resolved at
        # export time (only the batch axis is dynamic).  A same-size bicubic resize (stage2 is
        # already 64x64 at 512 input) is an exact identity (cubic weights 0,1,0,0), so skipping
        # it keeps a useless Resize out of the graph.  Upstream means to skip it too but compares
        # a tuple with a list, so it actually runs the identity resize; the outputs are the same.
        if tuple(x.shape[-2:]) == self.size:
            return x
        # Bicubic interpolation is done in float32: half-precision bicubic is unsupported on
        # CPU and loses accuracy on GPU; upstream does the same upcast.
        if self.as_matmul and self.mode == "bicubic" and not self.align_corners:
            rows = torch.from_numpy(bicubic_resize_matrix(x.shape[-2], self.size[0])).to(x.device)
            cols = torch.from_numpy(bicubic_resize_matrix(x.shape[-1], self.size[1]).T.copy()).to(x.device)
            return torch.matmul(torch.matmul(rows, x.float()), cols).to(x.dtype)
        out = F.interpolate(x.float(), size=self.size, mode=self.mode, align_corners=self.align_corners)
        return out.to(x.dtype)


@contextmanager
def resizes_as_matmul(module: nn.Module) -> Iterator[int]:
    """Within the block, every :class:`UpSampleLayer` in ``module`` resizes with matrix products (for an ONNX
    export); yields how many there are. The module's default formulation is restored on exit."""
    layers = [m for m in module.modules() if isinstance(m, UpSampleLayer)]
    for layer in layers:
        layer.as_matmul = True
    try:
        yield len(layers)
    finally:
        for layer in layers:
            layer.as_matmul = False


class IdentityLayer(nn.Module):
    """Identity shortcut (a named module so checkpoint paths line up with upstream)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


# ---------------------------------------------------------------------------------------------
# Basic blocks
# ---------------------------------------------------------------------------------------------


class MBConv(nn.Module):
    """Inverted residual body: 1x1 expand -> kxk depthwise -> 1x1 project."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        expand_ratio: float = 6,
        use_bias: bool | Sequence[bool] = False,
        norm: str | Sequence[str | None] | None = "bn2d",
        act_func: str | Sequence[str | None] | None = ("relu6", "relu6", None),
    ) -> None:
        super().__init__()
        use_bias = _broadcast(use_bias, 3)
        norm = _broadcast(norm, 3)
        act_func = _broadcast(act_func, 3)
        mid_channels = round(in_channels * expand_ratio)

        self.inverted_conv = ConvLayer(
            in_channels, mid_channels, 1, norm=norm[0], act_func=act_func[0], use_bias=use_bias[0]
        )
        self.depth_conv = ConvLayer(
            mid_channels,
            mid_channels,
            kernel_size,
            stride=stride,
            groups=mid_channels,
            norm=norm[1],
            act_func=act_func[1],
            use_bias=use_bias[1],
        )
        self.point_conv = ConvLayer(
            mid_channels, out_channels, 1, norm=norm[2], act_func=act_func[2], use_bias=use_bias[2]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.depth_conv(self.inverted_conv(x)))


class FusedMBConv(nn.Module):
    """Fused inverted residual body: full kxk expand conv -> 1x1 project."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        expand_ratio: float = 6,
        use_bias: bool | Sequence[bool] = False,
        norm: str | Sequence[str | None] | None = "bn2d",
        act_func: str | Sequence[str | None] | None = ("relu6", None),
    ) -> None:
        super().__init__()
        use_bias = _broadcast(use_bias, 2)
        norm = _broadcast(norm, 2)
        act_func = _broadcast(act_func, 2)
        mid_channels = round(in_channels * expand_ratio)

        self.spatial_conv = ConvLayer(
            in_channels,
            mid_channels,
            kernel_size,
            stride,
            use_bias=use_bias[0],
            norm=norm[0],
            act_func=act_func[0],
        )
        self.point_conv = ConvLayer(
            mid_channels, out_channels, 1, use_bias=use_bias[1], norm=norm[1], act_func=act_func[1]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.spatial_conv(x))


class ResBlock(nn.Module):
    """Two kxk convolutions (the ResNet basic-block body, without the shortcut)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        expand_ratio: float = 1,
        use_bias: bool | Sequence[bool] = False,
        norm: str | Sequence[str | None] | None = "bn2d",
        act_func: str | Sequence[str | None] | None = ("relu6", None),
    ) -> None:
        super().__init__()
        use_bias = _broadcast(use_bias, 2)
        norm = _broadcast(norm, 2)
        act_func = _broadcast(act_func, 2)
        mid_channels = round(in_channels * expand_ratio)

        self.conv1 = ConvLayer(
            in_channels,
            mid_channels,
            kernel_size,
            stride,
            use_bias=use_bias[0],
            norm=norm[0],
            act_func=act_func[0],
        )
        self.conv2 = ConvLayer(
            mid_channels,
            out_channels,
            kernel_size,
            1,
            use_bias=use_bias[1],
            norm=norm[1],
            act_func=act_func[1],
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


class LiteMLA(nn.Module):
    """Lightweight multi-scale ReLU linear attention.

    q/k/v come from a 1x1 conv; extra "scales" aggregate them with a depthwise kxk conv followed
    by a grouped 1x1 conv, and each scale contributes its own set of heads.  Attention is
    ``relu(q) (relu(k)^T v) / (relu(q) relu(k)^T 1)``, i.e. linear in the number of tokens.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        heads_ratio: float = 1.0,
        dim: int = 8,
        use_bias: bool | Sequence[bool] = False,
        norm: str | Sequence[str | None] | None = (None, "bn2d"),
        act_func: str | Sequence[str | None] | None = (None, None),
        scales: Sequence[int] = (5,),
        eps: float = 1.0e-15,
    ) -> None:
        super().__init__()
        self.eps = eps
        self.dim = dim
        heads = int(in_channels // dim * heads_ratio)
        total_dim = heads * dim

        use_bias = _broadcast(use_bias, 2)
        norm = _broadcast(norm, 2)
        act_func = _broadcast(act_func, 2)

        self.qkv = ConvLayer(
            in_channels, 3 * total_dim, 1, use_bias=use_bias[0], norm=norm[0], act_func=act_func[0]
        )
        self.aggreg = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(
                        3 * total_dim,
                        3 * total_dim,
                        scale,
                        padding=_same_padding(scale),
                        groups=3 * total_dim,
                        bias=use_bias[0],
                    ),
                    # Grouped per head so that each head's q, k and v are mixed only among themselves.
                    nn.Conv2d(3 * total_dim, 3 * total_dim, 1, groups=3 * heads, bias=use_bias[0]),
                )
                for scale in scales
            ]
        )
        self.kernel_func = nn.ReLU()
        self.proj = ConvLayer(
            total_dim * (1 + len(scales)),
            out_channels,
            1,
            use_bias=use_bias[1],
            norm=norm[1],
            act_func=act_func[1],
        )

    def relu_linear_att(self, qkv: torch.Tensor) -> torch.Tensor:
        """Linear attention on ``(B, heads*3*dim, H, W)``; always computed in float32.

        Why float32: the normaliser is a sum of ``relu(q).relu(k)`` products over every token, which
        overflows FP16, and ``eps`` (1e-15) underflows to 0 in FP16 so empty rows divide by zero;
        either way FP16 produces inf/NaN embeddings.  Upstream therefore disables autocast and
        upcasts here, and so do we.  The caller casts the result back to the activation dtype.
        """
        batch, _, height, width = qkv.shape
        with torch.autocast(device_type=qkv.device.type, enabled=False):
            qkv = qkv.float()
            # (B, heads, 3*dim, N): each head's q, k, v are contiguous channel blocks.
            qkv = qkv.reshape(batch, -1, 3 * self.dim, height * width)
            q = self.kernel_func(qkv[:, :, 0 : self.dim])
            k = self.kernel_func(qkv[:, :, self.dim : 2 * self.dim])
            v = qkv[:, :, 2 * self.dim :]

            # Appending a row of ones to v makes the same matmuls also produce the normaliser
            # sum_j k_j . q_i in the last row, avoiding a separate reduction.
            v = F.pad(v, (0, 0, 0, 1), mode="constant", value=1.0)
            vk = torch.matmul(v, k.transpose(-1, -2))  # (B, heads, dim+1, dim)
            out = torch.matmul(vk, q)  # (B, heads, dim+1, N)
            out = out[:, :, :-1] / (out[:, :, -1:] + self.eps)
            return out.reshape(batch, -1, height, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x)
        multi_scale_qkv = [qkv] + [op(qkv) for op in self.aggreg]
        qkv = torch.cat(multi_scale_qkv, dim=1)
        # Upstream switches to quadratic attention when H*W <= dim; with a 512 input the only
        # attention stage runs at 16x16 = 256 tokens > 32, so only the linear path is needed.
        out = self.relu_linear_att(qkv).to(qkv.dtype)
        return self.proj(out)


class EfficientViTBlock(nn.Module):
    """LiteMLA context module followed by an MBConv local module, both residual."""

    def __init__(
        self,
        in_channels: int,
        heads_ratio: float = 1.0,
        dim: int = 32,
        expand_ratio: float = 4,
        scales: Sequence[int] = (5,),
        norm: str = "bn2d",
        act_func: str = "hswish",
    ) -> None:
        super().__init__()
        self.context_module = ResidualBlock(
            LiteMLA(
                in_channels=in_channels,
                out_channels=in_channels,
                heads_ratio=heads_ratio,
                dim=dim,
                norm=(None, norm),
                scales=scales,
            ),
            IdentityLayer(),
        )
        self.local_module = ResidualBlock(
            MBConv(
                in_channels=in_channels,
                out_channels=in_channels,
                expand_ratio=expand_ratio,
                use_bias=(True, True, False),
                norm=(None, None, norm),
                act_func=(act_func, act_func, None),
            ),
            IdentityLayer(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.local_module(self.context_module(x))


# ---------------------------------------------------------------------------------------------
# Functional blocks
# ---------------------------------------------------------------------------------------------


class ResidualBlock(nn.Module):
    """``main(x) + shortcut(x)``; with ``shortcut=None`` just ``main(x)`` (used for downsampling)."""

    def __init__(self, main: nn.Module | None, shortcut: nn.Module | None) -> None:
        super().__init__()
        # Upstream also has (always None here) ``pre_norm``/``post_act`` slots; they hold no
        # weights, so leaving them out does not change the state_dict.
        self.main = main
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.main is None:
            return x
        if self.shortcut is None:
            return self.main(x)
        return self.main(x) + self.shortcut(x)


class OpSequential(nn.Module):
    """Sequential container whose children live under ``op_list`` (a checkpoint key segment)."""

    def __init__(self, op_list: Sequence[nn.Module | None]) -> None:
        super().__init__()
        self.op_list = nn.ModuleList([op for op in op_list if op is not None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for op in self.op_list:
            x = op(x)
        return x


class DAGBlock(nn.Module):
    """Read named features, merge them, run ``middle``, and write named outputs back."""

    def __init__(
        self,
        inputs: Mapping[str, nn.Module],
        merge: str,
        middle: nn.Module,
        outputs: Mapping[str, nn.Module],
    ) -> None:
        super().__init__()
        if merge not in ("add", "cat"):
            raise ValueError(f"unsupported merge {merge!r}")
        self.input_keys = list(inputs.keys())
        self.input_ops = nn.ModuleList(list(inputs.values()))
        self.merge = merge
        self.middle = middle
        self.output_keys = list(outputs.keys())
        self.output_ops = nn.ModuleList(list(outputs.values()))

    def forward(self, feature_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        feats = [op(feature_dict[key]) for key, op in zip(self.input_keys, self.input_ops, strict=True)]
        if self.merge == "add":
            # Upstream's recursive list_sum adds right-associatively, f0 + (f1 + (f2 + ...)); we keep
            # that order because FP32 addition is not associative and we want bit-identical output.
            feat = feats[-1]
            for f in reversed(feats[:-1]):
                feat = f + feat
        else:
            feat = torch.cat(feats, dim=1)
        feat = self.middle(feat)
        out = dict(feature_dict)
        for key, op in zip(self.output_keys, self.output_ops, strict=True):
            out[key] = op(feat)
        return out


# ---------------------------------------------------------------------------------------------
# Backbone, neck, encoder
# ---------------------------------------------------------------------------------------------


class EfficientViTLargeBackbone(nn.Module):
    """EfficientViT "L" backbone; returns ``{"input", "stage0".."stage4", "stage_final"}``."""

    def __init__(
        self,
        width_list: Sequence[int],
        depth_list: Sequence[int],
        block_list: Sequence[str] = ("res", "fmb", "fmb", "mb", "att"),
        expand_list: Sequence[float] = (1, 4, 4, 4, 6),
        fewer_norm_list: Sequence[bool] = (False, False, False, True, True),
        in_channels: int = 3,
        qkv_dim: int = 32,
        norm: str = "bn2d",
        act_func: str = "gelu",
    ) -> None:
        super().__init__()
        self.width_list: list[int] = []
        stages: list[nn.Module] = []

        # Stage 0: stride-2 stem conv + stride-1 local blocks.
        stage0: list[nn.Module] = [
            ConvLayer(in_channels, width_list[0], stride=2, norm=norm, act_func=act_func)
        ]
        for _ in range(depth_list[0]):
            block = self._build_local_block(
                block_list[0],
                width_list[0],
                width_list[0],
                1,
                expand_list[0],
                norm,
                act_func,
                fewer_norm_list[0],
            )
            stage0.append(ResidualBlock(block, IdentityLayer()))
        in_channels = width_list[0]
        stages.append(OpSequential(stage0))
        self.width_list.append(in_channels)

        for stage_id, (width, depth) in enumerate(zip(width_list[1:], depth_list[1:], strict=True), start=1):
            # Each later stage opens with a stride-2 block without shortcut; attention stages
            # downsample with an MBConv.  The downsampling block expands 4x more than the rest.
            down_type = block_list[stage_id] if block_list[stage_id] in ("mb", "fmb") else "mb"
            down = self._build_local_block(
                down_type,
                in_channels,
                width,
                2,
                expand_list[stage_id] * 4,
                norm,
                act_func,
                fewer_norm_list[stage_id],
            )
            stage: list[nn.Module] = [ResidualBlock(down, None)]
            in_channels = width
            for _ in range(depth):
                if block_list[stage_id].startswith("att"):
                    stage.append(
                        EfficientViTBlock(
                            in_channels=in_channels,
                            dim=qkv_dim,
                            expand_ratio=expand_list[stage_id],
                            scales=(3,) if block_list[stage_id] == "att@3" else (5,),
                            norm=norm,
                            act_func=act_func,
                        )
                    )
                else:
                    block = self._build_local_block(
                        block_list[stage_id],
                        in_channels,
                        in_channels,
                        1,
                        expand_list[stage_id],
                        norm,
                        act_func,
                        fewer_norm_list[stage_id],
                    )
                    stage.append(ResidualBlock(block, IdentityLayer()))
            stages.append(OpSequential(stage))
            self.width_list.append(in_channels)
        self.stages = nn.ModuleList(stages)

    @staticmethod
    def _build_local_block(
        block: str,
        in_channels: int,
        out_channels: int,
        stride: int,
        expand_ratio: float,
        norm: str,
        act_func: str,
        fewer_norm: bool,
    ) -> nn.Module:
        # "fewer_norm" drops the BN on all but the last conv and gives those convs a bias instead.
        if block == "res":
            return ResBlock(
                in_channels,
                out_channels,
                stride=stride,
                expand_ratio=expand_ratio,
                use_bias=(True, False) if fewer_norm else False,
                norm=(None, norm) if fewer_norm else norm,
                act_func=(act_func, None),
            )
        if block == "fmb":
            return FusedMBConv(
                in_channels,
                out_channels,
                stride=stride,
                expand_ratio=expand_ratio,
                use_bias=(True, False) if fewer_norm else False,
                norm=(None, norm) if fewer_norm else norm,
                act_func=(act_func, None),
            )
        if block == "mb":
            return MBConv(
                in_channels,
                out_channels,
                stride=stride,
                expand_ratio=expand_ratio,
                use_bias=(True, True, False) if fewer_norm else False,
                norm=(None, None, norm) if fewer_norm else norm,
                act_func=(act_func, act_func, None),
            )
        raise ValueError(f"unsupported block {block!r}")

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        output_dict = {"input": x}
        for stage_id, stage in enumerate(self.stages):
            x = stage(x)
            output_dict[f"stage{stage_id}"] = x
        output_dict["stage_final"] = x
        return output_dict


class SamNeck(DAGBlock):
    """Fuses three backbone stages at 64x64 and refines them into the 256-d SAM embedding."""

    def __init__(
        self,
        fid_list: Sequence[str],
        in_channel_list: Sequence[int],
        head_width: int,
        head_depth: int,
        expand_ratio: float,
        middle_op: str,
        out_dim: int = 256,
        norm: str = "bn2d",
        act_func: str = "gelu",
    ) -> None:
        inputs = {
            fid: OpSequential(
                [
                    ConvLayer(in_channel, head_width, 1, norm=norm, act_func=None),
                    UpSampleLayer(size=(_EMBED_HW, _EMBED_HW)),
                ]
            )
            for fid, in_channel in zip(fid_list, in_channel_list, strict=True)
        }

        middle: list[nn.Module] = []
        for _ in range(head_depth):
            # MobileSAMv2 spells these "fmbconv"/"mbconv", current upstream "fmb"/"mb".
            if middle_op in ("fmb", "fmbconv"):
                block: nn.Module = FusedMBConv(
                    head_width, head_width, expand_ratio=expand_ratio, norm=norm, act_func=(act_func, None)
                )
            elif middle_op in ("mb", "mbconv"):
                block = MBConv(
                    head_width,
                    head_width,
                    expand_ratio=expand_ratio,
                    norm=norm,
                    act_func=(act_func, act_func, None),
                )
            elif middle_op == "res":
                block = ResBlock(
                    head_width, head_width, expand_ratio=expand_ratio, norm=norm, act_func=(act_func, None)
                )
            else:
                raise ValueError(f"unsupported middle_op {middle_op!r}")
            middle.append(ResidualBlock(block, IdentityLayer()))

        outputs = {
            "sam_encoder": OpSequential(
                [ConvLayer(head_width, out_dim, 1, use_bias=True, norm=None, act_func=None)]
            )
        }
        super().__init__(inputs, "add", OpSequential(middle), outputs)


class EfficientViTSamImageEncoder(nn.Module):
    """Backbone + SAM neck + channel LayerNorm: ``(B, 3, 512, 512) -> (B, 256, 64, 64)``."""

    def __init__(self, backbone: EfficientViTLargeBackbone, neck: SamNeck) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.norm = LayerNorm2d(256, eps=L2_NORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feed_dict = self.neck(self.backbone(x))
        return self.norm(feed_dict["sam_encoder"])


def build_efficientvit_l2_image_encoder() -> EfficientViTSamImageEncoder:
    """Build the EfficientViT-SAM-L2 image encoder with the official configuration.

    The returned module is in eval mode and randomly initialised; load ``l2.pt`` with
    ``model.load_state_dict(image_encoder_state_dict(torch.load(...)), strict=True)``.
    Its forward expects ``(B, 3, 512, 512)`` float input (SAM-normalised, padded, then halved
    from 1024) and returns ``(B, 256, 64, 64)``.
    """
    backbone = EfficientViTLargeBackbone(
        width_list=[32, 64, 128, 256, 512],
        depth_list=[1, 2, 2, 8, 8],
        in_channels=3,
        qkv_dim=32,
        norm="bn2d",
        act_func="gelu",
    )
    neck = SamNeck(
        fid_list=["stage4", "stage3", "stage2"],
        in_channel_list=[512, 256, 128],
        head_width=256,
        head_depth=12,
        expand_ratio=1,
        middle_op="fmb",
        out_dim=256,
    )
    return EfficientViTSamImageEncoder(backbone, neck).eval()


def image_encoder_state_dict(
    checkpoint: Mapping[str, object], prefix: str = "image_encoder."
) -> dict[str, torch.Tensor]:
    """Extract the image-encoder weights from an EfficientViT-SAM / MobileSAMv2 ``l2.pt`` checkpoint.

    Accepts either the raw ``{'state_dict': {...}}`` object or the inner state dict, and strips
    ``prefix``; prompt-encoder and mask-decoder entries are dropped.
    """
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, Mapping):
        raise TypeError("checkpoint['state_dict'] is not a mapping")
    out = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
    if not out:
        raise KeyError(f"no keys starting with {prefix!r} in checkpoint")
    return out
