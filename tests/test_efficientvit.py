"""Checks that our EfficientViT-SAM-L2 image encoder matches the official checkpoint layout.

The key names/shapes below were read off the official mit-han-lab/efficientvit code (and
MobileSAMv2's vendored copy), by instantiating it and listing ``state_dict()``; they are what
``l2.pt``'s ``image_encoder.*`` entries must load into with ``strict=True``.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from mobilesamv2.modeling.efficientvit import (  # noqa: E402
    OFFICIAL_L2_IMAGE_ENCODER_KEY_COUNT,
    LiteMLA,
    UpSampleLayer,
    bicubic_resize_matrix,
    build_efficientvit_l2_image_encoder,
    image_encoder_state_dict,
    resizes_as_matmul,
)

# (key, shape) pairs taken from the official model; a representative sample of every part.
OFFICIAL_KEYS: list[tuple[str, tuple[int, ...]]] = [
    # input stem: 3x3 stride-2 conv + BN
    ("backbone.stages.0.op_list.0.conv.weight", (32, 3, 3, 3)),
    ("backbone.stages.0.op_list.0.norm.running_var", (32,)),
    ("backbone.stages.0.op_list.0.norm.num_batches_tracked", ()),
    # stage-0 ResBlock
    ("backbone.stages.0.op_list.1.main.conv1.conv.weight", (32, 32, 3, 3)),
    # stage-1 downsampling FusedMBConv (expand 16)
    ("backbone.stages.1.op_list.0.main.spatial_conv.conv.weight", (512, 32, 3, 3)),
    # stage-3 "fewer norm" MBConv: biased convs without BN, BN only on the projection
    ("backbone.stages.3.op_list.1.main.inverted_conv.conv.bias", (1024,)),
    ("backbone.stages.3.op_list.1.main.depth_conv.conv.weight", (1024, 1, 3, 3)),
    ("backbone.stages.3.op_list.1.main.point_conv.norm.weight", (256,)),
    # stage-4 downsampling MBConv (expand 24)
    ("backbone.stages.4.op_list.0.main.inverted_conv.conv.weight", (6144, 256, 1, 1)),
    # LiteMLA
    ("backbone.stages.4.op_list.1.context_module.main.qkv.conv.weight", (1536, 512, 1, 1)),
    ("backbone.stages.4.op_list.1.context_module.main.aggreg.0.0.weight", (1536, 1, 5, 5)),
    ("backbone.stages.4.op_list.1.context_module.main.aggreg.0.1.weight", (1536, 32, 1, 1)),
    ("backbone.stages.4.op_list.1.context_module.main.proj.conv.weight", (512, 1024, 1, 1)),
    ("backbone.stages.4.op_list.1.context_module.main.proj.norm.running_mean", (512,)),
    ("backbone.stages.4.op_list.8.local_module.main.inverted_conv.conv.bias", (3072,)),
    # neck
    ("neck.input_ops.0.op_list.0.conv.weight", (256, 512, 1, 1)),
    ("neck.input_ops.2.op_list.0.conv.weight", (256, 128, 1, 1)),
    ("neck.middle.op_list.11.main.spatial_conv.conv.weight", (256, 256, 3, 3)),
    ("neck.output_ops.0.op_list.0.conv.weight", (256, 256, 1, 1)),
    ("neck.output_ops.0.op_list.0.conv.bias", (256,)),
    # final LayerNorm2d
    ("norm.weight", (256,)),
    ("norm.bias", (256,)),
]


@pytest.fixture(scope="module")
def encoder() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_efficientvit_l2_image_encoder()


def test_key_count(encoder: torch.nn.Module) -> None:
    assert OFFICIAL_L2_IMAGE_ENCODER_KEY_COUNT == 508
    assert len(encoder.state_dict()) == OFFICIAL_L2_IMAGE_ENCODER_KEY_COUNT


@pytest.mark.parametrize("key,shape", OFFICIAL_KEYS)
def test_official_keys_and_shapes(encoder: torch.nn.Module, key: str, shape: tuple[int, ...]) -> None:
    state = encoder.state_dict()
    assert key in state
    assert tuple(state[key].shape) == shape


def test_norm_eps_and_activation_match_official(encoder: torch.nn.Module) -> None:
    # The official builders call set_norm_eps(model, 1e-6) on every BN and LayerNorm.
    norms = [m for m in encoder.modules() if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.LayerNorm))]
    assert norms and all(m.eps == 1e-6 for m in norms)
    gelus = [m for m in encoder.modules() if isinstance(m, torch.nn.GELU)]
    assert gelus and all(m.approximate == "tanh" for m in gelus)


def test_strict_load_from_checkpoint_layout(encoder: torch.nn.Module) -> None:
    inner = {f"image_encoder.{k}": v for k, v in encoder.state_dict().items()}
    inner["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"] = torch.zeros(2, 128)
    inner["mask_decoder.iou_token.weight"] = torch.zeros(1, 256)
    fresh = build_efficientvit_l2_image_encoder()
    fresh.load_state_dict(image_encoder_state_dict({"state_dict": inner}), strict=True)


def test_forward_shape(encoder: torch.nn.Module) -> None:
    x = torch.randn(1, 3, 512, 512, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        out = encoder(x)
    assert out.shape == (1, 256, 64, 64)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_litemla_attention_stays_float32_under_autocast() -> None:
    torch.manual_seed(0)
    mla = LiteMLA(64, 64, dim=32).eval()
    x = torch.rand(1, 64, 8, 8)
    with torch.inference_mode():
        expected = mla.relu_linear_att(mla.qkv(x))
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            qkv = mla.qkv(x)
            assert qkv.dtype == torch.bfloat16  # autocast is really active
            att = mla.relu_linear_att(qkv)
    assert att.dtype == torch.float32
    torch.testing.assert_close(att, expected, atol=0.05, rtol=0.05)


@pytest.mark.parametrize(
    ("size_in", "size_out"),
    [((16, 16), (64, 64)), ((32, 32), (64, 64)), ((5, 7), (64, 33)), ((64, 64), (16, 20)), ((1, 3), (4, 4))],
)
def test_bicubic_resize_matrices_equal_torch_bicubic(size_in, size_out) -> None:
    """Upsampling (the encoder's 16->64 and 32->64), odd ratios, downsampling and a 1-pixel side: the two
    matrix products give F.interpolate's bicubic (align_corners=False, border clamped) to float rounding."""
    x = torch.randn(2, 3, *size_in, generator=torch.Generator().manual_seed(0)) * 10
    expected = torch.nn.functional.interpolate(x, size=size_out, mode="bicubic", align_corners=False)
    rows = torch.from_numpy(bicubic_resize_matrix(size_in[0], size_out[0]))
    cols = torch.from_numpy(bicubic_resize_matrix(size_in[1], size_out[1]))
    got = rows @ x @ cols.T
    assert got.shape == expected.shape
    assert (got - expected).abs().max() < 1e-4 * x.abs().max()


def test_upsample_layers_resize_as_matmul_only_inside_the_block(encoder: torch.nn.Module) -> None:
    layers = [m for m in encoder.modules() if isinstance(m, UpSampleLayer)]
    x = torch.randn(1, 256, 16, 16, generator=torch.Generator().manual_seed(1))
    bicubic = layers[0](x)
    with resizes_as_matmul(encoder) as count:
        assert count == len(layers) == 3 and all(layer.as_matmul for layer in layers)
        as_matmul = layers[0](x)
    assert not any(layer.as_matmul for layer in layers)
    assert as_matmul.shape == bicubic.shape == (1, 256, 64, 64)
    assert (as_matmul - bicubic).abs().max() < 1e-5 * bicubic.abs().max()
    assert not torch.equal(as_matmul, bicubic), "bit-identical: was the matmul path used?"
