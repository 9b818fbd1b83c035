"""Tests of ``atss.inference.detection_files``: the CSV / COCO-results JSON of detections."""

import json

import pytest
import torch
from detectron2.structures import Boxes, Instances

from atss.inference.detection_files import (
    CSV_COLUMNS,
    detection_rows,
    write_detections,
)
from tests.atss_testing import read_detections_csv


def _instances():
    inst = Instances((100, 200))
    inst.pred_boxes = Boxes(torch.tensor([[1.5, 2.0, 30.0, 40.25], [50.0, 60.0, 70.0, 99.0]]))
    inst.scores = torch.tensor([0.9, 0.25])
    inst.pred_classes = torch.tensor([1, 0])
    return inst


def test_csv_and_json_round_trip_with_the_users_category_ids(tmp_path):
    """The CSV has exactly the columns image, x0, y0, x1, y1, score, class_id, class_name and
    reads back to the boxes, scores and the user's category ids and names (ids 7 and 9 here,
    not the model's indices 0 and 1); the JSON is COCO results (bbox x, y, w, h). Fails if the
    model's class index is written where the categories have their own ids, or a column is
    lost or reordered."""
    classes = [(7, "oak"), (9, "pine")]
    rows = detection_rows("a.npy", _instances(), classes)
    rows += detection_rows("b.png", _instances()[:1], classes)
    write_detections(str(tmp_path / "d.csv"), rows)
    write_detections(str(tmp_path / "d.json"), rows)
    with open(tmp_path / "d.csv") as f:
        assert f.readline().strip() == ",".join(CSV_COLUMNS)
    back = read_detections_csv(str(tmp_path / "d.csv"))
    assert [(r["image"], r["class_id"], r["class_name"]) for r in back] == [
        ("a.npy", 9, "pine"),
        ("a.npy", 7, "oak"),
        ("b.png", 9, "pine"),
    ]
    assert [back[0][k] for k in ("x0", "y0", "x1", "y1")] == [1.5, 2.0, 30.0, 40.25]
    assert [r["score"] for r in back] == pytest.approx([0.9, 0.25, 0.9])
    results = json.loads((tmp_path / "d.json").read_text())
    assert [(r["image_id"], r["file_name"], r["category_id"]) for r in results] == [
        (1, "a.npy", 9),
        (1, "a.npy", 7),
        (2, "b.png", 9),
    ]
    assert results[0]["bbox"] == pytest.approx([1.5, 2.0, 28.5, 38.25])
    assert results[0]["category_name"] == "pine"


def test_without_classes_the_model_index_is_the_id(tmp_path):
    """No class list: ``class_id`` is the model's class index and the name is empty; another
    extension than .csv / .json is refused. Fails if rows need names to be written."""
    rows = detection_rows("x.png", _instances())
    assert [(r["class_id"], r["class_name"]) for r in rows] == [(1, ""), (0, "")]
    with pytest.raises(ValueError):
        write_detections(str(tmp_path / "d.txt"), rows)
