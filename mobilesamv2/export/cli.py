"""Checkpoints -> a ready Triton model repository.

    mobilesamv2-build --weights weights/official --out model_repository [--encoder efficientvit_l2]
    mobilesamv2-build --fake-weights ...     # seeded random weights in the official formats (demo / CI)
    mobilesamv2-build ... --target gpu --out model_repository_gpu

Writes ``image_encoder/1/model.onnx``, ``prompt_decoder/1/model.onnx`` and
``object_discovery/1/detector.onnx`` next to the committed configs, checks every graph against PyTorch (fails
above tolerance), and records what was built in ``BUILD_INFO.json`` (weights kind, encoder, checksums, parity
figures, timings). A repository that is already built from the same files is left as it is.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import cv2

from .. import __version__
from ..assets import sample_images
from ..processing.image import encoder_canvas

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = REPO_ROOT / "model_repository"
BUILD_INFO = "BUILD_INFO.json"

ONNX_FILES = {
    "image_encoder": "image_encoder/1/model.onnx",  # opset 20, resizes as MatMuls (ONNX Runtime)
    "image_encoder_plain": "image_encoder/1/plain.onnx",  # the same at opset 18, GELU expanded (TensorRT)
    "prompt_decoder": "prompt_decoder/1/model.onnx",  # factorized formulation (ONNX Runtime)
    "prompt_decoder_plain": "prompt_decoder/1/plain.onnx",  # SAM's formulation, same I/O (TensorRT source)
    "interactive_decoder": "interactive_decoder/1/model.onnx",  # SegAny: all mask tokens, previous mask
    "detector": "object_discovery/1/detector.onnx",
}


def log(message: str) -> None:
    print(f"[build] {message}", file=sys.stderr, flush=True)


def _fingerprint(files: list[Path], encoder: str) -> str:
    """Identity of a build: the checkpoint files (size, mtime) and the code that turns them into graphs."""
    digest = hashlib.sha256(f"{__version__}:{encoder}".encode())
    for path in files:
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    package = Path(__file__).resolve().parents[1]
    for source in sorted([*package.glob("modeling/*.py"), package / "export/onnx_export.py"]):
        digest.update(source.read_bytes())
    return digest.hexdigest()


def read_build_info(repo: Path) -> dict | None:
    path = repo / BUILD_INFO
    return json.loads(path.read_text()) if path.is_file() else None


def resolve_weights(
    weights: Path, encoder: str, fake: bool, download: bool, fake_dir: Path
) -> tuple[Path, str]:
    """Where the checkpoints come from: ``weights`` if complete, else downloaded, else (``fake``)
    generated."""
    from ..fake_checkpoints import FILENAMES, write_all
    from ..weights import DownloadError, ensure_weights, required_files

    names = required_files(encoder)
    if not fake:
        if all((weights / n).is_file() for n in names):
            return weights, "official"
        if download:
            try:
                ensure_weights(weights, names)
                return weights, "official"
            except DownloadError as exc:
                raise SystemExit(
                    f"error: {exc}\nPut the official files into {weights}/ or build with --fake-weights"
                ) from exc
        missing = [n for n in names if not (weights / n).is_file()]
        raise SystemExit(
            f"error: missing {', '.join(missing)} in {weights}/ (use --download or --fake-weights)"
        )
    wanted = [FILENAMES["detector"], FILENAMES["decoder"], FILENAMES[encoder]]
    if not all((fake_dir / n).is_file() for n in wanted):
        log(f"writing seeded random-weight checkpoints (official formats) to {fake_dir}")
        write_all(fake_dir, encoders=(encoder,))
    return fake_dir, "fake"


def copy_template(out: Path, template: Path = TEMPLATE) -> None:
    """Copy the committed configs and Python models into ``out`` (no-op when ``out`` is the template)."""
    if out.resolve() == template.resolve():
        return
    for src in template.rglob("*"):
        if src.is_file() and src.suffix in {".pbtxt", ".py"} and "__pycache__" not in src.parts:
            dst = out / src.relative_to(template)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)


def build_repository(
    weights_dir: Path,
    weights_kind: str,
    encoder: str,
    out: Path,
    force: bool = False,
    decoder_counts=(1, 7, 64),
) -> dict:
    """Export the three graphs from ``weights_dir`` into ``out`` and return the build info."""
    import torch

    from ..modeling.checkpoints import encoder_spec, load_image_encoder, load_prompt_decoder
    from ..modeling.detector import load_object_aware_model
    from ..modeling.image_encoder import ImageEncoderGraph
    from ..processing.image import detector_input
    from . import onnx_export

    spec = encoder_spec(encoder)
    files = [
        weights_dir / "ObjectAwareModel.pt",
        weights_dir / "Prompt_guided_Mask_Decoder.pt",
        weights_dir / spec.filename,
    ]
    fingerprint = _fingerprint(files, encoder)
    info = read_build_info(out)
    copy_template(out)  # configs and Python models always follow the committed ones (cheap)
    if (
        not force
        and info
        and info.get("fingerprint") == fingerprint
        and all((out / f).is_file() for f in ONNX_FILES.values())
    ):
        log(f"{out} is up to date ({info['weights']} weights, encoder {info['encoder']})")
        return info
    torch.manual_seed(0)
    images = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in sample_images()]
    reports = []
    started = time.perf_counter()

    log(f"[1/3] image encoder {encoder} from {files[2].name}")
    graph = ImageEncoderGraph(load_image_encoder(encoder, files[2]), spec.input_pool).eval()
    reports.append(
        onnx_export.export_image_encoder(
            graph, out / ONNX_FILES["image_encoder"], [encoder_canvas(i) for i in images]
        )
    )
    expanded = onnx_export.write_tensorrt_source(
        out / ONNX_FILES["image_encoder"], out / ONNX_FILES["image_encoder_plain"]
    )
    log(
        f"      exported in {reports[-1].export_seconds:.1f} s, max diff vs PyTorch "
        f"{reports[-1].max_abs_diff:.2e}; TensorRT source with {expanded} GELUs expanded"
    )
    with torch.no_grad():
        canvas, size = encoder_canvas(images[0])
        embedding = graph(torch.from_numpy(canvas)[None], torch.from_numpy(size)[None])
    del graph

    log(f"[2/3] prompt decoder from {files[1].name} (factorized for ONNX Runtime, plain for TensorRT)")
    decoder = load_prompt_decoder(files[1])
    for key, factorized in (("prompt_decoder", True), ("prompt_decoder_plain", False)):
        path = out / ONNX_FILES[key]
        reports.append(
            onnx_export.export_prompt_decoder(decoder, path, embedding, decoder_counts, factorized=factorized)
        )
        log(
            f"      {path.name} exported in {reports[-1].export_seconds:.1f} s, max diff "
            f"{reports[-1].max_abs_diff:.2e}"
        )
    path = out / ONNX_FILES["interactive_decoder"]
    reports.append(onnx_export.export_interactive_decoder(decoder, path, embedding))
    log(
        f"      interactive decoder (SegAny: all mask tokens, previous mask) exported in "
        f"{reports[-1].export_seconds:.1f} s, max diff {reports[-1].max_abs_diff:.2e}"
    )

    log(f"[3/3] object-aware model from {files[0].name}")
    network = load_object_aware_model(files[0])
    letterboxes = [detector_input(i)[0] for i in images]
    reports.append(onnx_export.export_detector(network, out / ONNX_FILES["detector"], letterboxes))
    log(
        f"      exported in {reports[-1].export_seconds:.1f} s, max diff vs PyTorch "
        f"{reports[-1].max_abs_diff:.2e}"
    )

    info = {
        "version": __version__,
        "weights": weights_kind,
        "weights_dir": str(weights_dir),
        "encoder": encoder,
        "detector": {"num_classes": network.num_classes, "reg_max": network.reg_max},
        "fingerprint": fingerprint,
        "exports": [r.as_dict() for r in reports],
        "build_seconds": round(time.perf_counter() - started, 1),
    }
    (out / BUILD_INFO).write_text(json.dumps(info, indent=2) + "\n")
    log(f"done in {info['build_seconds']} s: {out}")
    return info


def main(argv: list[str] | None = None) -> int:
    from ..modeling.checkpoints import DEFAULT_ENCODER, ENCODERS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--weights", type=Path, default=REPO_ROOT / "weights/official", help="official checkpoints"
    )
    parser.add_argument("--encoder", default=DEFAULT_ENCODER, choices=sorted(ENCODERS))
    parser.add_argument("--out", type=Path, default=TEMPLATE, help="model repository to write")
    parser.add_argument("--download", action="store_true", help="download missing official files")
    parser.add_argument(
        "--fake-weights", action="store_true", help="seeded random weights in the official formats"
    )
    parser.add_argument("--fake-dir", type=Path, default=REPO_ROOT / "weights/fake")
    parser.add_argument("--target", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument(
        "--cpu-repo", type=Path, default=None, help="with --target gpu: the CPU repository to convert"
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args(argv)

    if args.target == "gpu":
        from .gpu import write_gpu_repository

        cpu_repo = args.cpu_repo or TEMPLATE
        if read_build_info(cpu_repo) is None:
            weights, kind = resolve_weights(
                args.weights, args.encoder, args.fake_weights, args.download, args.fake_dir
            )
            build_repository(weights, kind, args.encoder, cpu_repo, args.force)
        write_gpu_repository(cpu_repo, args.out)
        log(f"GPU repository written to {args.out}")
        return 0
    weights, kind = resolve_weights(
        args.weights, args.encoder, args.fake_weights, args.download, args.fake_dir
    )
    if kind == "fake":
        log("!" * 78)
        log("!! BUILDING FROM RANDOM WEIGHTS: the masks this repository produces are MEANINGLESS.")
        log("!! Put the official checkpoints into weights/official (see README) for real results.")
        log("!" * 78)
    build_repository(weights, kind, args.encoder, args.out, args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
