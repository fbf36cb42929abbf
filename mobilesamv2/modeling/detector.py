"""MobileSAMv2's object-aware model (``ObjectAwareModel.pt``): a YOLOv8-seg network trained on SA-1B.

The official file is an ultralytics 8.0.x trainer checkpoint holding the *pickled* ``nn.Module``. Its Segment
head has ``reg_max`` 26 and was built without the mask-prototype branch (``proto``); current ultralytics
unpickles it fine but its ``Segment.forward`` calls ``self.proto`` and fails with ``'Segment' object has no
attribute 'proto'``. MobileSAMv2 never uses prototypes (only boxes), so the head is given a forward that skips
them: ``Detect.forward`` on a Segment head already returns ``(B, 4 + nc + nm, A)`` = decoded ``xywh`` boxes in
input pixels, sigmoid class scores and the unused mask coefficients — the tensor the reference's NMS reads.

Security: unpickling runs code from the file. Only load detector files you trust (the official release or
files made by ``mobilesamv2.fake_checkpoints``). Every other checkpoint is loaded with ``weights_only=True``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class CheckpointError(RuntimeError):
    """A checkpoint file does not have the official format; the message names the file and what is wrong."""


def _proto_free_segment_class() -> type:
    from ultralytics.nn.modules.head import Detect, Segment

    class ProtoFreeSegment(Segment):
        """A YOLOv8 Segment head without prototypes: returns boxes, class scores and mask coefficients."""

        def forward(self, x: list[torch.Tensor]):  # type: ignore[override]
            return Detect.forward(self, x)

    return ProtoFreeSegment


def _ultralytics_offline() -> None:
    import os
    import tempfile

    # ultralytics probes DNS and downloads fonts unless told it is offline, and writes settings under $HOME.
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "False")
    os.environ.setdefault("YOLO_CONFIG_DIR", os.path.join(tempfile.gettempdir(), "mobilesamv2-ultralytics"))


class ObjectAwareNetwork(nn.Module):
    """The detector's network: ``(B, 3, H, W)`` float in [0, 1] -> ``(B, 4 + nc, A)`` (``xywh`` + class
    scores).

    H and W are multiples of 32 (a letterbox). The mask coefficients are dropped: SegEvery only uses the
    boxes.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        head = model.model[-1]
        self.num_classes = int(head.nc)
        self.reg_max = int(head.reg_max)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.model(images)
        out = out[0] if isinstance(out, (tuple, list)) else out
        return out[:, : 4 + self.num_classes]


def load_object_aware_model(path: str | Path, fuse: bool = True) -> ObjectAwareNetwork:
    """Load ``ObjectAwareModel.pt`` (trusted input: it is unpickled) as an eval-mode float32 network.

    Raises:
        CheckpointError: the file is not an ultralytics checkpoint with a YOLOv8 Segment/Detect head.
    """
    _ultralytics_offline()
    from ultralytics.nn.modules.head import Detect, Segment
    from ultralytics.nn.tasks import temporary_modules

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        # 8.0.x pickles name modules that moved since (ultralytics.yolo.*): map them to their new homes.
        with temporary_modules(
            modules={
                "ultralytics.yolo.utils": "ultralytics.utils",
                "ultralytics.yolo.v8": "ultralytics.models.yolo",
                "ultralytics.yolo.data": "ultralytics.data",
            }
        ):
            ckpt = torch.load(path, map_location="cpu", weights_only=False)  # trusted input only, see above
    except Exception as exc:  # truncated zip, not a torch file, missing classes...
        raise CheckpointError(f"{path}: cannot unpickle the object-aware model checkpoint: {exc}") from exc
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("ema") or ckpt.get("model"), nn.Module):
        keys = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(
            f"{path}: expected an ultralytics checkpoint dict with a pickled nn.Module under 'ema' or "
            f"'model', got {keys}"
        )
    model = (ckpt.get("ema") or ckpt["model"]).float()
    head = model.model[-1]
    if not isinstance(head, Detect):
        raise CheckpointError(
            f"{path}: last layer is {type(head).__name__}, expected a YOLOv8 Detect/Segment head"
        )
    if isinstance(head, Segment):
        # Official file: no `proto` at all. A head that has one gets the same forward: prototypes are never
        # used.
        head.__class__ = _proto_free_segment_class()
    if fuse:
        model = model.fuse(verbose=False) if "verbose" in model.fuse.__code__.co_varnames else model.fuse()
    for p in model.parameters():
        p.requires_grad_(False)
    return ObjectAwareNetwork(model.eval())
