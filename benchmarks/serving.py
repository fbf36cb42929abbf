"""What the benchmarks that start a server share: the server and its client, the in-process reference
pipeline, the RSS of the server's process tree, copies of the model repository with other config parameters,
the served ONNX Runtime options, and the images sent.

Apart from :mod:`benchmarks.common` (no psutil there: the GPU check imports it on machines without).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import psutil

from benchmarks.common import REPO_ROOT

WORK = REPO_ROOT / "work" / "benchmarks"
"""Server logs and repository copies (gitignored); summaries go to ``benchmarks/results/``."""
ALLOCATOR_KEYS = ("LD_PRELOAD", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_",
                  "MALLOC_MMAP_MAX_", "MALLOC_ARENA_MAX", "MALLOC_CONF")  # fmt: skip

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "False")
os.environ.setdefault("YOLO_CONFIG_DIR", str(REPO_ROOT / "work" / "ultralytics"))


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- the server ---------------------------------------------------------------------------------------------


@contextmanager
def serve(repository: Path, name: str, timeout: float = 1800.0, **server_options) -> Iterator[tuple]:
    """``(server, client)``: a tritonserver with the launcher's defaults on ``repository`` (its log in
    ``work/benchmarks/<name>/``) and a gRPC client without retries."""
    from mobilesamv2.runner.local import TritonServer
    from segment_everything_client import SegmentEverythingClient

    log(f"starting tritonserver on {repository}")
    log_path = WORK / name / "tritonserver.log"
    with (
        TritonServer(repository, log_path=log_path, startup_timeout=300, **server_options) as server,
        SegmentEverythingClient(server.grpc_url, timeout=timeout, retries=0) as client,
    ):
        yield server, client


def allocator_env(pid: int) -> dict[str, str]:
    """The allocator variables (``MALLOC_*``, ``LD_PRELOAD``) process ``pid`` runs with (none by default)."""
    pairs = (e.decode().partition("=") for e in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"))
    return {k: v for k, _, v in pairs if k in ALLOCATOR_KEYS}


# --- the in-process reference -------------------------------------------------------------------------------


def build_info(repository: Path) -> dict:
    """What the repository was built from (``BUILD_INFO.json``: weights folder and kind, encoder)."""
    path = Path(repository) / "BUILD_INFO.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def load_reference(repository: Path):
    """``ReferencePipeline`` from the checkpoints ``repository`` was built from.

    This process gets the heap tuning the server's ONNX Runtime stubs give themselves (it helps PyTorch
    more than ONNX Runtime: BENCHMARKS.md "Allocator"), so that no ratio flatters the server.
    ``OMP_NUM_THREADS`` is left as it was: ultralytics sets it to 1 when imported, and a server started
    afterwards would inherit it (one thread per ONNX Runtime session)."""
    from mobilesamv2.inside_triton.glue import keep_large_blocks_in_heap
    from mobilesamv2.reference import ReferencePipeline

    keep_large_blocks_in_heap()
    info = build_info(repository)
    weights = Path(info.get("weights_dir", REPO_ROOT / "weights"))
    before = os.environ.get("OMP_NUM_THREADS")
    log(f"loading the reference pipeline from {weights}")
    pipe = ReferencePipeline.from_checkpoints(weights, encoder=info.get("encoder", "efficientvit_l2"))
    if before is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = before
    return pipe


# --- memory of a process tree -------------------------------------------------------------------------------


def label(proc: psutil.Process) -> str:
    """``tritonserver``, or the model a backend stub serves (its instance name, e.g. ``prompt_decoder_0_0``,
    is on its command line)."""
    try:
        cmdline = proc.cmdline()
    except psutil.Error:
        return "?"
    if cmdline and cmdline[0].endswith("triton_python_backend_stub"):
        instance = next((a for a in cmdline[1:] if re.fullmatch(r"[A-Za-z0-9_.-]+_\d+_\d+", a)), "")
        return re.sub(r"_\d+_\d+$", "", instance) or "stub"
    return proc.name()


def tree_rss_mb(pid: int) -> float:
    """Summed RSS (MB) of ``pid`` and its descendants."""
    return PeakRss(pid).current() / 2**20


class PeakRss:
    """Samples the summed RSS of a process tree every ``interval`` s while active: ``peak_mb`` (of the sum)
    and ``by_label_mb``, the peak of each label's sum (a model's instances together)."""

    def __init__(self, root_pid: int, interval: float = 0.01) -> None:
        root = psutil.Process(root_pid)
        self.processes = [root, *root.children(recursive=True)]
        self.labels = {p.pid: label(p) for p in self.processes}
        self.interval = interval
        self.peak = 0
        self.by_label: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20

    @property
    def by_label_mb(self) -> dict[str, float]:
        return {k: v / 2**20 for k, v in sorted(self.by_label.items(), key=lambda kv: -kv[1])}

    def current(self) -> int:
        sums: dict[str, int] = {}
        for proc in self.processes:
            try:
                rss = proc.memory_info().rss
            except psutil.Error:
                continue
            name = self.labels[proc.pid]
            sums[name] = sums.get(name, 0) + rss
        for name, rss in sums.items():
            self.by_label[name] = max(self.by_label.get(name, 0), rss)
        return sum(sums.values())

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRss:
        self.peak, self.by_label = self.current(), {}
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.current())


# --- the repository -----------------------------------------------------------------------------------------


def repository_variant(source: Path, target: Path, parameters: dict[str, dict[str, str]]) -> Path:
    """A hard-linked copy of the model repository ``source`` at ``target`` with config parameters replaced,
    e.g. ``{"segment_everything": {"embedding_cache_mb": "0"}}``; each changed config is written anew (never
    through the link into ``source``). Rebuilt every call."""
    source, target = Path(source).resolve(), Path(target).resolve()
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, copy_function=os.link, ignore=shutil.ignore_patterns("__pycache__"))
    for model, values in parameters.items():
        config = target / model / "config.pbtxt"
        text = config.read_text()
        for key, value in values.items():
            pattern = re.compile(
                r'(\{\s*key:\s*"' + re.escape(key) + r'",\s*value:\s*\{\s*string_value:\s*")[^"]*(")'
            )
            if not pattern.search(text):
                raise KeyError(f"{config}: no parameter {key!r} to set")
            text = pattern.sub(lambda m, v=value: m.group(1) + v + m.group(2), text)
        config.unlink()
        config.write_text(text)
    return target


def served_parameters(repository: Path, model: str) -> dict[str, str]:
    """A model's config parameters (``key -> string_value``), read from its config.pbtxt."""
    text = (Path(repository) / model / "config.pbtxt").read_text()
    return dict(re.findall(r'key:\s*"([^"]+)",\s*value:\s*\{\s*string_value:\s*"([^"]*)"', text))


def served_session(repository: Path, model: str, file: str = "model.onnx"):
    """``(session, intra-op threads)``: ``<model>/1/<file>`` in a CPU ONNX Runtime session with the options
    the model's config gives it when served (``glue.ort_settings``), this process's heap tuned as the served
    stub's is."""
    import onnxruntime as ort

    from mobilesamv2.inside_triton import glue

    parameters = glue.Parameters(served_parameters(repository, model))
    if parameters.flag("malloc_keep_large_blocks", False):
        glue.keep_large_blocks_in_heap()
    settings = glue.ort_settings(parameters)
    session = ort.InferenceSession(
        str(Path(repository) / model / "1" / file),
        sess_options=glue.ort_session_options(settings),
        providers=["CPUExecutionProvider"],
        disabled_optimizers=settings["disabled_optimizers"] or None,
    )
    return session, settings["intra_op_thread_count"]


# --- images -------------------------------------------------------------------------------------------------


def sample_image(name: str) -> Path:
    """``bus.jpg`` or ``zidane.jpg`` (from the ultralytics wheel)."""
    from mobilesamv2.assets import sample_images

    return next(p for p in sample_images() if p.name == name)


def jpeg(bgr: np.ndarray, quality: int = 90) -> bytes:
    ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return data.tobytes()


def unique_jpeg(bgr: np.ndarray, n: int) -> bytes:
    """``bgr`` with its 4x4 corner block set from ``n``, as JPEG: another image for the embedding cache."""
    image = bgr.copy()
    image[:4, :4] = np.array([n & 255, (n >> 8) & 255, (n >> 16) & 255], np.uint8)
    return jpeg(image, 92)


def rescaled(bgr: np.ndarray, longest_side: int) -> np.ndarray:
    h, w = bgr.shape[:2]
    scale = longest_side / max(h, w)
    size = (round(w * scale), round(h * scale))
    return cv2.resize(bgr, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
