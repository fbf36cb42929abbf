"""The label run's bookkeeping without a server (a stand-in client): the server going away stops the run with
its journal kept, a journal or dataset of another run is refused, SAM's records and filter names are
checked. The real server: ``tests/integration/test_label.py``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from segment_everything_client import InvalidInputError, Segmentation, SegmentSettings
from segment_everything_client._base import everything_settings
from segment_everything_client.errors import ServerUnavailableError
from segment_everything_client.label import LabelError, journal_path, label
from segment_everything_contract import rle as rle_codec


def segmentation(index: int) -> Segmentation:
    mask = np.zeros((6, 8), bool)
    mask[1:4, index % 5 : index % 5 + 3] = True
    return Segmentation(
        boxes=[[0, 0, 8, 6]],
        scores=[0.5],
        iou_predictions=[0.25],
        image_size=(6, 8),
        rles=[rle_codec.encode(mask)],
        stability_scores=[0.75],
    )


class StandIn:
    """Answers ``segment_everything_iter`` in order; ``outcomes[name]`` is an exception to yield instead."""

    model_name = "segment_everything"

    def __init__(self, outcomes: dict[str, Exception] | None = None) -> None:
        self.outcomes = outcomes or {}
        self.sent: list[str] = []

    def segment_everything_iter(self, paths, *, concurrency, return_exceptions, **settings):
        assert return_exceptions and settings["stability_scores"] is True
        for k, path in enumerate(paths):
            self.sent.append(path.name)
            outcome = self.outcomes.get(path.name)
            yield k, outcome if outcome is not None else segmentation(int(path.stem[-1]))


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    paths = [tmp_path / f"img{i}.jpg" for i in range(5)]
    for p in paths:
        p.write_bytes(b"stand-in")
    return paths


def run(client, images, out, **kwargs):
    return label(client, images, [p.name for p in images], out, SegmentSettings(), **kwargs)


def test_server_gone_stops_the_run_and_a_later_run_finishes_it(images, tmp_path):
    out = tmp_path / "dataset.json"
    gone = StandIn({"img2.jpg": ServerUnavailableError("server went away")})
    summary = run(gone, images, out)
    assert isinstance(summary.stopped, ServerUnavailableError) and summary.labelled == 2
    assert not out.exists() and journal_path(out).exists()

    later = StandIn({"img4.jpg": InvalidInputError("image is 4x4 pixels")})
    summary = run(later, images, out)
    assert later.sent == ["img2.jpg", "img3.jpg", "img4.jpg"]  # only what the journal lacks
    assert (summary.labelled, summary.failed, summary.resumed) == (4, 1, 2)
    assert not journal_path(out).exists()
    dataset = json.loads(out.read_text())
    assert [i["id"] for i in dataset["images"]] == [1, 2, 3, 4]
    assert dataset["failures"] == [{"image_id": 5, "file_name": "img4.jpg", "reason": "image is 4x4 pixels"}]
    assert [a["image_id"] for a in dataset["annotations"]] == [1, 2, 3, 4]

    retried = StandIn()
    summary = run(retried, images, out, retry_failed=False)
    assert retried.sent == [] and summary.failed == 1  # complete: nothing to send


def test_retry_failed_sends_the_failed_images_again(images, tmp_path):
    out = tmp_path / "dataset.json"
    first = StandIn({"img1.jpg": InvalidInputError("refused"), "img3.jpg": ServerUnavailableError("gone")})
    assert run(first, images, out).failed == 1
    again = StandIn()
    summary = run(again, images, out, retry_failed=True)
    assert again.sent == ["img1.jpg", "img3.jpg", "img4.jpg"] and summary.failed == 0
    assert json.loads(out.read_text())["failures"] == []


def test_another_runs_journal_or_dataset_is_refused(images, tmp_path):
    out = tmp_path / "dataset.json"
    run(StandIn({"img3.jpg": ServerUnavailableError("gone")}), images, out)
    with pytest.raises(LabelError, match="belongs to a run with other images or settings"):
        label(StandIn(), images, [p.name for p in images], out, SegmentSettings(max_prompts=5))
    journal_path(out).unlink()
    out.write_text(json.dumps({"info": {"run": {"other": 1}}}))
    with pytest.raises(LabelError, match="written by another run; pass --overwrite"):
        run(StandIn(), images, out)
    assert run(StandIn(), images, out, overwrite=True).labelled == 5


def test_sam_records_follow_sams_conventions():
    (record,) = segmentation(2).to_sam_records("coco_rle")
    assert record["bbox"] == [2, 1, 2, 2]  # SAM's batched_mask_to_box: w = x_max - x_min
    assert record["crop_box"] == [0, 0, 8, 6] and record["area"] == 9
    assert record["point_coords"] == [[0.0, 0.0], [8.0, 6.0]] and record["stability_score"] == 0.75
    (binary,) = segmentation(2).to_sam_records()
    assert binary["segmentation"].dtype == bool and binary["segmentation"].sum() == 9
    with pytest.raises(InvalidInputError, match="output_mode must be one of binary_mask, coco_rle"):
        segmentation(2).to_sam_records("uncompressed_rle")
    plain = segmentation(2)
    plain.stability_scores = None
    with pytest.raises(InvalidInputError, match="stability_scores=True"):
        plain.to_sam_records()


def test_filter_names_are_checked():
    assert everything_settings(pred_iou_thresh=0.5).pred_iou_thresh == 0.5
    with pytest.raises(TypeError, match="unknown setting box_nms_thresh; the filters are pred_iou_thresh"):
        everything_settings(box_nms_thresh=0.7)
    with pytest.raises(InvalidInputError, match=r"mask_nms_thresh must be in \(0, 1\], got 1.5"):
        everything_settings(mask_nms_thresh=1.5)
