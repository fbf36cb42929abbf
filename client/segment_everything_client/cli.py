"""``segment-everything`` command line.

    segment-everything segment IMAGE_OR_DIR... [--url URL] [--protocol grpc|http] [--out DIR]
                       [--conf C] [--iou T] [--max-prompts N] [--concurrency K]
    segment-everything label IMAGE_OR_DIR... --out dataset.json [--url URL] [--conf C] [--iou T]
                       [--max-prompts N] [--concurrency K] [--pred-iou-thresh X] [--stability-score-thresh X]
                       [--min-mask-region-area A] [--mask-nms-thresh X] [--non-overlapping] [--retry-failed]
    segment-everything health [--url URL] [--protocol grpc|http]
    common options: --timeout S --retries N --ssl --ca FILE --cert FILE --key FILE --header NAME:VALUE

``segment`` writes ``<stem>_overlay.png`` and ``<stem>_coco.json`` (a COCO dataset file with one
image and its annotations, each with a ``score``) per image into ``--out``.

``label`` writes one COCO dataset file for all the images (``label.py``): pipelined requests, SAM's quality
filters, a progress bar when stdout is a terminal; killed, it resumes when started again with the same
arguments.

Exit codes: 0 success; 1 some images failed (e.g. not decodable); 2 bad usage or a missing
file; 3 the server is unreachable or the model is not ready.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from ._base import everything_settings
from .client import SegmentEverythingClient
from .errors import InvalidInputError, ModelNotReadyError, SegmentEverythingError, ServerUnavailableError
from .images import IMAGE_SUFFIXES, load_image
from .label import LabelError, journal_path, label
from .types import Segmentation

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_SERVER = 0, 1, 2, 3


def _error(message: str) -> None:
    print(f"segment-everything: error: {message}", file=sys.stderr)


def collect_images(paths: Sequence[str], recursive: bool = False) -> list[Path]:
    """Expand directories into their image files (sorted); a missing path raises FileNotFoundError."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = p.rglob("*") if recursive else p.iterdir()
            out.extend(sorted(f for f in found if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES))
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"no such file or directory: {raw}")
    return out


def output_stems(images: Sequence[Path]) -> list[str]:
    """File stems, made unique (``x``, ``x_2``, ...) when two inputs share a name."""
    seen: dict[str, int] = {}
    stems = []
    for p in images:
        n = seen.get(p.stem, 0) + 1
        seen[p.stem] = n
        stems.append(p.stem if n == 1 else f"{p.stem}_{n}")
    return stems


def coco_document(seg: Segmentation, file_name: str, image_id: int = 1) -> dict[str, Any]:
    h, w = seg.image_size
    annotations = seg.to_coco(image_id=image_id, category_id=1)
    for k, ann in enumerate(annotations, start=1):
        ann["id"] = k
    return {
        "images": [{"id": image_id, "file_name": file_name, "height": h, "width": w}],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "object", "supercategory": "object"}],
    }


class _Progress:
    """A progress bar on stderr: images, images/s, masks, ETA (tqdm when installed, else one line)."""

    def __init__(self, total: int, enabled: bool, initial: int = 0, masks: int = 0):
        self.total, self.count, self.enabled = total, initial, enabled
        self.masks = masks
        self._bar = None
        self._closed = False
        self._started = time.perf_counter()
        self._initial = initial
        if enabled:
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=total, initial=initial, unit="img", file=sys.stderr)
            except ImportError:
                pass

    def update(self, name: str, masks: int = 0) -> None:
        self.count += 1
        self.masks += masks
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_postfix(masks=self.masks, refresh=False)
            self._bar.update(1)
            return
        rate = (self.count - self._initial) / max(time.perf_counter() - self._started, 1e-9)
        eta = (self.total - self.count) / rate if rate > 0 else 0.0
        line = f"[{self.count}/{self.total}] {rate:.2f} img/s, {self.masks} masks, ETA {eta:.0f} s"
        print(f"\r{line:<100}", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.enabled and self.count:
            print(file=sys.stderr)


def _headers(pairs: Sequence[str]) -> dict[str, str] | None:
    headers = {}
    for pair in pairs:
        name, sep, value = pair.partition(":")
        if not sep or not name.strip():
            raise InvalidInputError(f"--header wants NAME:VALUE, got {pair!r}")
        headers[name.strip()] = value.strip()
    return headers or None


def _client(args: argparse.Namespace) -> SegmentEverythingClient:
    return SegmentEverythingClient(
        args.url,
        protocol=args.protocol,
        timeout=args.timeout,
        retries=args.retries,
        ssl=args.ssl,
        root_certificates=args.ca,
        certificate_chain=args.cert,
        private_key=args.key,
        headers=_headers(args.header),
    )


def _check_server(client: SegmentEverythingClient) -> SegmentEverythingError | None:
    return client._readiness()


def _images(args: argparse.Namespace) -> list[Path] | None:
    """The images the command line names; None, after saying why, when there are none."""
    try:
        images = collect_images(args.inputs, recursive=args.recursive)
    except FileNotFoundError as exc:
        _error(str(exc))
        return None
    if not images:
        _error("no images found (looked for " + ", ".join(sorted(IMAGE_SUFFIXES)) + ")")
        return None
    return images


def cmd_segment(args: argparse.Namespace) -> int:
    images = _images(args)
    if images is None:
        return EXIT_USAGE
    settings = {"conf": args.conf, "iou": args.iou, "max_prompts": args.max_prompts}
    everything_settings(**settings)  # reject bad values before contacting the server
    out_dir = Path(args.out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _error(f"cannot create output directory {out_dir}: {exc}")
        return EXIT_USAGE
    stems = output_stems(images)

    start = time.perf_counter()
    n_ok = n_instances = 0
    failures: list[str] = []
    with _client(args) as client:
        reason = _check_server(client)
        if reason is not None:
            what = "model not ready" if isinstance(reason, ModelNotReadyError) else "server unavailable"
            _error(f"{what} at {client.url} ({client.protocol}): {reason}")
            return EXIT_SERVER
        progress = _Progress(len(images), enabled=len(images) > 1 and not args.quiet)
        results = client.segment_everything_iter(
            images, concurrency=args.concurrency, return_exceptions=True, **settings
        )
        # closing(): leaving early must stop the worker threads before the client closes.
        with contextlib.closing(results), contextlib.closing(progress):  # type: ignore[arg-type]
            for i, result in results:
                path = images[i]
                progress.update(path.name)
                if isinstance(result, (ServerUnavailableError, ModelNotReadyError)):
                    progress.close()
                    _error(f"{path}: {result}")
                    return EXIT_SERVER
                if isinstance(result, SegmentEverythingError):
                    failures.append(f"{path}: {result}")
                    continue
                try:
                    _write_outputs(result, path, out_dir, stems[i], draw=not args.no_overlay)
                except (OSError, SegmentEverythingError) as exc:
                    failures.append(f"{path}: cannot write outputs: {exc}")
                    continue
                n_ok += 1
                n_instances += len(result)

    for message in failures:
        _error(message)
    seconds = time.perf_counter() - start
    print(
        f"segmented {n_ok}/{len(images)} images, {n_instances} instances in {seconds:.2f} s"
        f" ({n_ok / seconds if seconds > 0 else 0:.2f} images/s) -> {out_dir}"
    )
    return EXIT_FAILED if failures else EXIT_OK


def _write_outputs(seg: Segmentation, path: Path, out_dir: Path, stem: str, draw: bool) -> None:
    doc = coco_document(seg, path.name)
    (out_dir / f"{stem}_coco.json").write_text(json.dumps(doc))
    if draw:
        seg.save_overlay(out_dir / f"{stem}_overlay.png", load_image(path))


def cmd_label(args: argparse.Namespace) -> int:
    images = _images(args)
    if images is None:
        return EXIT_USAGE
    settings = everything_settings(  # bad values are refused before contacting the server
        args.conf,
        args.iou,
        args.max_prompts,
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_score_thresh,
        min_mask_region_area=args.min_mask_region_area,
        mask_nms_thresh=args.mask_nms_thresh,
        non_overlapping=args.non_overlapping,
    )
    out = Path(args.out)
    if not out.parent.is_dir():
        _error(f"the folder of --out does not exist: {out.parent}")
        return EXIT_USAGE
    start = time.perf_counter()
    with _client(args) as client:
        reason = _check_server(client)
        if reason is not None:
            what = "model not ready" if isinstance(reason, ModelNotReadyError) else "server unavailable"
            _error(f"{what} at {client.url} ({client.protocol}): {reason}")
            return EXIT_SERVER
        names = dataset_names(args.inputs, images)
        progress: _Progress | None = None

        def on_start(done: int, masks: int) -> None:  # after the journal of an earlier run is read
            nonlocal progress
            enabled = sys.stdout.isatty() and not args.quiet  # quiet when stdout is a file or a pipe
            progress = _Progress(len(images), enabled, initial=done, masks=masks)

        def on_image(name: str, masks: int) -> None:
            if progress is not None:
                progress.update(name, masks)

        try:
            summary = label(
                client,
                images,
                names,
                out,
                settings,
                concurrency=args.concurrency,
                retry_failed=args.retry_failed,
                overwrite=args.overwrite,
                on_start=on_start,
                on_image=on_image,
            )
        except LabelError as exc:
            _error(str(exc))
            return EXIT_USAGE
        finally:
            if progress is not None:
                progress.close()
    seconds = time.perf_counter() - start
    if summary.stopped is not None:
        _error(f"{summary.stopped}")
        _error(
            f"stopped after {summary.labelled + summary.failed}/{summary.total} images; their results are in "
            f"{journal_path(out)}: run the same command again to go on"
        )
        return EXIT_SERVER
    sent = f", {summary.sent} sent" + (f", {summary.resumed} from an earlier run" if summary.resumed else "")
    print(
        f"labelled {summary.labelled}/{summary.total} images ({summary.failed} failed{sent}), "
        f"{summary.masks} masks in {seconds:.2f} s ({summary.sent / seconds if seconds > 0 else 0:.2f} "
        f"images/s sent) -> {out}"
    )
    return EXIT_FAILED if summary.failed else EXIT_OK


def dataset_names(inputs: Sequence[str], images: Sequence[Path]) -> list[str]:
    """Each image's ``file_name`` in the dataset: its path inside the folder given (a file given by itself:
    its path as given)."""
    folders = [Path(raw) for raw in inputs if Path(raw).is_dir()]
    names = []
    for path in images:
        folder = next((f for f in folders if path.is_relative_to(f)), None)
        names.append(path.relative_to(folder).as_posix() if folder is not None else path.as_posix())
    return names


def cmd_health(args: argparse.Namespace) -> int:
    with _client(args) as client:
        reason = _check_server(client)
    if reason is None:
        print(f"ready: model '{client.model_name}' at {client.url} ({client.protocol})")
        return EXIT_OK
    print(f"not ready: {reason}")
    return EXIT_FAILED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segment-everything", description="MobileSAMv2 segment-everything client for Triton."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=None, help="host:port (default 127.0.0.1:8001 grpc / :8000 http)")
    common.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    common.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default 60)")
    common.add_argument("--retries", type=int, default=2, help="retries when the server is unavailable")
    common.add_argument("--ssl", action="store_true", help="use TLS (gRPC; or an HTTPS proxy in front)")
    common.add_argument("--ca", default=None, help="gRPC TLS: CA certificate file (PEM) to verify the server")
    common.add_argument("--cert", default=None, help="gRPC mutual TLS: client certificate chain file (PEM)")
    common.add_argument("--key", default=None, help="gRPC mutual TLS: client private key file (PEM)")
    common.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="NAME:VALUE",
        help="send this header / gRPC metadata with every call (repeatable), e.g. an auth token",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    seg = sub.add_parser("segment", parents=[common], help="segment every object in images")
    seg.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    seg.add_argument("--out", default="segment_everything_out", help="output directory")
    seg.add_argument("--conf", type=float, default=None, help="detector confidence threshold (default 0.4)")
    seg.add_argument("--iou", type=float, default=None, help="NMS IoU threshold (default 0.9)")
    seg.add_argument("--max-prompts", type=int, default=None, help="max objects per image (default 300)")
    seg.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    seg.add_argument("--recursive", action="store_true", help="search directories recursively")
    seg.add_argument("--no-overlay", action="store_true", help="write only the COCO json")
    seg.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    seg.set_defaults(func=cmd_segment)

    lab = sub.add_parser(
        "label", parents=[common], help="label a dataset: one COCO file for all images, resumable"
    )
    lab.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    lab.add_argument("--out", required=True, help="the COCO dataset file to write (JSON)")
    lab.add_argument("--conf", type=float, default=None, help="detector confidence threshold (default 0.4)")
    lab.add_argument("--iou", type=float, default=None, help="NMS IoU threshold between boxes (default 0.9)")
    lab.add_argument("--max-prompts", type=int, default=None, help="max objects per image (default 300)")
    lab.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    lab.add_argument("--pred-iou-thresh", type=float, default=None, help="SAM's filter: predicted IoU > X")
    lab.add_argument("--stability-score-thresh", type=float, default=None, help="SAM's filter: stability>=X")
    lab.add_argument(
        "--min-mask-region-area", type=int, default=None, help="remove holes and islands under A pixels"
    )
    lab.add_argument("--mask-nms-thresh", type=float, default=None, help="NMS between mask boxes at IoU X")
    lab.add_argument(
        "--non-overlapping", action="store_true", default=None, help="each pixel to its best mask only"
    )
    lab.add_argument("--retry-failed", action="store_true", help="resend images an earlier run failed on")
    lab.add_argument("--overwrite", action="store_true", help="replace --out written by another run")
    lab.add_argument("--recursive", action="store_true", help="search directories recursively")
    lab.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    lab.set_defaults(func=cmd_label)

    health = sub.add_parser("health", parents=[common], help="is the server and model ready? (exit 0/1)")
    health.set_defaults(func=cmd_health)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except SegmentEverythingError as exc:  # e.g. an out-of-range --conf
        _error(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        _error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
