"""atss.data.registration: the one helper that registers the tree crowns, the shapes and COCO
JSON files with Detectron2 (idempotent, evaluator metadata, the COCO id mapping)."""

import json

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from atss.data import DatasetError
from atss.data.registration import register_coco_json, register_dataset


def _coco_json(folder, category_ids=(7, 3)):
    """Two images, one box each, categories with non-contiguous ids given out of order."""
    (folder / "images").mkdir(exist_ok=True)
    images, anns = [], []
    for i in range(2):
        Image.new("RGB", (32, 24)).save(folder / "images" / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "height": 24, "width": 32})
        anns.append(
            {
                "id": i + 1,
                "image_id": i + 1,
                "category_id": category_ids[i],
                "bbox": [2, 3, 10, 8],
                "area": 80,
                "iscrowd": 0,
            }
        )
    names = {7: "spruce", 3: "birch"}
    data = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": c, "name": names[c]} for c in category_ids],
    }
    path = folder / "ann.json"
    path.write_text(json.dumps(data))
    return path


def test_register_dataset_is_idempotent_and_replaces_on_other_metadata():
    """Same name + same metadata: the first registration stays (its loader is the one called);
    other metadata: re-registered (Detectron2 would otherwise raise on the second register or
    refuse to change a metadata value). evaluator_type defaults to "coco". Catches a helper
    that always re-registers (the second loader would be called) or never does."""
    calls = []
    register_dataset("reg_a", lambda: calls.append(1) or [], thing_classes=["x"], json_file="a")
    register_dataset("reg_a", lambda: calls.append(2) or [], thing_classes=["x"], json_file="a")
    DatasetCatalog.get("reg_a")
    assert calls == [1]
    meta = MetadataCatalog.get("reg_a")
    assert meta.thing_classes == ["x"] and meta.evaluator_type == "coco"

    register_dataset("reg_a", lambda: calls.append(3) or [], thing_classes=["y"], json_file="b")
    DatasetCatalog.get("reg_a")
    assert calls == [1, 3]
    meta = MetadataCatalog.get("reg_a")
    assert (meta.thing_classes, meta.json_file) == (["y"], "b")
    register_dataset("reg_b", lambda: [], thing_classes=["x"], evaluator_type=None)
    assert MetadataCatalog.get("reg_b").evaluator_type is None


def test_register_coco_json_takes_classes_and_id_map_from_the_json(tmp_path):
    """Class names in the order of their category ids (birch id 3, spruce id 7), and the map
    {3: 0, 7: 1} that Detectron2's load_coco_json builds, set before the first load so that an
    evaluator built early maps predictions back; the loaded records use contiguous ids.
    Catches names in file order (spruce first) and a missing id map."""
    path = _coco_json(tmp_path)
    register_coco_json("reg_coco", path, tmp_path / "images")
    meta = MetadataCatalog.get("reg_coco")
    assert meta.thing_classes == ["birch", "spruce"]
    assert meta.thing_dataset_id_to_contiguous_id == {3: 0, 7: 1}
    assert (meta.json_file, meta.evaluator_type) == (str(path), "coco")
    records = DatasetCatalog.get("reg_coco")
    assert [r["annotations"][0]["category_id"] for r in records] == [1, 0]
    assert MetadataCatalog.get("reg_coco").thing_dataset_id_to_contiguous_id == {3: 0, 7: 1}
    register_coco_json("reg_coco", path, tmp_path / "images")  # again: a no-op, no error


def test_register_coco_json_with_given_classes_does_not_read_the_file(tmp_path):
    """With thing_classes given the JSON may not exist yet (written by the first load);
    without them a missing or broken JSON is an error naming the file."""
    missing = tmp_path / "later.json"
    register_coco_json("reg_later", missing, tmp_path, thing_classes=["tree"])
    assert MetadataCatalog.get("reg_later").thing_classes == ["tree"]
    with pytest.raises(DatasetError, match="later.json: annotation file not found"):
        register_coco_json("reg_missing", missing, tmp_path)
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    with pytest.raises(DatasetError, match=r"broken.json: not valid JSON"):
        register_coco_json("reg_broken", broken, tmp_path)
    assert "reg_missing" not in DatasetCatalog.list()
