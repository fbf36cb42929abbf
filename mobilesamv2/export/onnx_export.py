"""ONNX export of the three networks, each checked against PyTorch with ONNX Runtime.

All three use torch's dynamo exporter (``torch.onnx.export(dynamo=True)``), which handles SAM's LayerNorm2d
and the decoder's dynamic prompt axis as they are. Shapes that vary in serving are dynamic in the graph:
- ``image_encoder``: batch;
- ``prompt_decoder``: prompts N and points per prompt P (never a fixed N, never a baked-in image size);
- ``detector``: batch, and letterbox height/width (multiples of 32, any aspect ratio).
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.export import Dim

import segment_everything_contract as contract

from ..modeling.detector import ObjectAwareNetwork, dfl_softmax_on_last_axis
from ..modeling.efficientvit import resizes_as_matmul
from ..modeling.image_encoder import ImageEncoderGraph
from ..modeling.sam import PromptDecoder

OPSET = 18
#: Graphs served by ONNX Runtime: GELU is one ONNX op from opset 20 (a fused kernel in ONNX Runtime), not Erf
#: or Tanh + 4 to 7 elementwise ops (the L2 encoder's 57 tanh GELUs took ~20% of its CPU time as such).
#: Their TensorRT sources are written at :data:`OPSET` (:func:`write_tensorrt_source`).
GELU_OPSET = 20
DECODER_OPSET = GELU_OPSET

# Tensor names of the served graphs: the contract's (the detector graph is wrapped by object_discovery).
ENCODER_INPUTS = tuple(t.name for t in contract.ENCODER_INPUTS)
ENCODER_OUTPUTS = tuple(t.name for t in contract.ENCODER_OUTPUTS)
DECODER_INPUTS = tuple(t.name for t in contract.DECODER_INPUTS)
DECODER_OUTPUTS = tuple(t.name for t in contract.DECODER_OUTPUTS)
INTERACTIVE_INPUTS = tuple(t.name for t in contract.INTERACTIVE_DECODER_INPUTS)
INTERACTIVE_OUTPUTS = tuple(t.name for t in contract.INTERACTIVE_DECODER_OUTPUTS)
DETECTOR_INPUTS = ("images",)
DETECTOR_OUTPUTS = ("predictions",)

MAX_PROMPTS = 4096
MAX_POINTS_PER_PROMPT = 64


class ParityError(AssertionError):
    """An exported graph disagrees with PyTorch beyond the tolerance."""


@dataclass
class ExportReport:
    name: str
    path: Path
    export_seconds: float
    max_abs_diff: float
    tolerance: float
    cases: list[str]
    onnx_ms: float  # median ORT time of the first case
    torch_ms: float

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "file": self.path.name,
            "export_seconds": round(self.export_seconds, 2),
            "max_abs_diff": self.max_abs_diff,
            "tolerance": self.tolerance,
            "cases": self.cases,
            "onnx_ms": round(self.onnx_ms, 1),
            "torch_ms": round(self.torch_ms, 1),
        }


def _export(
    module: nn.Module, args: tuple, path: Path, input_names, output_names, dynamic_shapes, opset: int = OPSET
) -> float:
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        # Notes of the exporter that say nothing about the graph (whose parity is checked right after): how it
        # named axes that share a dimension, and the detector's anchors, which ultralytics sets in forward.
        warnings.filterwarnings("ignore", message=r"# The axis name: .* will not be used")
        warnings.filterwarnings("ignore", message=r"The tensor attributes .* were assigned during export")
        torch.onnx.export(
            module.eval(),
            args,
            str(path),
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_shapes=dynamic_shapes,
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    cast_uint8_inputs_first(path)
    return time.perf_counter() - start


#: Ops that read only the shape of a tensor: they may read the Cast's output instead of the uint8 input.
_SHAPE_ONLY_OPS = ("Shape", "Size")


def cast_uint8_inputs_first(path: Path) -> bool:
    """Make every uint8 graph input feed only Cast nodes, rewriting the file when needed; True if rewritten.

    TensorRT accepts a uint8 network input only as the direct input of a Cast (NVIDIA/TensorRT#3985, #2809).
    The modules cast first, but the exporter still reads dynamic dimensions with ``Shape`` on the input
    itself; such shape-only readers are moved to the Cast's output (same shape), and the Cast to the top of
    the graph.
    Any other consumer means the module computes on uint8, which must be fixed in the module.
    """
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    changed = False
    for value in graph.input:
        if value.type.tensor_type.elem_type != onnx.TensorProto.UINT8:
            continue
        consumers = [n for n in graph.node if value.name in n.input]
        casts = [n for n in consumers if n.op_type == "Cast"]
        others = [n for n in consumers if n.op_type != "Cast"]
        if not others:
            continue
        bad = sorted({n.op_type for n in others if n.op_type not in _SHAPE_ONLY_OPS})
        if bad or not casts:
            raise ValueError(
                f"{path.name}: uint8 input {value.name!r} feeds {', '.join(bad) or 'no Cast'}; "
                "cast it to float before any other op"
            )
        cast = casts[0]
        for node in others:
            node.input[:] = [cast.output[0] if name == value.name else name for name in node.input]
        graph.node.remove(cast)
        graph.node.insert(0, cast)  # before its new readers (its only input is the graph input)
        changed = True
    if changed:
        onnx.checker.check_model(model)
        onnx.save(model, str(path))
    return changed


#: Constants of GELU's definitions (ONNX ``Gelu``-20's function body), by initializer name.
_GELU_CONSTANTS = {
    "gelu_half": 0.5,
    "gelu_one": 1.0,
    "gelu_cubic": 0.044715,
    "gelu_sqrt_2_over_pi": math.sqrt(2 / math.pi),
    "gelu_inv_sqrt_2": 1 / math.sqrt(2),
}


def expand_gelu(model) -> int:
    """Replace every ONNX ``Gelu`` (opset 20) in ``model``'s main graph with the elementary ops of its
    definition (Erf, or Tanh for ``approximate="tanh"``), as opset 18 writes it; returns how many.

    The result is a graph at opset :data:`OPSET` for TensorRT's ONNX parser, whose opset and operator
    support trail ONNX Runtime's; values are the same to rounding (tests/test_export.py)."""
    import onnx
    from onnx import helper

    graph = model.graph
    nodes, count = [], 0
    for node in graph.node:
        if node.op_type != "Gelu" or node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        approximate = next((a.s.decode() for a in node.attribute if a.name == "approximate"), "none")
        x, y, tag = node.input[0], node.output[0], f"gelu{count}"
        count += 1

        def out(suffix: str, tag=tag) -> str:
            return f"{tag}_{suffix}"

        if approximate == "tanh":
            nodes += [
                helper.make_node("Mul", [x, x], [out("x2")]),
                helper.make_node("Mul", [out("x2"), x], [out("x3")]),
                helper.make_node("Mul", [out("x3"), "gelu_cubic"], [out("cx3")]),
                helper.make_node("Add", [x, out("cx3")], [out("inner")]),
                helper.make_node("Mul", [out("inner"), "gelu_sqrt_2_over_pi"], [out("arg")]),
                helper.make_node("Tanh", [out("arg")], [out("phi")]),
            ]
        elif approximate == "none":
            nodes += [
                helper.make_node("Mul", [x, "gelu_inv_sqrt_2"], [out("arg")]),
                helper.make_node("Erf", [out("arg")], [out("phi")]),
            ]
        else:
            raise ValueError(f"Gelu node {node.name!r}: unknown approximate={approximate!r}")
        nodes += [
            helper.make_node("Add", [out("phi"), "gelu_one"], [out("cdf")]),
            helper.make_node("Mul", [x, out("cdf")], [out("xcdf")]),
            helper.make_node("Mul", [out("xcdf"), "gelu_half"], [y], name=node.name),
        ]
    if count:
        graph.initializer.extend(
            onnx.numpy_helper.from_array(np.array(value, np.float32), name)
            for name, value in _GELU_CONSTANTS.items()
        )
    del graph.node[:]
    graph.node.extend(nodes)
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = min(opset.version, OPSET)
    onnx.checker.check_model(model)
    return count


def op_counts(path: Path) -> tuple[dict[str, int], int]:
    """``({op type: nodes in the main graph}, default-domain opset)`` of an ONNX file."""
    import collections

    import onnx

    model = onnx.load(str(path), load_external_data=False)
    counts = collections.Counter(node.op_type for node in model.graph.node)
    return dict(counts), next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def write_tensorrt_source(path: Path, out: Path) -> int:
    """Write ``path``'s graph for TensorRT to ``out`` (:func:`expand_gelu`); returns the GELUs expanded."""
    import onnx

    model = onnx.load(str(path))
    count = expand_gelu(model)
    onnx.save(model, str(out))
    return count


def ort_session(path: Path, threads: int = 0):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_parity(
    name: str,
    module: nn.Module,
    path: Path,
    input_names: Sequence[str],
    cases: Sequence[tuple[str, tuple[torch.Tensor, ...]]],
    tolerance: float,
    export_seconds: float,
) -> ExportReport:
    """Run every case through PyTorch (``module``: the reference formulation) and ONNX Runtime; fail if any
    output differs by more than ``tolerance`` (absolute, on outputs scaled to at most 1:
    ``|a - b| / max(1, |b|max)``)."""
    session = ort_session(path)
    worst = 0.0
    onnx_ms = torch_ms = 0.0
    for i, (_, args) in enumerate(cases):
        t0 = time.perf_counter()
        with torch.no_grad():
            expected = module(*args)
        t1 = time.perf_counter()
        got = session.run(None, {n: a.numpy() for n, a in zip(input_names, args, strict=True)})
        t2 = time.perf_counter()
        if i == 0:
            torch_ms, onnx_ms = (t1 - t0) * 1e3, (t2 - t1) * 1e3
        expected = expected if isinstance(expected, (tuple, list)) else (expected,)
        for expected_tensor, g in zip(expected, got, strict=True):
            e = expected_tensor.numpy()
            if e.shape != g.shape:
                raise ParityError(f"{name}: output shape {g.shape} != PyTorch {e.shape}")
            diff = float(np.abs(e - g).max() / max(1.0, float(np.abs(e).max()))) if e.size else 0.0
            worst = max(worst, diff)
    report = ExportReport(
        name, path, export_seconds, worst, tolerance, [c for c, _ in cases], onnx_ms, torch_ms
    )
    if worst > tolerance:
        raise ParityError(
            f"{name}: ONNX differs from PyTorch by {worst:.3g} > tolerance {tolerance:g} ({path})"
        )
    return report


def export_image_encoder(
    graph: ImageEncoderGraph,
    path: Path,
    sample_canvases: Sequence[tuple[np.ndarray, np.ndarray]],
    tolerance: float = 1e-3,
    tuned: bool = True,
) -> ExportReport:
    """``image (B,1024,1024,3) uint8, image_size (B,2) int32 -> image_embeddings (B,256,64,64)``; checked at
    batch 1 and 2 on the given canvases.

    ``tuned`` (the served graph): written for ONNX Runtime, at opset :data:`GELU_OPSET` with the bicubic
    resizes as matrix products; the build derives the TensorRT source from it with
    :func:`write_tensorrt_source`. ``tuned=False`` exports the module's ops as they are at :data:`OPSET`
    (bicubic ``Resize``, GELU as elementary ops): the formulation the served graph was measured against
    (BENCHMARKS.md, "Graph formulations")."""
    canvases = [torch.from_numpy(c)[None] for c, _ in sample_canvases]
    sizes = [torch.from_numpy(s)[None] for _, s in sample_canvases]
    batch = Dim("batch", min=1, max=64)
    # torch.export specialises dimensions of size 1: trace with a batch of 2
    example = (torch.cat([canvases[0], canvases[-1]]), torch.cat([sizes[0], sizes[-1]]))
    # ONNX Runtime's cubic Resize is slow; two MatMuls are the same numbers
    with resizes_as_matmul(graph) if tuned else contextlib.nullcontext():
        seconds = _export(
            graph,
            example,
            path,
            ENCODER_INPUTS,
            ENCODER_OUTPUTS,
            {"image": {0: batch}, "image_size": {0: batch}},
            opset=GELU_OPSET if tuned else OPSET,
        )
    cases = [("batch 1", (canvases[0], sizes[0]))]
    if len(canvases) > 1:
        cases.append(("batch 2", (torch.cat(canvases[:2]), torch.cat(sizes[:2]))))
    # checked against the encoder's own formulation (bicubic F.interpolate), not the exported one
    return check_parity("image_encoder", graph, path, ENCODER_INPUTS, cases, tolerance, seconds)


def box_prompts(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random box prompts in the 1024 frame as (coords (n,2,2), labels (n,2))."""
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=gen) * 900
    wh = torch.rand(n, 2, generator=gen) * 400 + 8
    coords = torch.stack([xy, (xy + wh).clamp(max=1023)], 1)
    return coords, torch.tensor([[2.0, 3.0]]).repeat(n, 1)


def export_prompt_decoder(
    decoder: PromptDecoder,
    path: Path,
    embedding: torch.Tensor,
    prompt_counts: Sequence[int] = (1, 7, 64),
    tolerance: float = 1e-3,
    factorized: bool = True,
) -> ExportReport:
    """``image_embeddings (1,256,64,64), point_coords (N,P,2), point_labels (N,P) -> low_res_masks
    (N,1,256,256), iou_predictions (N,1)``; checked against the plain PyTorch decoder with N box prompts for
    each N in ``prompt_counts`` and with point prompts.

    ``factorized`` exports :class:`FactorizedPromptDecoder` (image-side work once per call, ~2.2x fewer FLOPs
    per prompt); ``False`` exports SAM's formulation as it is (the TensorRT path)."""
    from ..modeling.fast_decoder import FactorizedPromptDecoder

    graph = FactorizedPromptDecoder(decoder).eval() if factorized else decoder
    n, p = Dim("prompts", min=1, max=MAX_PROMPTS), Dim("points", min=1, max=MAX_POINTS_PER_PROMPT)
    coords, labels = box_prompts(3)
    seconds = _export(
        graph,
        (embedding, coords, labels),
        path,
        DECODER_INPUTS,
        DECODER_OUTPUTS,
        {"image_embeddings": None, "point_coords": {0: n, 1: p}, "point_labels": {0: n, 1: p}},
        opset=DECODER_OPSET if factorized else OPSET,
    )
    cases = [(f"N={k} boxes", (embedding, *box_prompts(k, seed=k))) for k in prompt_counts]
    points = torch.tensor([[[500.0, 400.0], [100.0, 100.0], [0.0, 0.0]]] * 2)
    point_labels = torch.tensor([[1.0, 0.0, -1.0]] * 2)
    cases.append(("N=2 points (fg, bg, pad)", (embedding, points, point_labels)))
    name = "prompt_decoder" if factorized else "prompt_decoder (plain)"
    return check_parity(name, decoder, path, DECODER_INPUTS, cases, tolerance, seconds)


def export_interactive_decoder(
    decoder: PromptDecoder, path: Path, embedding: torch.Tensor, tolerance: float = 1e-3
) -> ExportReport:
    """SAM's full decoder for SegAny (:class:`InteractiveDecoder`): prompts plus ``mask_input (N,1,256,256)``
    and ``has_mask_input (N,)`` -> all four mask tokens ``(N,4,256,256)`` and IoUs ``(N,4)``; checked with box
    and point prompts, with and without a previous mask."""
    from ..modeling.sam import InteractiveDecoder

    graph = InteractiveDecoder(decoder).eval()
    n, p = Dim("prompts", min=1, max=MAX_PROMPTS), Dim("points", min=1, max=MAX_POINTS_PER_PROMPT)
    gen = torch.Generator().manual_seed(5)

    def masks(k: int, given: bool) -> tuple[torch.Tensor, torch.Tensor]:
        logits = torch.randn(k, 1, 256, 256, generator=gen) * 4 if given else torch.zeros(k, 1, 256, 256)
        return logits, torch.full((k,), 1.0 if given else 0.0)

    coords, labels = box_prompts(3)
    seconds = _export(
        graph,
        (embedding, coords, labels, *masks(3, True)),
        path,
        INTERACTIVE_INPUTS,
        INTERACTIVE_OUTPUTS,
        {
            "image_embeddings": None,
            "point_coords": {0: n, 1: p},
            "point_labels": {0: n, 1: p},
            "mask_input": {0: n},
            "has_mask_input": {0: n},
        },
    )
    points = torch.tensor([[[500.0, 400.0], [0.0, 0.0]], [[100.0, 700.0], [0.0, 0.0]]])
    point_labels = torch.tensor([[1.0, -1.0]] * 2)
    cases = [
        ("N=2 points, no mask", (embedding, points, point_labels, *masks(2, False))),
        ("N=2 points, previous mask", (embedding, points, point_labels, *masks(2, True))),
        ("N=1 box, previous mask", (embedding, *box_prompts(1, seed=9), *masks(1, True))),
    ]
    return check_parity("interactive_decoder", graph, path, INTERACTIVE_INPUTS, cases, tolerance, seconds)


class DetectorGraph(nn.Module):
    """The served detector: letterboxed uint8 ``(B, H, W, 3)`` in the network's channel order ->
    ``(B, 4 + nc, A)``. The /255 scaling and HWC->CHW happen in the graph (exact, and the request stays
    uint8)."""

    def __init__(self, network: ObjectAwareNetwork) -> None:
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # Cast before anything else reads the uint8 tensor (TensorRT accepts uint8 only as a Cast's input).
        return self.network(images.float().permute(0, 3, 1, 2) / 255.0)


def export_detector(
    network: ObjectAwareNetwork,
    path: Path,
    letterboxes: Sequence[np.ndarray],
    tolerance: float = 1e-4,
    tuned: bool = True,
) -> ExportReport:
    """``images (B,H,W,3) uint8``, H and W multiples of 32 -> ``predictions (B, 4 + nc, A)``; checked on every
    letterbox given (different aspect ratios) against upstream's forward.

    ``tuned`` (the served graph): the head's DFL softmax over the last axis
    (:func:`~mobilesamv2.modeling.detector.dfl_softmax_on_last_axis`); ``False`` exports upstream's ops."""
    graph = DetectorGraph(network).eval()
    head = network.model.model[-1]
    head.dynamic = True  # rebuild anchors from the feature shapes inside the graph
    h32, w32 = Dim("h32", min=1, max=128), Dim("w32", min=1, max=128)
    batch = Dim("batch", min=1, max=16)
    samples = [torch.from_numpy(np.ascontiguousarray(x))[None] for x in letterboxes]
    # torch.export specialises dimensions of size 1: trace with a batch of 2
    with dfl_softmax_on_last_axis(network) if tuned else contextlib.nullcontext():
        seconds = _export(
            graph,
            (samples[0].repeat(2, 1, 1, 1),),
            path,
            DETECTOR_INPUTS,
            DETECTOR_OUTPUTS,
            {"images": {0: batch, 1: 32 * h32, 2: 32 * w32}},
        )
    cases = [(f"{tuple(x.shape[1:3])}", (x,)) for x in samples]
    return check_parity("detector", graph, path, DETECTOR_INPUTS, cases, tolerance, seconds)
