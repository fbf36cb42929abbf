"""Strict loaders for the official checkpoint files, and the encoder registry.

File formats:

- ``l2.pt`` (EfficientViT-SAM-L2): ``{'state_dict': {image_encoder.*, prompt_encoder.*, mask_decoder.*}}``
- ``mobile_sam.pt`` (TinyViT): flat SAM state dict, ``image_encoder.*`` + ``prompt_encoder.*`` + ...
- ``sam_vit_h_4b8939.pth``: flat SAM state dict
- ``Prompt_guided_Mask_Decoder.pt``: ``{'PromtEncoder': state_dict, 'MaskDecoder': state_dict}`` (sic)
- ``ObjectAwareModel.pt``: pickled ultralytics 8.0.x checkpoint (see ``detector.py``)

Every state dict is loaded with ``weights_only=True`` and ``strict=True``: a missing or unexpected key, a
wrong prefix or a wrong shape fails with a :class:`CheckpointError` naming the file and the keys.
(MobileSAMv2's own TinyViT loader is non-strict, so a wrongly prefixed file silently loads nothing; this one
refuses it.)
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .detector import CheckpointError, load_object_aware_model
from .sam import PromptDecoder, build_mask_decoder, build_prompt_encoder, build_tiny_vit, build_vit

__all__ = [
    "ENCODERS",
    "CheckpointError",
    "EncoderSpec",
    "load_image_encoder",
    "load_object_aware_model",
    "load_prompt_decoder",
    "load_state_dict_file",
]


def load_state_dict_file(path: str | Path) -> dict:
    """``torch.load(weights_only=True)`` with errors that name the file (truncated, not a torch file...)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {exc}"
        ) from exc


def _short(keys: list[str], limit: int = 8) -> str:
    head = ", ".join(keys[:limit])
    return f"{head}, ... ({len(keys)} in all)" if len(keys) > limit else head


def load_strict(module: nn.Module, state_dict: dict, path: Path, what: str) -> nn.Module:
    """``load_state_dict(strict=True)`` with a message naming the file and the offending keys."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        parts = [f"{path}: {what} does not match the official architecture"]
        if missing:
            parts.append(f"missing keys: {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_short(unexpected)}")
        raise CheckpointError("; ".join(parts))
    wrong = [k for k, v in state_dict.items() if tuple(v.shape) != tuple(expected[k].shape)]
    if wrong:
        detail = ", ".join(
            f"{k} {tuple(state_dict[k].shape)} != {tuple(expected[k].shape)}" for k in wrong[:5]
        )
        raise CheckpointError(f"{path}: {what} has wrong shapes: {detail}")
    module.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()})
    return module.eval()


def strip_prefix(state_dict: dict, prefix: str, path: Path) -> dict:
    """The entries under ``prefix`` with the prefix removed; fails when there are none."""
    out = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not out:
        prefixes = sorted({k.split(".", 1)[0] + "." for k in state_dict})
        raise CheckpointError(f"{path}: no '{prefix}*' keys (found prefixes: {_short(prefixes)})")
    return out


# --- image encoders -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncoderSpec:
    """How an encoder is stored and fed.

    ``input_pool`` is 2 for EfficientViT-SAM, which the reference runs on the padded 1024 canvas halved to 512
    (``F.interpolate(bilinear)`` by exactly 2, i.e. a 2x2 average pool).
    """

    name: str
    filename: str
    build_from_state_dict: Callable[[dict, Path], nn.Module]
    container_key: str | None = None  # key of the state dict inside the file; None = a flat SAM state dict
    input_pool: int = 1


def _encoder_state_dict(path: Path, container_key: str | None) -> dict:
    ckpt = load_state_dict_file(path)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: expected a dict, got {type(ckpt).__name__}")
    if container_key is not None:
        if container_key not in ckpt or not isinstance(ckpt[container_key], dict):
            raise CheckpointError(
                f"{path}: expected a dict with key '{container_key}', got keys {_short(sorted(ckpt))}"
            )
        ckpt = ckpt[container_key]
    return strip_prefix(ckpt, "image_encoder.", path)


def _build_efficientvit_l2(state_dict: dict, path: Path) -> nn.Module:
    from .efficientvit import build_efficientvit_l2_image_encoder

    return load_strict(
        build_efficientvit_l2_image_encoder(), state_dict, path, "EfficientViT-SAM-L2 image encoder"
    )


def _build_tiny_vit(state_dict: dict, path: Path) -> nn.Module:
    return load_strict(build_tiny_vit(), state_dict, path, "MobileSAM TinyViT image encoder")


def vit_config_from_state_dict(state_dict: dict, path: Path) -> dict:
    """ViT-H/L/B hyper-parameters read off the tensor shapes: width from ``pos_embed``, depth from the block
    indices, head size from the relative position tables, and which blocks attend globally (their tables span
    the 64x64 grid: 127 rows) versus in 14x14 windows (27 rows)."""
    try:
        embed_dim = int(state_dict["pos_embed"].shape[-1])
        depth = 1 + max(int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k)))
        head_dim = int(state_dict["blocks.0.attn.rel_pos_h"].shape[-1])
        global_idx = tuple(
            i for i in range(depth) if state_dict[f"blocks.{i}.attn.rel_pos_h"].shape[0] == 2 * 64 - 1
        )
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a SAM ViT image encoder (cannot read {exc})") from exc
    return {
        "embed_dim": embed_dim,
        "depth": depth,
        "num_heads": embed_dim // head_dim,
        "global_attn_indexes": global_idx,
    }


def _build_vit(state_dict: dict, path: Path) -> nn.Module:
    config = vit_config_from_state_dict(state_dict, path)
    return load_strict(build_vit(**config), state_dict, path, f"SAM ViT image encoder {config}")


ENCODERS: dict[str, EncoderSpec] = {
    spec.name: spec
    for spec in (
        EncoderSpec(
            "efficientvit_l2", "l2.pt", _build_efficientvit_l2, container_key="state_dict", input_pool=2
        ),
        EncoderSpec("tiny_vit", "mobile_sam.pt", _build_tiny_vit),
        EncoderSpec("sam_vit_h", "sam_vit_h_4b8939.pth", _build_vit),
    )
}
DEFAULT_ENCODER = "efficientvit_l2"  # the paper's default


def encoder_spec(name: str) -> EncoderSpec:
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder '{name}'; choose one of {', '.join(ENCODERS)}")
    return ENCODERS[name]


def load_image_encoder(name: str, path: str | Path) -> nn.Module:
    """Load the image encoder ``name`` (see :data:`ENCODERS`) strictly from its official file."""
    spec = encoder_spec(name)
    path = Path(path)
    return spec.build_from_state_dict(_encoder_state_dict(path, spec.container_key), path)


# --- prompt-guided mask decoder -----------------------------------------------------------------------------


def load_prompt_decoder(path: str | Path) -> PromptDecoder:
    """Load ``Prompt_guided_Mask_Decoder.pt`` (``{'PromtEncoder': ..., 'MaskDecoder': ...}``, unprefixed
    keys)."""
    path = Path(path)
    ckpt = load_state_dict_file(path)
    if not isinstance(ckpt, dict) or not {"PromtEncoder", "MaskDecoder"} <= set(ckpt):
        keys = _short(sorted(ckpt)) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(
            f"{path}: expected a dict with keys 'PromtEncoder' and 'MaskDecoder', got {keys}"
        )
    prompt_encoder = load_strict(build_prompt_encoder(), ckpt["PromtEncoder"], path, "'PromtEncoder'")
    mask_decoder = load_strict(build_mask_decoder(), ckpt["MaskDecoder"], path, "'MaskDecoder'")
    return PromptDecoder(prompt_encoder, mask_decoder).eval()
