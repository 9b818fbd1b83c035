"""Reading and checking a COCO instances JSON (atss/data/coco_json.py): the categories in
Detectron2's class order, and the first problem of a broken file named with its line, image id,
annotation id or field, also when it surfaces through the checked loader."""

import json
import uuid

import pytest
from detectron2.data.datasets import register_coco_instances

from atss.data import DatasetError, get_checked_detection_dataset_dicts
from atss.data.coco_json import check_coco_json, read_coco_categories
from tests.data.annotation_files import annotation, coco_dataset, write_coco_json, write_images


def test_an_unknown_category_id_fails_naming_the_json_annotation_and_image(tmp_path):
    name, path = coco_dataset(
        tmp_path, [annotation(1, 10, [1, 1, 5, 5]), annotation(7, 12, [1, 1, 5, 5], 9)]
    )
    with pytest.raises(DatasetError) as e:
        get_checked_detection_dataset_dicts(name)
    msg = str(e.value)
    assert all(s in msg for s in [name, path, "annotation id 7", "image_id 12", "'category_id'"])
    assert "is 9" in msg


def test_a_missing_json_file_fails_naming_it(tmp_path):
    name = f"validation_test_{uuid.uuid4().hex}"
    register_coco_instances(name, {}, str(tmp_path / "nowhere.json"), str(tmp_path))
    with pytest.raises(DatasetError, match=r"nowhere\.json: annotation file not found"):
        get_checked_detection_dataset_dicts(name)


def test_a_malformed_json_fails_with_file_line_and_column(tmp_path):
    # A missing comma: Python 3.10-3.13 all report it at the '"' of "x" (line 2, column 12);
    # a trailing comma would not do, 3.13 reports that one at the comma itself.
    name, path = coco_dataset(tmp_path, [], text='{"images": [\n  {"id": 1 "x": 2}\n]}')
    with pytest.raises(DatasetError) as e:
        get_checked_detection_dataset_dicts(name)
    assert path in str(e.value) and "not valid JSON" in str(e.value)
    assert "line 2, column 12" in str(e.value)


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda d: d.pop("categories"), "top-level field 'categories' is missing"),
        (lambda d: d["images"][1].pop("height"), "field 'height' is missing"),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), "field 'bbox' must be 4 numbers"),
        (lambda d: d["annotations"][0].update(ignore=1), "field 'ignore' is set"),
    ],
)
def test_a_structurally_broken_coco_json_fails_naming_the_field(tmp_path, mutate, expected):
    data = {
        "images": write_images(tmp_path),
        "annotations": [annotation(1, 10, [1, 1, 5, 5])],
        "categories": [{"id": 1, "name": "tree"}],
    }
    mutate(data)
    name, path = coco_dataset(tmp_path, [], text=json.dumps(data))
    with pytest.raises(DatasetError) as e:
        get_checked_detection_dataset_dicts(name)
    assert path in str(e.value) and expected in str(e.value)


def test_check_coco_json_accepts_a_good_file(tmp_path):
    _, path = coco_dataset(tmp_path, [annotation(1, 10, [1, 1, 5, 5])])
    assert check_coco_json(path) is None


def test_read_coco_categories_sorts_by_id_whatever_the_file_order(tmp_path):
    """Categories listed 7, 12, 3 in the file come back as (3, birch), (7, spruce), (12, oak):
    the order of Detectron2's contiguous ids (by hand). Fails if the file order is kept, or if
    they are sorted by name or by the id's text ("12" before "3")."""
    categories = [
        {"id": 7, "name": "spruce"},
        {"id": 12, "name": "oak"},
        {"id": 3, "name": "birch"},
    ]
    path = write_coco_json(tmp_path, [], images=[], categories=categories)
    assert read_coco_categories(path, "k") == [(3, "birch"), (7, "spruce"), (12, "oak")]


@pytest.mark.parametrize(
    "categories, message",
    [
        ([{"id": 3, "name": "a"}, {"id": 3, "name": "b"}], r"category ids \[3\] appear more"),
        ([{"id": "3", "name": "a"}], "needs an integer 'id' and a 'name'"),
        ([{"id": 3}], "needs an integer 'id' and a 'name'"),
        ([], "needs a non-empty top-level 'categories' list"),
        ({"id": 3, "name": "a"}, "needs a non-empty top-level 'categories' list"),
    ],
)
def test_read_coco_categories_refuses_what_cannot_be_mapped(tmp_path, categories, message):
    """A repeated id (two classes for one id), a non-integer id, a missing name, an empty or
    non-list 'categories' each give a DatasetError naming the config key and the file. Fails
    if a repeated id is accepted (its second name would silently take a class of its own)."""
    path = write_coco_json(tmp_path, [], images=[], categories=categories)
    with pytest.raises(DatasetError, match=message) as e:
        read_coco_categories(path, "dataset.train.json_file")
    assert f"dataset.train.json_file={path}" in str(e.value)
