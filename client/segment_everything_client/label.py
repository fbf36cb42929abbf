"""Label a dataset: many images in, one COCO dataset file out; a run that stops resumes where it stopped.

``segment-everything label DIR_OR_FILES... --out dataset.json`` (``cli.py``) runs :func:`label`. Requests are
pipelined (``concurrency`` in flight, so the server never waits for the client), and every finished image,
labelled or failed, is appended to a journal beside the output (``dataset.json.journal``, one JSON line per
image, flushed to disk before the next one is counted). A run killed at any point, SIGKILL included, loses
only the requests in flight: started again with the same arguments it reads the journal, sends only the
images it does not hold, and at the end writes the dataset file in one atomic replace and deletes the
journal. The dataset file on disk is therefore always a complete, valid JSON document (or absent), and it
does not depend on how often the run was interrupted: images and annotations are numbered in input order.

The dataset file is COCO: ``images`` (``id``, ``file_name``, ``height``, ``width``), ``annotations``
(``id``, ``image_id``, ``category_id``, ``segmentation`` as COCO RLE, ``area``, ``bbox`` xywh, ``iscrowd``,
``score``, ``predicted_iou``, ``stability_score``), ``categories`` (one: ``object``), plus ``info`` (the run's
settings) and ``failures`` (``image_id``, ``file_name``, ``reason`` of each image that failed: undecodable,
refused, or a server error after the client's retries; a later run with ``retry_failed`` sends them again).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from segment_everything_contract import FILTER_SETTINGS

from .errors import ModelNotReadyError, SegmentEverythingError, ServerUnavailableError
from .types import SegmentSettings

__all__ = ["JOURNAL_SUFFIX", "LabelError", "LabelSummary", "dataset_document", "journal_path", "label"]

JOURNAL_SUFFIX = ".journal"
JOURNAL_VERSION = 1
CATEGORIES = [{"id": 1, "name": "object", "supercategory": "object"}]


class LabelError(SegmentEverythingError):
    """The run cannot start: its journal or output belongs to a run with other arguments."""


@dataclass
class LabelSummary:
    """What a run did: images in the dataset, taken from an earlier run's journal, failed, masks, and whether
    it stopped early because the server went away (then its journal holds what it finished)."""

    total: int
    labelled: int = 0
    resumed: int = 0
    failed: int = 0
    masks: int = 0
    sent: int = 0
    stopped: SegmentEverythingError | None = None

    @property
    def complete(self) -> bool:
        return self.stopped is None


def journal_path(out: Path) -> Path:
    return out.with_name(out.name + JOURNAL_SUFFIX)


def run_key(paths: Sequence[Path], names: Sequence[str], settings: SegmentSettings, model: str) -> dict:
    """What makes two runs the same run: the images (their full paths, in order), the settings, the model."""
    digest = hashlib.sha256("\n".join(str(Path(p).resolve()) for p in paths).encode()).hexdigest()
    wanted = ("conf", "iou", "max_prompts", "pred_iou_thresh", "stability_score_thresh")
    wanted += ("min_mask_region_area", "mask_nms_thresh", "non_overlapping")
    return {
        "images": len(names),
        "images_sha256": digest,
        "model": model,
        "settings": {name: getattr(settings, name) for name in wanted},
    }


# ------------------------------------------------------------------------------------------------ journal


class Journal:
    """Finished images, one JSON line each, appended and flushed to disk (fsync) one by one."""

    def __init__(self, path: Path, key: dict) -> None:
        self.path = path
        self.entries: dict[int, dict] = {}
        if path.exists():
            self._read(key)
        else:
            self._write_line({"journal": JOURNAL_VERSION, "run": key}, mode="w")

    def _read(self, key: dict) -> None:
        data = self.path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]  # a line cut short by a kill is dropped
        if len(complete) != len(data):
            with open(self.path, "r+b") as f:
                f.truncate(len(complete))
                os.fsync(f.fileno())
        lines = complete.decode("utf-8").splitlines()
        try:
            header = json.loads(lines[0]) if lines else {}
            records = [json.loads(line) for line in lines[1:]]
        except json.JSONDecodeError as exc:
            raise LabelError(f"{self.path} is damaged ({exc}); delete it to start the run anew") from None
        if header.get("journal") != JOURNAL_VERSION or header.get("run") != key:
            raise LabelError(
                f"{self.path} belongs to a run with other images or settings: run again with those, or "
                "delete it to start anew"
            )
        for record in records:  # a later line about the same image wins (a failed image sent again)
            self.entries[int(record["index"])] = record

    def _write_line(self, record: dict, mode: str = "a") -> None:
        with open(self.path, mode, encoding="utf-8") as f:
            f.write(json.dumps(record, separators=(",", ":")) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if mode == "w":
            _fsync_directory(self.path.parent)

    def append(self, record: dict) -> None:
        self._write_line(record)
        self.entries[int(record["index"])] = record


def _fsync_directory(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform can open a directory
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ----------------------------------------------------------------------------------------------- dataset


def dataset_document(key: dict, names: Sequence[str], entries: dict[int, dict]) -> dict[str, Any]:
    """The COCO dataset of the finished entries, numbered in input order (image ``i`` has id ``i + 1``)."""
    images, annotations, failures = [], [], []
    for index in sorted(entries):
        entry = entries[index]
        image_id = index + 1
        if "error" in entry:
            failures.append({"image_id": image_id, "file_name": names[index], "reason": entry["error"]})
            continue
        images.append(
            {"id": image_id, "file_name": names[index], "height": entry["height"], "width": entry["width"]}
        )
        for ann in entry["annotations"]:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **ann})
    return {
        "info": {"description": "segment-everything label", "run": key},
        "images": images,
        "annotations": annotations,
        "categories": CATEGORIES,
        "failures": failures,
    }


def write_atomically(path: Path, document: dict) -> None:
    """Write ``path`` so that it is the old file or the new one, never a part: a temporary file beside it,
    flushed to disk, then renamed over it."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "w", encoding="utf-8") as f:
            json.dump(document, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
    _fsync_directory(path.parent)


# ------------------------------------------------------------------------------------------------- label


def label(
    client: Any,
    paths: Sequence[Path],
    names: Sequence[str],
    out: Path,
    settings: SegmentSettings,
    *,
    concurrency: int = 4,
    retry_failed: bool = False,
    overwrite: bool = False,
    on_start: Callable[[int, int], None] | None = None,
    on_image: Callable[[str, int], None] | None = None,
) -> LabelSummary:
    """Label ``paths`` (dataset names ``names``) into the COCO file ``out``, resuming from its journal.

    Args:
        client: a :class:`~segment_everything_client.SegmentEverythingClient`.
        settings: SegEvery settings; every mask's stability score is always asked for.
        concurrency: requests in flight (the server's instances busy plus its queue).
        retry_failed: send the images an earlier run recorded as failed again.
        overwrite: replace an existing ``out`` that another run wrote.
        on_start: called with the images and masks an earlier run finished, before any request (progress).
        on_image: called with each finished image's name and mask count (progress).
    """
    if len(paths) != len(names):
        raise ValueError("one name per image")
    settings = SegmentSettings(**{**_fields(settings), "stability_scores": True, "output": "rle"})
    key = run_key(paths, names, settings, client.model_name)
    summary = LabelSummary(total=len(paths))
    journal_file = journal_path(out)
    if not journal_file.exists() and out.exists():
        previous = _read_run(out)
        if previous == key:  # this very run finished already
            document = json.loads(out.read_text(encoding="utf-8"))
            summary.labelled = len(document["images"])
            summary.failed = len(document["failures"])
            summary.resumed = summary.labelled + summary.failed
            summary.masks = len(document["annotations"])
            return summary
        if not overwrite:
            raise LabelError(f"{out} exists and was written by another run; pass --overwrite to replace it")
    journal = Journal(journal_file, key)
    if retry_failed:
        journal.entries = {i: e for i, e in journal.entries.items() if "error" not in e}
    for entry in journal.entries.values():
        summary.resumed += 1
        summary.failed += "error" in entry
        summary.masks += len(entry.get("annotations", ()))
    pending = [i for i in range(len(paths)) if i not in journal.entries]
    if on_start is not None:
        on_start(summary.resumed, summary.masks)
    if pending:
        results = client.segment_everything_iter(
            [paths[i] for i in pending],
            concurrency=concurrency,
            return_exceptions=True,
            **_everything_kwargs(settings),
        )
        with contextlib.closing(results):  # leaving early stops the client's workers
            for k, result in results:
                index = pending[k]
                if isinstance(result, (ServerUnavailableError, ModelNotReadyError)):
                    summary.stopped = result  # not the image's fault: a later run sends it again
                    break
                summary.sent += 1
                if isinstance(result, SegmentEverythingError):
                    journal.append({"index": index, "error": str(result)})
                    summary.failed += 1
                    masks = 0
                else:
                    h, w = result.image_size
                    # image_id and id are given when the dataset is written (input order)
                    annotations = [
                        {name: value for name, value in ann.items() if name != "image_id"}
                        for ann in result.to_coco(index + 1)
                    ]
                    journal.append({"index": index, "height": h, "width": w, "annotations": annotations})
                    masks = len(annotations)
                    summary.masks += masks
                if on_image is not None:
                    on_image(names[index], masks)
    summary.labelled = sum("error" not in e for e in journal.entries.values())
    if summary.stopped is None:
        write_atomically(out, dataset_document(key, names, journal.entries))
        journal_file.unlink()
        _fsync_directory(journal_file.parent)
    return summary


def _read_run(out: Path) -> dict | None:
    try:
        return json.loads(out.read_text(encoding="utf-8")).get("info", {}).get("run")
    except (OSError, ValueError, AttributeError):
        return None


def _fields(settings: SegmentSettings) -> dict[str, Any]:
    return {f.name: getattr(settings, f.name) for f in fields(settings)}


def _everything_kwargs(settings: SegmentSettings) -> dict[str, Any]:
    names = ("conf", "iou", "max_prompts", "output", *FILTER_SETTINGS)
    return {name: getattr(settings, name) for name in names}
