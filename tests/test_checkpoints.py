"""Strict loaders on official-format checkpoints (seeded random weights), and their failures."""

from __future__ import annotations

import pytest
import torch

from mobilesamv2.fake_checkpoints import FILENAMES
from mobilesamv2.modeling.checkpoints import (
    CheckpointError,
    load_image_encoder,
    load_object_aware_model,
    load_prompt_decoder,
    vit_config_from_state_dict,
)
from mobilesamv2.modeling.sam import VIT_H, build_vit


def test_files_have_the_official_containers(fake_weights):
    l2 = torch.load(fake_weights / FILENAMES["efficientvit_l2"], weights_only=True)
    assert set(l2) == {"state_dict"}
    assert sum(k.startswith("image_encoder.") for k in l2["state_dict"]) == 508
    assert {k.split(".")[0] for k in l2["state_dict"]} == {"image_encoder", "prompt_encoder", "mask_decoder"}
    decoder = torch.load(fake_weights / FILENAMES["decoder"], weights_only=True)
    assert set(decoder) == {"PromtEncoder", "MaskDecoder"}  # sic, as released
    assert len(decoder["PromtEncoder"]) == 17 and len(decoder["MaskDecoder"]) == 120
    assert not any(
        "." in k and k.startswith(("prompt_encoder", "mask_decoder")) for k in decoder["MaskDecoder"]
    )
    mobile_sam = torch.load(fake_weights / FILENAMES["tiny_vit"], weights_only=True)
    assert all(k.split(".")[0] in {"image_encoder", "prompt_encoder", "mask_decoder"} for k in mobile_sam)
    assert all(v.dtype == torch.float32 for v in mobile_sam.values() if v.is_floating_point())


def test_detector_is_an_ultralytics_8_0_pickle_without_proto(fake_weights):
    ckpt = torch.load(fake_weights / FILENAMES["detector"], weights_only=False)
    assert ckpt["version"].startswith("8.0.")
    model = ckpt["model"]
    head = model.model[-1]
    assert type(head).__name__ == "Segment" and not hasattr(head, "proto")
    assert head.reg_max == 26 and head.nc == 1
    assert next(model.parameters()).dtype == torch.float16
    # the naive path of current ultralytics fails exactly as users report it
    with pytest.raises(AttributeError, match="proto"):
        model.float().eval()(torch.zeros(1, 3, 64, 64))


def test_detector_loads_and_runs(fake_weights):
    net = load_object_aware_model(fake_weights / FILENAMES["detector"])
    assert (net.num_classes, net.reg_max) == (1, 26)
    out = net(torch.zeros(1, 3, 256, 320))
    anchors = (256 // 8) * (320 // 8) + (256 // 16) * (320 // 16) + (256 // 32) * (320 // 32)
    assert out.shape == (1, 5, anchors)


@pytest.mark.parametrize("encoder", ["efficientvit_l2", "tiny_vit", "sam_vit_h"])
def test_encoders_load_strictly(fake_weights, encoder):
    module = load_image_encoder(encoder, fake_weights / FILENAMES[encoder])
    saved = torch.load(fake_weights / FILENAMES[encoder], weights_only=True)
    saved = saved.get("state_dict", saved)
    some_key = next(k for k in saved if k.startswith("image_encoder."))
    torch.testing.assert_close(module.state_dict()[some_key[len("image_encoder.") :]], saved[some_key])


def test_decoder_loads_strictly(fake_weights):
    decoder = load_prompt_decoder(fake_weights / FILENAMES["decoder"])
    saved = torch.load(fake_weights / FILENAMES["decoder"], weights_only=True)
    torch.testing.assert_close(
        decoder.mask_decoder.state_dict()["iou_token.weight"], saved["MaskDecoder"]["iou_token.weight"]
    )


def test_wrong_prefix_fails_loudly(fake_weights, tmp_path):
    flat = torch.load(fake_weights / FILENAMES["tiny_vit"], weights_only=True)
    unprefixed = {
        "model": {k.removeprefix("image_encoder."): v for k, v in flat.items()}
    }  # MobileSAMv2's own form
    torch.save(unprefixed, tmp_path / "mobile_sam.pt")
    with pytest.raises(CheckpointError, match=r"mobile_sam\.pt.*no 'image_encoder\.\*' keys"):
        load_image_encoder("tiny_vit", tmp_path / "mobile_sam.pt")


def test_missing_and_unexpected_keys_are_named(fake_weights, tmp_path):
    ckpt = torch.load(fake_weights / FILENAMES["efficientvit_l2"], weights_only=True)
    removed = "image_encoder.norm.weight"
    del ckpt["state_dict"][removed]
    ckpt["state_dict"]["image_encoder.extra.weight"] = torch.zeros(1)
    torch.save(ckpt, tmp_path / "l2.pt")
    with pytest.raises(CheckpointError) as info:
        load_image_encoder("efficientvit_l2", tmp_path / "l2.pt")
    message = str(info.value)
    assert (
        "l2.pt" in message
        and "missing keys: norm.weight" in message
        and "unexpected keys: extra.weight" in message
    )


def test_wrong_container_fails_loudly(fake_weights, tmp_path):
    decoder = torch.load(fake_weights / FILENAMES["decoder"], weights_only=True)
    torch.save(
        {"PromptEncoder": decoder["PromtEncoder"], "MaskDecoder": decoder["MaskDecoder"]}, tmp_path / "d.pt"
    )
    with pytest.raises(CheckpointError, match="'PromtEncoder' and 'MaskDecoder'"):
        load_prompt_decoder(tmp_path / "d.pt")


@pytest.mark.parametrize("name", ["decoder", "efficientvit_l2", "detector"])
def test_truncated_files_fail_loudly(fake_weights, tmp_path, name):
    data = (fake_weights / FILENAMES[name]).read_bytes()
    path = tmp_path / FILENAMES[name]
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match=FILENAMES[name].replace(".", r"\.")):
        if name == "decoder":
            load_prompt_decoder(path)
        elif name == "detector":
            load_object_aware_model(path)
        else:
            load_image_encoder(name, path)


def test_detector_file_that_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "ObjectAwareModel.pt"
    torch.save({"weights": [1, 2, 3]}, path)
    with pytest.raises(CheckpointError, match=r"pickled nn\.Module"):
        load_object_aware_model(path)


def test_full_vit_h_key_set_and_shapes_on_the_meta_device():
    """The CI files hold a 2-block ViT-H; the full official layout is checked without allocating 2.5 GB."""
    with torch.device("meta"):
        full = build_vit()
    state = full.state_dict()
    assert (
        sum(k.startswith("blocks.") for k in state) // len([k for k in state if k.startswith("blocks.0.")])
        == 32
    )
    assert state["pos_embed"].shape == (1, 64, 64, 1280)
    assert state["patch_embed.proj.weight"].shape == (1280, 3, 16, 16)
    for i in range(32):
        rows = 127 if i in VIT_H["global_attn_indexes"] else 27  # global (64x64 grid) vs 14x14 windows
        assert state[f"blocks.{i}.attn.rel_pos_h"].shape == (rows, 80)
    assert state["neck.0.weight"].shape == (256, 1280, 1, 1)
    assert len(state) == 2 + 1 + 32 * 14 + 6  # patch embed, pos embed, 32 blocks of 14 tensors, neck
    # The loader reads the configuration back off the keys, so a full official file builds the full model.
    config = vit_config_from_state_dict(state, path="sam_vit_h_4b8939.pth")
    assert config == {"embed_dim": 1280, "depth": 32, "num_heads": 16, "global_attn_indexes": (7, 15, 23, 31)}


def test_reduced_depth_vit_h_keeps_the_official_block_layout(fake_weights):
    saved = torch.load(fake_weights / FILENAMES["sam_vit_h"], weights_only=True)
    encoder = {
        k.removeprefix("image_encoder."): v for k, v in saved.items() if k.startswith("image_encoder.")
    }
    with torch.device("meta"):
        full = build_vit().state_dict()
    assert set(encoder) <= set(full)
    assert all(encoder[k].shape == full[k].shape for k in encoder if not k.startswith("blocks.1."))


def test_missing_file_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_prompt_decoder(tmp_path / "Prompt_guided_Mask_Decoder.pt")
