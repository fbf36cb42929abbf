"""Seeded random-weight checkpoints in exactly the official file formats, for tests and offline demos.

The official weights cannot be downloaded everywhere (CI has no internet), but the loaders, the export and the
server must be exercised on files shaped exactly like the real ones: same container dicts, key names, dtypes,
and for the detector an ultralytics 8.0.x-style pickle whose YOLOv8-seg head has ``reg_max`` 26 and no
``proto``.

Plain random init is degenerate for a segment-everything pipeline (every anchor gets the same class score;
every box gets the same mask), so weights are adjusted deterministically, then saved in the official formats:
- detector: BatchNorm statistics calibrated on the real images shipped with ultralytics, box-regression logits
  spread so boxes differ in size, and class weights/bias set so that roughly ``target_boxes`` candidates pass
  conf 0.4 on those images;
- decoder: the box-independent part of the mask hypernetwork output is removed (its mean over many boxes is
  subtracted from the last bias), so each box gets its own mask.
The masks these weights produce are meaningless; only the *format and the data flow* are real.

    python -m mobilesamv2.fake_checkpoints --out weights/fake
"""

from __future__ import annotations

import argparse
import math
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .assets import sample_images
from .modeling.detector import _ultralytics_offline
from .modeling.sam import build_mask_decoder, build_prompt_encoder, build_tiny_vit, build_vit
from .processing.boxes import CONF_THRESHOLD
from .processing.image import letterbox

FILENAMES = {
    "detector": "ObjectAwareModel.pt",
    "decoder": "Prompt_guided_Mask_Decoder.pt",
    "efficientvit_l2": "l2.pt",
    "tiny_vit": "mobile_sam.pt",
    "sam_vit_h": "sam_vit_h_4b8939.pth",
}
ULTRALYTICS_8_0_VERSION = "8.0.120"  # the version MobileSAMv2 vendors
DETECTOR_REG_MAX = 26


def _seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


# --- object-aware model -------------------------------------------------------------------------------------


def _detector_yaml(scale: str) -> dict:
    import yaml
    from ultralytics.utils import ROOT

    cfg = yaml.safe_load((ROOT / "cfg/models/v8/yolov8-seg.yaml").read_text())
    cfg.update(nc=1, scale=scale, reg_max=DETECTOR_REG_MAX)
    return cfg


def _calibration_batches(channel_order: str = "bgr") -> list[torch.Tensor]:
    out = []
    for path in sample_images():
        import cv2

        rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        boxed, _ = letterbox(rgb)
        if channel_order == "bgr":
            boxed = boxed[:, :, ::-1]
        out.append(torch.from_numpy(np.ascontiguousarray(boxed)).permute(2, 0, 1)[None].float() / 255)
    return out


@torch.no_grad()
def _calibrate_detector(model: nn.Module, target_boxes: int) -> None:
    from ultralytics.nn.modules.head import Detect

    batches = _calibration_batches()
    # 1. BatchNorm running statistics from real images (cumulative average), so activations are well scaled.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.train()
    for x in batches:
        model(x)
    model.eval()
    head: Detect = model.model[-1]
    # 2. Box logits spread: sharper DFL distributions give boxes of varied sizes instead of one size per
    #    level.
    for seq in head.cv2:
        seq[-1].weight.mul_(4.0)
    # 3. Class logits. A random 1x1 class conv mostly reads image-global feature statistics, so one image gets
    #    thousands of candidates and the next none. Project each level's weights off the differences between
    #    the images' mean features (equal mean logit on every calibration image), unit-scale the spread, then
    #    set the bias so that at least ~target_boxes anchors per image pass conf 0.4.
    inputs: list[list[torch.Tensor]] = [[] for _ in head.cv3]
    hooks = [
        seq[-1].register_forward_pre_hook(lambda _m, args, i=i: inputs[i].append(args[0][0].flatten(1)))
        for i, seq in enumerate(head.cv3)
    ]
    for x in batches:
        model(x)
    for h in hooks:
        h.remove()
    for level, seq in enumerate(head.cv3):
        means = torch.stack([f.mean(1) for f in inputs[level]])  # (images, C)
        diffs = means[1:] - means[:1]
        basis = torch.linalg.qr(diffs.T).Q if len(diffs) else torch.zeros(means.shape[1], 0)  # (C, images-1)
        w = seq[-1].weight[:, :, 0, 0]  # (nc, C)
        seq[-1].weight[:, :, 0, 0] = w - (w @ basis) @ basis.T
    logits = [
        torch.cat([(seq[-1].weight[:, :, 0, 0] @ inputs[lv][k]).flatten() for lv, seq in enumerate(head.cv3)])
        for k in range(len(batches))
    ]
    scale = 1.0 / float(torch.cat(logits).std().clamp(min=1e-6))
    per_image = [float(torch.quantile(x * scale, 1.0 - target_boxes / x.numel())) for x in logits]
    shift = math.log(CONF_THRESHOLD / (1 - CONF_THRESHOLD)) - min(per_image)
    for seq in head.cv3:
        seq[-1].weight.mul_(scale)
        seq[-1].bias.copy_(torch.full_like(seq[-1].bias, shift))


def _as_ultralytics_8_0(model: nn.Module) -> nn.Module:
    """Strip what ultralytics 8.0.x modules did not have, so the pickle looks like MobileSAMv2's."""
    from ultralytics.nn.modules.head import Detect

    head = model.model[-1]
    del head.proto  # MobileSAMv2's head was built without the prototype branch
    head.detect = Detect.forward  # 8.0.x Segment kept this reference
    for name in ("_end2end", "one2one_cv2", "one2one_cv3", "one2one_cv4"):
        head.__dict__.pop(name, None)
        head._modules.pop(name, None)
    return model


def make_detector(path: Path, seed: int = 0, scale: str = "n", target_boxes: int = 8) -> Path:
    """Write ``ObjectAwareModel.pt``: a YOLOv8{scale}-seg, nc=1, reg_max 26, no proto, FP16, pickled in an
    ultralytics 8.0.x trainer checkpoint dict."""
    _ultralytics_offline()
    from ultralytics.nn.tasks import SegmentationModel

    _seed(seed)
    model = SegmentationModel(_detector_yaml(scale), ch=3, nc=1, verbose=False)
    model.names = {0: "object"}
    _calibrate_detector(model, target_boxes)
    model = _as_ultralytics_8_0(model).half()
    train_args = {
        "task": "segment",
        "mode": "train",
        "model": f"yolov8{scale}-seg.yaml",
        "data": "sa1b.yaml",
        "imgsz": 1024,
        "batch": 16,
        "epochs": 30,
        "conf": CONF_THRESHOLD,
        "iou": 0.9,
        "max_det": 300,
    }
    ckpt = {
        "epoch": -1,
        "best_fitness": None,
        "model": model,
        "ema": None,
        "updates": None,
        "optimizer": None,
        "train_args": train_args,
        "date": datetime(2023, 12, 15).isoformat(),
        "version": ULTRALYTICS_8_0_VERSION,
    }
    torch.save(ckpt, path)
    return path


# --- SAM parts ----------------------------------------------------------------------------------------------


@torch.no_grad()
def _separate_masks(prompt_encoder: nn.Module, mask_decoder: nn.Module, seed: int) -> None:
    """Remove the box-independent component of the single-mask hypernetwork output (its mean over 32 random
    boxes: each box costs a pass of the two-way transformer over the 64x64 embedding)."""
    gen = torch.Generator().manual_seed(seed)
    embedding = torch.randn(1, 256, 64, 64, generator=gen)
    xy = torch.rand(32, 2, generator=gen) * 800
    wh = torch.rand(32, 2, generator=gen) * 400 + 16
    boxes = torch.cat([xy, (xy + wh).clamp(max=1023)], 1)
    sparse, dense = prompt_encoder(points=None, boxes=boxes, masks=None)
    tokens = torch.cat([mask_decoder.iou_token.weight, mask_decoder.mask_tokens.weight], 0)
    tokens = torch.cat([tokens.unsqueeze(0).expand(len(boxes), -1, -1), sparse], 1)
    hs, _ = mask_decoder.transformer(embedding + dense, prompt_encoder.get_dense_pe(), tokens)
    mlp = mask_decoder.output_hypernetworks_mlps[0]
    hyper = mlp(hs[:, 1])
    last = mlp.layers[-1]
    last.bias.sub_(hyper.mean(0))
    # unit-scale the box-dependent part so logits are O(1)
    scale = 1.0 / float((hyper - hyper.mean(0)).std().clamp(min=1e-6))
    last.weight.mul_(scale)
    last.bias.mul_(scale)


def make_decoder_parts(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    _seed(seed + 1)
    prompt_encoder, mask_decoder = build_prompt_encoder().eval(), build_mask_decoder().eval()
    _separate_masks(prompt_encoder, mask_decoder, seed)
    return prompt_encoder, mask_decoder


def _prefixed(prefix: str, module: nn.Module) -> dict:
    return {f"{prefix}.{k}": v.clone() for k, v in module.state_dict().items()}


def write_encoder(
    out: Path, name: str, seed: int = 0, sam_parts: dict | None = None, vit_h_depth: int = 2
) -> Path:
    """Write one encoder's official file into ``out``. The official files also carry the prompt encoder's and
    mask decoder's weights (``sam_parts``, see :func:`write_all`); without them the file still loads as the
    image encoder, all the loaders read of it, and EfficientViT-SAM-L2's needs no ultralytics (TinyViT and
    ViT-H are ultralytics modules)."""
    from .modeling.efficientvit import build_efficientvit_l2_image_encoder

    out.mkdir(parents=True, exist_ok=True)
    sam_parts = sam_parts or {}
    path = out / FILENAMES[name]
    if name == "efficientvit_l2":
        _seed(seed + 2)
        encoder = build_efficientvit_l2_image_encoder()
        torch.save({"state_dict": {**_prefixed("image_encoder", encoder), **sam_parts}}, path)
    elif name == "tiny_vit":
        _seed(seed + 3)
        torch.save({**_prefixed("image_encoder", build_tiny_vit()), **sam_parts}, path)
    elif name == "sam_vit_h":
        _seed(seed + 4)
        global_idx = tuple(i for i in (7, 15, 23, 31) if i < vit_h_depth) or (vit_h_depth - 1,)
        vit = build_vit(depth=vit_h_depth, global_attn_indexes=global_idx)
        torch.save({**_prefixed("image_encoder", vit), **sam_parts}, path)
    else:
        raise ValueError(f"unknown encoder {name!r}")
    return path


def write_all(
    out: Path,
    seed: int = 0,
    detector_scale: str = "n",
    vit_h_depth: int = 2,
    encoders: tuple[str, ...] = ("efficientvit_l2", "tiny_vit", "sam_vit_h"),
) -> dict[str, Path]:
    """Write the official-format files into ``out``; returns name -> path.

    ``vit_h_depth`` < 32 writes a ViT-H of reduced depth (same width, heads, window/global pattern per block)
    so CI can run it; the loader reads the depth off the keys.
    """
    out.mkdir(parents=True, exist_ok=True)
    written = {"detector": make_detector(out / FILENAMES["detector"], seed, detector_scale)}
    prompt_encoder, mask_decoder = make_decoder_parts(seed)
    torch.save(
        {"PromtEncoder": prompt_encoder.state_dict(), "MaskDecoder": mask_decoder.state_dict()},
        out / FILENAMES["decoder"],
    )
    written["decoder"] = out / FILENAMES["decoder"]
    sam_parts = {**_prefixed("prompt_encoder", prompt_encoder), **_prefixed("mask_decoder", mask_decoder)}
    for name in ("efficientvit_l2", "tiny_vit", "sam_vit_h"):
        if name in encoders:
            written[name] = write_encoder(out, name, seed, sam_parts, vit_h_depth)
    (out / "FAKE_WEIGHTS.txt").write_text(
        "Seeded random weights in the official file formats (mobilesamv2.fake_checkpoints).\n"
        "Masks made with them are meaningless; use them to test the data flow only.\n"
    )
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=Path("weights/fake"), help="folder to write the files into"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--detector-scale", default="n", choices=list("nsmlx"), help="YOLOv8 size of the detector"
    )
    parser.add_argument("--vit-h-depth", type=int, default=2, help="ViT-H blocks (32 = full size, 2.5 GB)")
    parser.add_argument("--encoders", default="efficientvit_l2,tiny_vit,sam_vit_h")
    args = parser.parse_args(argv)
    written = write_all(
        args.out, args.seed, args.detector_scale, args.vit_h_depth, tuple(args.encoders.split(","))
    )
    for name, path in written.items():
        print(f"{name:16s} {path} ({path.stat().st_size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
