"""MobileSAMv2's object-aware model (``ObjectAwareModel.pt``): a YOLOv8-seg network trained on SA-1B.

The official file is an ultralytics 8.0.x trainer checkpoint holding the *pickled* ``nn.Module``. Its Segment
head has ``reg_max`` 26 and was built without the mask-prototype branch (``proto``); current ultralytics
unpickles it fine but its ``Segment.forward`` calls ``self.proto`` and fails with ``'Segment' object has no
attribute 'proto'``. MobileSAMv2 never uses prototypes (only boxes), so the head is given a forward that skips
them: ``Detect.forward`` on a Segment head already returns ``(B, 4 + nc + nm, A)`` = decoded ``xywh`` boxes in
input pixels, sigmoid class scores and the unused mask coefficients — the tensor the reference's NMS reads.

Security: a pickle is a program, and ``torch.load(weights_only=False)`` runs whatever a replaced file asks
for. This loader never does. It unpickles with :class:`_AllowListUnpickler`, which resolves only the globals
in :data:`ALLOW_LIST` (the classes and functions an ultralytics 8.0.x detection/segmentation checkpoint
references, each with the reason it is there) and restricts what the pickle may do with them:

- a global not on the list is refused before anything is imported, naming the file and the global;
- only the listed functions (tensor rebuilders, ``OrderedDict``, ``set``...) may be *called*; the network
  classes are only created bare (``cls.__new__``) and filled with their saved ``__dict__`` — their
  constructors never run (``SegmentationModel(cfg)`` would parse, and under current ultralytics ``eval``, a
  config taken from the file);
- ``getattr`` serves exactly one attribute (``Detect.forward``, which 8.0.x heads keep a reference to);
- opcodes a ``torch.save`` file never needs (protocol-0/1 instantiation, the copyreg extension registry, text
  persistent ids) are refused;
- TorchScript archives (which ``torch.load`` would hand to ``torch.jit.load``) and legacy non-zip files are
  refused before unpickling;
- the result must be data only (:func:`_check_data_only`): no class or function stored as a value, where torch
  or ultralytics would call it (a hook, a ``forward``), except ``Segment.detect``.

``torch.load(weights_only=True)`` with ``torch.serialization.safe_globals`` was the first choice but does not
fit: its unpickler lets every allow-listed class be *called* (so listing ``SegmentationModel`` would run its
config parser on attacker data), it always admits its own defaults (``collections.Counter``, ``torch.device``,
sparse/quantized/nested tensor rebuilders...), and the allow-list is process-global state shared with every
other ``torch.load`` in the process. Every other checkpoint of this project is a plain state dict and is
loaded with ``weights_only=True``.
"""

from __future__ import annotations

import _compat_pickle
import functools
import io
import os
import pickle
import types
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

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


@contextmanager
def dfl_softmax_on_last_axis(module: nn.Module) -> Iterator[int]:
    """Within the block, every ``DFL`` in ``module`` (the head's box decoding: a softmax over ``reg_max`` bins
    per box side, then their expectation) takes its softmax over the last axis and the expectation as a
    MatMul; yields how many DFLs there are. For an ONNX export: the same numbers to rounding, but ONNX
    Runtime's Softmax over a middle axis (upstream's ``transpose(2, 1).softmax(1)``) took ~24% of the
    detector's CPU time (BENCHMARKS.md, "Graph formulations"). Upstream's forward is restored on exit."""
    from ultralytics.nn.modules.block import DFL

    def last_axis_forward(layer: nn.Module):
        def forward(x: torch.Tensor) -> torch.Tensor:
            b, _, a = x.shape
            bins = layer.conv.weight.reshape(layer.c1).to(x.dtype)  # the expectation's weights: 0 .. c1 - 1
            return torch.matmul(x.view(b, 4, layer.c1, a).transpose(2, 3).softmax(-1), bins)

        return forward

    layers = [m for m in module.modules() if isinstance(m, DFL)]
    for layer in layers:
        layer.forward = last_axis_forward(layer)
    try:
        yield len(layers)
    finally:
        for layer in layers:
            del layer.forward


def load_object_aware_model(path: str | Path, fuse: bool = True) -> ObjectAwareNetwork:
    """Load ``ObjectAwareModel.pt`` as an eval-mode float32 network, unpickling it through the allow-list.

    Raises:
        CheckpointError: the file is not an ultralytics checkpoint with a YOLOv8 Segment/Detect head, or it
            references a global or pickle operation an ultralytics 8.0.x checkpoint does not need.
    """
    path = Path(path)
    return network_from_checkpoint(read_object_aware_checkpoint(path), path, fuse=fuse)


def network_from_checkpoint(ckpt: Any, path: str | Path, fuse: bool = True) -> ObjectAwareNetwork:
    """The network of an already unpickled ultralytics checkpoint dict (``ema`` or ``model``), in float32
    eval mode, with the prototype-free head forward; ``path`` only names the file in errors."""
    _ultralytics_offline()
    from ultralytics.nn.modules.head import Detect, Segment

    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("ema") or ckpt.get("model"), nn.Module):
        keys = sorted(ckpt, key=str) if isinstance(ckpt, dict) else type(ckpt).__name__
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


# --- allow-list unpickling ----------------------------------------------------------------------------------

# How an allow-listed global may be used by the pickle.
CALL = "call"  # a function or type the pickle may call (REDUCE) with arguments from the file
MODULE = "module"  # an nn.Module class: created bare (NEWOBJ), filled by its __setstate__ (BUILD)
RECORD = "record"  # a plain attribute holder: called with no arguments, then its __dict__ filled (BUILD)


@dataclass(frozen=True)
class Allowed:
    module: str  # as written by current ultralytics/torch (8.0.x paths are mapped first, see LEGACY_MODULES)
    name: str
    use: str  # CALL, MODULE or RECORD
    why: str


# The complete list of globals an ultralytics 8.0.x detection/segmentation checkpoint (``torch.save`` of the
# trainer's dict after ``strip_optimizer``) references, and nothing else. Anything not here is refused. (The
# storage dtype tags of tensor records, `torch.HalfStorage` etc., never reach it: torch.load turns them into
# inert dtype markers itself, and they are only legal inside the persistent ids of tensor data.)
ALLOW_LIST: tuple[Allowed, ...] = (
    # Python and torch plumbing of every pickled nn.Module and tensor.
    Allowed(
        "collections", "OrderedDict", CALL, "nn.Module parameter/buffer/hook dicts; tensor backward hooks"
    ),
    Allowed("builtins", "set", CALL, "nn.Module._non_persistent_buffers_set"),
    Allowed(
        "builtins",
        "getattr",
        CALL,
        "8.0.x Segment keeps `self.detect = Detect.forward`; pickle protocol 2 writes a method as "
        "getattr(Detect, 'forward'). Served by _checkpoint_getattr for that one attribute only",
    ),
    Allowed("torch", "Size", CALL, "Detect.shape, the input shape its anchors were made for"),
    Allowed("torch._utils", "_rebuild_tensor_v2", CALL, "every tensor (weights, buffers, stride, anchors)"),
    Allowed("torch._utils", "_rebuild_parameter", CALL, "every nn.Parameter"),
    # torch layers of YOLOv8 detection/segmentation networks.
    Allowed("torch.nn.modules.conv", "Conv2d", MODULE, "inside Conv, DFL and the head's last 1x1 convs"),
    Allowed("torch.nn.modules.conv", "ConvTranspose2d", MODULE, "Proto upsampling (heads with prototypes)"),
    Allowed("torch.nn.modules.batchnorm", "BatchNorm2d", MODULE, "inside Conv"),
    Allowed("torch.nn.modules.activation", "SiLU", MODULE, "Conv.default_act"),
    Allowed("torch.nn.modules.upsampling", "Upsample", MODULE, "the neck's 2x upsampling"),
    Allowed("torch.nn.modules.pooling", "MaxPool2d", MODULE, "SPPF"),
    Allowed("torch.nn.modules.container", "ModuleList", MODULE, "C2f.m, Detect.cv2/cv3, Segment.cv4"),
    Allowed("torch.nn.modules.container", "Sequential", MODULE, "the layer stack and the head branches"),
    # ultralytics YOLOv8 blocks, heads and models.
    Allowed("ultralytics.nn.modules.conv", "Conv", MODULE, "conv + batch norm + SiLU block"),
    Allowed("ultralytics.nn.modules.conv", "Concat", MODULE, "neck feature concatenation"),
    Allowed("ultralytics.nn.modules.block", "Bottleneck", MODULE, "inside C2f"),
    Allowed("ultralytics.nn.modules.block", "C2f", MODULE, "YOLOv8 backbone/neck stage"),
    Allowed("ultralytics.nn.modules.block", "SPPF", MODULE, "spatial pyramid pooling"),
    Allowed("ultralytics.nn.modules.block", "DFL", MODULE, "distribution focal loss box decoding in Detect"),
    Allowed(
        "ultralytics.nn.modules.block", "Proto", MODULE, "mask prototypes (Segment heads that have them)"
    ),
    Allowed("ultralytics.nn.modules.head", "Detect", MODULE, "detection head"),
    Allowed("ultralytics.nn.modules.head", "Segment", MODULE, "segmentation head (MobileSAMv2's)"),
    Allowed("ultralytics.nn.tasks", "DetectionModel", MODULE, "the network of a detection checkpoint"),
    Allowed("ultralytics.nn.tasks", "SegmentationModel", MODULE, "the network of a segmentation checkpoint"),
    Allowed(
        "ultralytics.utils",
        "IterableSimpleNamespace",
        RECORD,
        "model.args, the training hyper-parameters (8.0.x: ultralytics.yolo.utils)",
    ),
)

# Module paths of 8.0.x pickles that moved since: the mapping ultralytics' own loader applies (through
# temporary_modules); a prefix match maps submodules too. (Python 2 names, e.g. `__builtin__`, which pickle
# protocol 2 writes for builtins, are mapped first, as the standard unpickler does.)
LEGACY_MODULES = {
    "ultralytics.yolo.utils": "ultralytics.utils",
    "ultralytics.yolo.v8": "ultralytics.models.yolo",
    "ultralytics.yolo.data": "ultralytics.data",
}

# The only attribute _checkpoint_getattr serves: (owner's allow-list entry, attribute name).
_GETATTR_ALLOWED = (("ultralytics.nn.modules.head", "Detect", "forward"),)


class RefusedPickle(pickle.UnpicklingError):
    """The checkpoint asks for something outside the allow-list; nothing it names was imported or run."""


def _current_module(module: str) -> str:
    for old, new in LEGACY_MODULES.items():
        if module == old or module.startswith(old + "."):
            return new + module[len(old) :]
    return module


@functools.lru_cache(maxsize=1)
def _resolved_allow_list() -> dict[tuple[str, str], tuple[Any, str]]:
    """(module, name) -> (object, use); imports only the modules ALLOW_LIST names (our own dependencies)."""
    import importlib

    _ultralytics_offline()
    resolved: dict[tuple[str, str], tuple[Any, str]] = {}
    for entry in ALLOW_LIST:
        obj = getattr(importlib.import_module(entry.module), entry.name)
        if entry.name == "getattr":
            obj = _checkpoint_getattr
        resolved[entry.module, entry.name] = (obj, entry.use)
    return resolved


@functools.lru_cache(maxsize=1)
def _use_by_id() -> dict[int, str]:
    # The objects are kept alive by _resolved_allow_list's cache, so their ids stay theirs.
    return {id(obj): use for obj, use in _resolved_allow_list().values()}


def _checkpoint_getattr(obj: Any, name: str) -> Any:
    allowed = _resolved_allow_list()
    for module, owner, attribute in _GETATTR_ALLOWED:
        if obj is allowed[module, owner][0] and name == attribute:
            return getattr(obj, name)
    owner_name = getattr(obj, "__qualname__", type(obj).__name__)
    raise RefusedPickle(
        f"refusing getattr({owner_name}, {name!r}): not an attribute an ultralytics 8.0.x checkpoint needs"
    )


def _refuse_opcode(opcode: bytes, what: str):
    def load(self: _AllowListUnpickler) -> None:
        raise RefusedPickle(
            f"refusing pickle opcode {opcode!r} ({what}): a torch.save checkpoint never uses it"
        )

    return load


class _AllowListUnpickler(pickle._Unpickler):
    """A pure-Python unpickler whose globals, calls and object construction are limited to ALLOW_LIST.

    The pure-Python implementation is used because its opcode table can be restricted (the C unpickler only
    lets ``find_class`` be replaced, not what REDUCE may call).
    """

    dispatch: ClassVar[dict] = dict(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str) -> Any:
        if self.proto < 3 and self.fix_imports:  # Python 2 names, mapped as pickle.Unpickler.find_class does
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[module, name]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        found = _resolved_allow_list().get((_current_module(module), name))
        if found is None:
            raise RefusedPickle(
                f"refusing to unpickle {module}.{name}: not a class an ultralytics 8.0.x checkpoint needs"
            )
        return found[0]

    def _use_of(self, obj: Any) -> str | None:
        """CALL/MODULE/RECORD if ``obj`` *is* an allow-listed object (identity, not equality), else None."""
        return _use_by_id().get(id(obj))

    def load_reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        use = self._use_of(func)
        name = getattr(func, "__qualname__", type(func).__name__)
        if type(args) is not tuple:
            raise RefusedPickle(f"refusing to call {name} with a {type(args).__qualname__} of arguments")
        if use == CALL or (use == RECORD and not args):
            self.stack[-1] = func(*args)
            return
        raise RefusedPickle(
            f"refusing to call {name}{'' if use is None else ' with arguments'} while unpickling: an "
            "ultralytics 8.0.x checkpoint only rebuilds its classes from their saved attributes"
        )

    dispatch[pickle.REDUCE[0]] = load_reduce

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        name = getattr(cls, "__qualname__", type(cls).__name__)
        if self._use_of(cls) != MODULE:
            raise RefusedPickle(
                f"refusing to create {name} while unpickling: not an allow-listed nn.Module class"
            )
        if type(args) is not tuple or args:
            raise RefusedPickle(f"refusing to create {name} with arguments while unpickling")
        self.append(cls.__new__(cls))

    dispatch[pickle.NEWOBJ[0]] = load_newobj

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        use = self._use_of(type(inst))
        if use == MODULE and isinstance(state, dict):
            # nn.Module.__setstate__ (restores __dict__ and the defaults it lacks), looked up on the class so
            # that a `__setstate__` an earlier BUILD stored on the instance is never called.
            type(inst).__setstate__(inst, state)
        elif use == RECORD and isinstance(state, dict) and all(type(k) is str for k in state):
            inst.__dict__.update(state)
        else:
            raise RefusedPickle(
                f"refusing to set the state of a {type(inst).__qualname__} while unpickling: not an "
                "allow-listed class"
            )

    dispatch[pickle.BUILD[0]] = load_build

    def load_append(self) -> None:
        value = self.stack.pop()
        self._check_target(list, "append to")
        self.stack[-1].append(value)

    dispatch[pickle.APPEND[0]] = load_append

    def load_appends(self) -> None:
        items = self.pop_mark()
        self._check_target(list, "append to")
        self.stack[-1].extend(items)

    dispatch[pickle.APPENDS[0]] = load_appends

    def load_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        self._check_target((dict, OrderedDict), "set items of")
        self.stack[-1][key] = value

    dispatch[pickle.SETITEM[0]] = load_setitem

    def load_setitems(self) -> None:
        items = self.pop_mark()
        self._check_target((dict, OrderedDict), "set items of")
        for i in range(0, len(items), 2):
            self.stack[-1][items[i]] = items[i + 1]

    dispatch[pickle.SETITEMS[0]] = load_setitems

    def load_additems(self) -> None:
        items = self.pop_mark()
        self._check_target(set, "add items to")
        self.stack[-1].update(items)

    dispatch[pickle.ADDITEMS[0]] = load_additems

    def _check_target(self, types_: type | tuple[type, ...], action: str) -> None:
        target = self.stack[-1]
        if type(target) not in (types_ if isinstance(types_, tuple) else (types_,)):
            raise RefusedPickle(f"refusing to {action} a {type(target).__qualname__} while unpickling")

    for _opcode, _what in (
        (pickle.INST, "protocol-0 instantiation, calls a constructor"),
        (pickle.OBJ, "protocol-1 instantiation, calls a constructor"),
        (pickle.NEWOBJ_EX, "keyword-argument instantiation"),
        (pickle.EXT1, "copyreg extension registry"),
        (pickle.EXT2, "copyreg extension registry"),
        (pickle.EXT4, "copyreg extension registry"),
        (pickle.PERSID, "text persistent id"),
    ):
        dispatch[_opcode[0]] = _refuse_opcode(_opcode, _what)
    del _opcode, _what


def _refuse_legacy_load(*_args: Any, **_kwargs: Any) -> Any:
    raise RefusedPickle("refusing a legacy (pre-zip) torch file: ultralytics 8.0.x saves zip archives")


# What torch.load(pickle_module=...) uses: its Unpickler (torch subclasses it to add tensor storage loading)
# and `load`, which only its legacy-format path calls.
_ALLOW_LIST_PICKLE = types.SimpleNamespace(
    __name__="mobilesamv2_allow_list_pickle", Unpickler=_AllowListUnpickler, load=_refuse_legacy_load
)


def read_object_aware_checkpoint(path: str | Path) -> Any:
    """Unpickle ``ObjectAwareModel.pt`` through the allow-list (see the module docstring).

    The file is read once into memory, so the format checks and the unpickling see the same bytes.

    Raises:
        CheckpointError: missing, unreadable or not a ``torch.save`` zip archive, or it references a global
            or pickle operation outside the allow-list (the message names the file and what was refused).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    data = path.read_bytes()
    try:
        # Raises ValueError for TorchScript archives (torch.load would pass them to torch.jit.load) and for
        # legacy/non-zip files, through the zip reader torch.load itself uses; scans the pickle's globals
        # without resolving any, and rejects opcodes outside the protocol-2 subset torch.save writes.
        torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data))
    except ValueError as exc:
        raise CheckpointError(f"{path}: not a torch.save checkpoint archive: {exc}") from exc
    except pickle.UnpicklingError as exc:  # an opcode outside the protocol-2 subset torch.save writes
        raise CheckpointError(f"{path}: refusing the checkpoint's pickle: {exc}") from exc
    except Exception as exc:  # truncated zip, not a torch file...
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {exc}"
        ) from exc
    if os.getenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "0").lower() in ("1", "y", "yes", "true"):
        raise CheckpointError(
            f"{path}: TORCH_FORCE_WEIGHTS_ONLY_LOAD is set, and torch.load then refuses the allow-list "
            "unpickler this loader needs (an ultralytics checkpoint holds pickled modules, which torch's "
            "weights_only unpickler cannot rebuild safely); unset it for the build"
        )
    try:
        # weights_only=False is what lets torch use the given pickle module; that module is the restriction.
        ckpt = torch.load(
            io.BytesIO(data),
            map_location="cpu",
            pickle_module=_ALLOW_LIST_PICKLE,
            weights_only=False,
            mmap=False,
        )
    except RefusedPickle as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot unpickle the object-aware model checkpoint: {exc}") from exc
    try:
        _check_data_only(ckpt)
    except RefusedPickle as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    return ckpt


def _check_data_only(root: Any) -> None:
    """Refuse a loaded checkpoint holding anything but data: plain values, tensors, containers and
    instances of the allow-listed classes. A class or function stored *as a value* (in a module's
    ``_forward_hooks``, as its ``forward``...) would later be called by torch or ultralytics, so the one an
    8.0.x checkpoint has, ``Segment.detect = Detect.forward``, is the only one accepted."""
    allowed = _resolved_allow_list()
    detect = allowed["ultralytics.nn.modules.head", "Detect"][0]
    instance_types = {obj for obj, use in allowed.values() if use in (MODULE, RECORD)}
    plain = (type(None), bool, int, float, complex, str, bytes, torch.Tensor, torch.Size)
    stack: list[tuple[Any, str]] = [(root, "checkpoint")]
    seen: set[int] = set()
    while stack:
        obj, where = stack.pop()
        if isinstance(obj, torch.Tensor) and obj._backward_hooks:
            raise RefusedPickle(f"refusing {where}: a tensor with backward hooks")
        if isinstance(obj, plain) or id(obj) in seen:
            continue
        seen.add(id(obj))
        if type(obj) in (dict, OrderedDict):
            stack.extend((v, f"{where}[{k!r}]") for k, v in obj.items())
            stack.extend((k, f"{where} key") for k in obj)
        elif type(obj) in (list, tuple, set, frozenset):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(obj))
        elif type(obj) in instance_types:
            for k, v in vars(obj).items():
                if not (k == "detect" and v is detect.forward and isinstance(obj, detect)):
                    stack.append((v, f"{where}.{k}"))
        else:
            what = getattr(obj, "__qualname__", None) or type(obj).__qualname__
            raise RefusedPickle(
                f"refusing {where} = {what}: an ultralytics 8.0.x checkpoint stores no code references there"
            )
