"""ObjectAwareModel.pt is unpickled through an allow-list: the official 8.0.x format loads exactly as the
unrestricted ``torch.load(weights_only=False)`` did, and a file asking for anything else is refused before any
of it runs."""

from __future__ import annotations

import collections
import os
import pickletools
import re
import shutil
import subprocess
import sys
import types
import zipfile

import pytest
import torch

from mobilesamv2.fake_checkpoints import FILENAMES
from mobilesamv2.modeling.detector import (
    ALLOW_LIST,
    CheckpointError,
    load_object_aware_model,
    network_from_checkpoint,
    read_object_aware_checkpoint,
)


class _Reduce:
    """Pickles as ``func(*args)``: what a malicious checkpoint uses to run code at load time."""

    def __init__(self, func, args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _globals_in(path) -> set[str]:
    with zipfile.ZipFile(path) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("/data.pkl")))
    return {arg.replace(" ", ".") for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}


@pytest.fixture
def detector_file(fake_weights):
    return fake_weights / FILENAMES["detector"]


@pytest.fixture
def trusted_checkpoint(detector_file):
    """The previous, unrestricted loading, on the project's own (trusted) fake file."""
    return torch.load(detector_file, map_location="cpu", weights_only=False)


def test_allow_list_is_documented_and_covers_the_8_0_checkpoint(detector_file):
    keys = [(e.module, e.name) for e in ALLOW_LIST]
    assert len(keys) == len(set(keys)) == 26
    assert all(e.why and e.use in {"call", "module", "record"} for e in ALLOW_LIST)
    listed = {f"{m}.{n}" for m, n in keys} | {"__builtin__.getattr", "__builtin__.set"}
    # torch.load resolves the storage dtype tags of tensor records itself (inert, never called or built).
    storage_tags = {"torch.HalfStorage", "torch.FloatStorage", "torch.LongStorage"}
    assert _globals_in(detector_file) - storage_tags <= listed


def test_safe_load_is_identical_to_the_unsafe_load(detector_file, trusted_checkpoint):
    from ultralytics.nn.modules.head import Detect

    safe = read_object_aware_checkpoint(detector_file)
    ref = trusted_checkpoint
    assert safe.keys() == ref.keys()
    assert {k: v for k, v in safe.items() if k != "model"} == {k: v for k, v in ref.items() if k != "model"}
    model, ref_model = safe["model"], ref["model"]
    assert [(n, type(m)) for n, m in model.named_modules()] == [
        (n, type(m)) for n, m in ref_model.named_modules()
    ]
    state, ref_state = model.state_dict(), ref_model.state_dict()
    assert state.keys() == ref_state.keys()
    for key, value in state.items():
        assert value.dtype == ref_state[key].dtype and torch.equal(value, ref_state[key]), key
    assert next(model.parameters()).dtype == torch.float16
    assert (model.yaml, model.names, model.save) == (ref_model.yaml, ref_model.names, ref_model.save)
    assert torch.equal(model.stride, ref_model.stride)
    head = model.model[-1]
    assert head.detect is Detect.forward and not hasattr(head, "proto")

    # The network the export uses: bit-identical outputs to the one built from the unrestricted load.
    reference_net = network_from_checkpoint(ref, detector_file)
    for net in (network_from_checkpoint(safe, detector_file), load_object_aware_model(detector_file)):
        for x in (
            torch.rand(2, 3, 256, 320, generator=torch.Generator().manual_seed(0)),
            torch.zeros(1, 3, 64, 96),
        ):
            out = net(x)
            assert torch.equal(out, reference_net(x))
    assert out.shape[1] == 5


def test_safe_load_leaves_torch_global_state_alone(detector_file):
    before = set(torch.serialization.get_safe_globals())
    read_object_aware_checkpoint(detector_file)
    assert set(torch.serialization.get_safe_globals()) == before


def test_8_0_module_paths_are_mapped(trusted_checkpoint, tmp_path, monkeypatch):
    """8.0.x pickles name ``ultralytics.yolo.utils.IterableSimpleNamespace`` (model.args)."""
    from ultralytics.utils import IterableSimpleNamespace

    ckpt = trusted_checkpoint
    ckpt["model"].args = IterableSimpleNamespace(task="segment", imgsz=1024, conf=0.4, data="sa1b.yaml")
    with monkeypatch.context() as m:  # make pickle write the 8.0.x path
        legacy = types.ModuleType("ultralytics.yolo.utils")
        legacy.IterableSimpleNamespace = IterableSimpleNamespace
        m.setitem(sys.modules, "ultralytics.yolo", types.ModuleType("ultralytics.yolo"))
        m.setitem(sys.modules, "ultralytics.yolo.utils", legacy)
        m.setattr(IterableSimpleNamespace, "__module__", "ultralytics.yolo.utils")
        torch.save(ckpt, tmp_path / "ObjectAwareModel.pt")
    assert "ultralytics.yolo.utils.IterableSimpleNamespace" in _globals_in(tmp_path / "ObjectAwareModel.pt")

    loaded = read_object_aware_checkpoint(tmp_path / "ObjectAwareModel.pt")
    args = loaded["model"].args
    assert type(args) is IterableSimpleNamespace
    assert vars(args) == {"task": "segment", "imgsz": 1024, "conf": 0.4, "data": "sa1b.yaml"}
    assert load_object_aware_model(tmp_path / "ObjectAwareModel.pt").num_classes == 1


def test_code_execution_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "ObjectAwareModel.pt"
    torch.save({"model": _Reduce(os.system, (f"touch {marker}",)), "version": "8.0.120"}, path)
    with pytest.raises(
        CheckpointError,
        match=r"ObjectAwareModel\.pt: refusing to unpickle (os|posix)\.system: "
        r"not a class an ultralytics 8\.0\.x checkpoint needs",
    ):
        load_object_aware_model(path)
    assert not marker.exists()

    # The payload is real: the previous unrestricted loading runs it.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_payload_hidden_in_a_real_checkpoint_is_refused(trusted_checkpoint, tmp_path):
    marker = tmp_path / "pwned"
    trusted_checkpoint["model"].model[0].extra = _Reduce(os.system, (f"touch {marker}",))
    torch.save(trusted_checkpoint, tmp_path / "ObjectAwareModel.pt")
    with pytest.raises(CheckpointError, match=r"refusing to unpickle (os|posix)\.system"):
        load_object_aware_model(tmp_path / "ObjectAwareModel.pt")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("payload", "refused"),
    [
        (collections.Counter(a=1), r"collections\.Counter"),  # harmless, but not in an 8.0.x checkpoint
        (subprocess.Popen, r"subprocess\.Popen"),  # a bare reference
        (torch.device("cpu"), r"torch\.device"),  # allowed by torch's weights_only defaults, not by us
        (_Reduce(exec, ("import os",)), r"builtins\.exec"),
        (_Reduce(shutil.rmtree, ("/nonexistent",)), r"shutil\.rmtree"),
    ],
)
def test_globals_outside_the_list_are_refused(tmp_path, payload, refused):
    path = tmp_path / "ObjectAwareModel.pt"
    torch.save({"model": payload}, path)
    with pytest.raises(
        CheckpointError, match=rf"ObjectAwareModel\.pt: refusing to unpickle {refused}: not a"
    ):
        read_object_aware_checkpoint(path)


def test_listed_classes_are_never_constructed_from_file_data(tmp_path):
    """Calling SegmentationModel(cfg) would parse (and current ultralytics eval) a config from the file."""
    from ultralytics.nn.tasks import SegmentationModel

    marker = tmp_path / "pwned"
    cfg = {"activation": f"__import__('pathlib').Path({str(marker)!r}).touch()", "backbone": [], "head": []}
    torch.save({"model": _Reduce(SegmentationModel, (cfg,))}, tmp_path / "ObjectAwareModel.pt")
    with pytest.raises(CheckpointError, match=r"refusing to call SegmentationModel with arguments"):
        read_object_aware_checkpoint(tmp_path / "ObjectAwareModel.pt")
    assert not marker.exists()


def test_getattr_serves_only_detect_forward(tmp_path):
    from ultralytics.nn.modules.head import Detect

    torch.save({"model": _Reduce(getattr, (Detect, "__init__"))}, tmp_path / "ObjectAwareModel.pt")
    with pytest.raises(CheckpointError, match=r"refusing getattr\(Detect, '__init__'\)"):
        read_object_aware_checkpoint(tmp_path / "ObjectAwareModel.pt")


@pytest.mark.parametrize("where", ["hook", "forward"])
def test_code_references_stored_as_data_are_refused(trusted_checkpoint, tmp_path, where):
    """Listed classes/functions may only be the types of objects: torch calls a module's hooks and forward."""
    from ultralytics.nn.modules.head import Detect
    from ultralytics.nn.tasks import SegmentationModel

    layer = trusted_checkpoint["model"].model[0]
    if where == "hook":
        layer._forward_hooks[0] = SegmentationModel
        refused = r"checkpoint\['model'\]\._modules\['model'\]\._modules\['0'\]\._forward_hooks\[0\]"
    else:
        layer.forward = Detect.forward  # getattr serves it (for Segment.detect), but not stored here
        refused = r"checkpoint\['model'\]\._modules\['model'\]\._modules\['0'\]\.forward = Detect\.forward"
    torch.save(trusted_checkpoint, tmp_path / "ObjectAwareModel.pt")
    with pytest.raises(CheckpointError, match=rf"ObjectAwareModel\.pt: refusing {refused}"):
        read_object_aware_checkpoint(tmp_path / "ObjectAwareModel.pt")


@pytest.mark.parametrize(
    ("pickled", "refused"),
    [
        (b"\x80\x02(S'x'\nibuiltins\nset\n.", "opcode b'i'"),  # INST: calls the class
        (b"\x80\x02(cbuiltins\nset\n]o.", "opcode b'o'"),  # OBJ: calls the class
        (b"\x80\x02\x82\x01.", "opcode b'\\x82'"),  # EXT1: a global by copyreg code
        (b"\x80\x04\x8c\x02os\x94\x8c\x06system\x94\x93.", "unpickle os.system"),  # STACK_GLOBAL
        (b"\x80\x02cbuiltins\nset\n)\x81.", "create set"),  # NEWOBJ of a non-module class
        (b"\x80\x02ctorch.nn.modules.conv\nConv2d\nK\x01\x85\x81.", "create Conv2d with arguments"),
        (b"\x80\x02ctorch.nn.modules.conv\nConv2d\nK\x01K\x01K\x01\x87R.", "call Conv2d with arguments"),
        (b"\x80\x02}}b.", "set the state of a dict"),  # BUILD on a non-listed type
        (b"\x80\x02cbuiltins\nset\n)RK\x01K\x02s.", "set items of a set"),
    ],
)
def test_pickle_operations_outside_an_8_0_checkpoint_are_refused(pickled, refused):
    import io

    from mobilesamv2.modeling.detector import RefusedPickle, _AllowListUnpickler

    with pytest.raises(RefusedPickle, match=f"refusing (pickle |to )?{re.escape(refused)}"):
        _AllowListUnpickler(io.BytesIO(pickled)).load()
    assert _AllowListUnpickler(io.BytesIO(b"\x80\x02cbuiltins\nset\n]K\x01a\x85R.")).load() == {1}


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_torchscript_and_legacy_files_are_refused(tmp_path):
    path = tmp_path / "ObjectAwareModel.pt"
    torch.jit.save(torch.jit.script(torch.nn.ReLU()), path)  # torch.load would hand it to torch.jit.load
    with pytest.raises(CheckpointError, match=r"ObjectAwareModel\.pt: not a torch.save checkpoint archive"):
        read_object_aware_checkpoint(path)
    torch.save({"model": None}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match=r"ObjectAwareModel\.pt: not a torch.save checkpoint archive"):
        read_object_aware_checkpoint(path)
