"""Generated shapes dataset: determinism, exact boxes, registration, COCO evaluation."""

import json

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import Boxes, BoxMode, Instances
from PIL import Image

from atss.data import shapes
from tests.atss_testing import write_coco_example


def test_same_seed_gives_byte_identical_json_and_pngs_in_any_folder(tmp_path):
    a = shapes.build_shapes_cache(6, seed=7, image_size=(96, 128), root=tmp_path / "a")
    b = shapes.build_shapes_cache(6, seed=7, image_size=(96, 128), root=tmp_path / "b")
    assert (a / "annotations.json").read_bytes() == (b / "annotations.json").read_bytes()
    for png in sorted((a / "images").iterdir()):
        assert png.read_bytes() == (b / "images" / png.name).read_bytes()
    c = shapes.build_shapes_cache(6, seed=8, image_size=(96, 128), root=tmp_path / "a")
    assert c != a
    assert (c / "annotations.json").read_bytes() != (a / "annotations.json").read_bytes()


def test_boxes_are_the_exact_tight_boxes_of_non_overlapping_bright_shapes():
    for i in range(10):
        out = shapes.generate_shapes_image(np.random.default_rng([0, i]), 150, 200, max_shapes=4)
        image, boxes, masks = out["image"], out["boxes"], out["masks"]
        assert image.shape == (150, 200, 3) and image.dtype == np.uint8
        assert 1 <= len(boxes) <= 4 and len(boxes) == len(out["classes"]) == len(masks)
        assert set(out["classes"].tolist()) <= {0, 1, 2}
        assert masks.sum(0).max() == 1  # shapes never overlap
        background = ~masks.any(0)
        for box, mask in zip(boxes, masks):
            ys, xs = np.nonzero(mask)
            assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            # Shapes are drawn in [150, 255], the background in [0, 110] (plus noise).
            assert image[mask].mean() > image[background].mean() + 60


def test_register_shapes_returns_name_loads_records_and_is_idempotent(tmp_path):
    name = shapes.register_shapes(
        "shapes_test_a", num_images=5, seed=3, image_size=(64, 96), root=tmp_path
    )
    assert name == "shapes_test_a"
    json_file = MetadataCatalog.get(name).json_file
    assert shapes.register_shapes("shapes_test_a", 5, 3, (64, 96), root=tmp_path) == name
    assert MetadataCatalog.get(name).json_file == json_file
    meta = MetadataCatalog.get(name)
    assert meta.thing_classes == ["rectangle", "ellipse", "triangle"]
    assert meta.evaluator_type == "coco"
    dicts = DatasetCatalog.get(name)
    assert len(dicts) == 5
    for d in dicts:
        assert 64 <= d["height"] <= 96 and 64 <= d["width"] <= 96
        with Image.open(d["file_name"]) as im:
            assert im.size == (d["width"], d["height"]) and im.mode == "RGB"
        for a in d["annotations"]:
            x, y, w, h = a["bbox"]
            assert a["bbox_mode"] == BoxMode.XYWH_ABS and a["category_id"] in (0, 1, 2)
            assert w > 0 and h > 0 and x >= 0 and y >= 0
            assert x + w <= d["width"] and y + h <= d["height"]
    # Other parameters under the same name replace the registration.
    shapes.register_shapes(
        "shapes_test_a", num_images=3, seed=3, image_size=(64, 96), root=tmp_path
    )
    assert len(DatasetCatalog.get("shapes_test_a")) == 3


def test_first_images_do_not_depend_on_num_images(tmp_path):
    small = shapes.build_shapes_cache(2, seed=1, image_size=(64, 80), root=tmp_path)
    large = shapes.build_shapes_cache(4, seed=1, image_size=(64, 80), root=tmp_path)
    for name in ("000000.png", "000001.png"):
        assert (small / "images" / name).read_bytes() == (large / "images" / name).read_bytes()


def test_bad_parameters_are_rejected():
    with pytest.raises(ValueError, match="image_size"):
        shapes.build_shapes_cache(2, seed=0, image_size=(200, 100))
    with pytest.raises(ValueError, match="num_images"):
        shapes.build_shapes_cache(0, seed=0)


def test_coco_evaluator_scores_ground_truth_as_predictions_100_ap(tmp_path):
    name = shapes.register_shapes(
        "shapes_test_eval", num_images=6, seed=5, image_size=(96, 128), root=tmp_path
    )
    evaluator = COCOEvaluator(name, tasks=("bbox",), output_dir=None)
    evaluator.reset()
    for d in DatasetCatalog.get(name):
        inst = Instances((d["height"], d["width"]))
        boxes = [
            BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in d["annotations"]
        ]
        inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        inst.scores = torch.ones(len(boxes))
        inst.pred_classes = torch.tensor(
            [a["category_id"] for a in d["annotations"]], dtype=torch.int64
        )
        evaluator.process([{"image_id": d["image_id"]}], [{"instances": inst}])
    result = evaluator.evaluate()["bbox"]
    assert result["AP"] == pytest.approx(100.0)
    assert {k for k in result if k.startswith("AP-")} == {
        "AP-rectangle",
        "AP-ellipse",
        "AP-triangle",
    }


def test_the_example_coco_folder_keeps_its_ids_grey_images_and_split_numbering(tmp_path):
    """tools/make_coco_example.py's folder, written by the shapes generator: 4 train + 2 val
    images numbered on across the splits (ids 1-4 and 5-6, files 000000-000005), categories
    exactly rectangle = 3 and ellipse = 7 (no triangle drawn), every third image (000002,
    000005) 8-bit grey and the others RGB, and each box inside its image. Fails if the splits
    restart their numbering (two images of one file name), if classes get contiguous ids or a
    triangle slips in, or if the wrong images are made grey."""
    paths = write_coco_example(tmp_path, 4, 2, size=(64, 96))
    train = json.loads(open(paths["train_json"]).read())
    val = json.loads(open(paths["val_json"]).read())
    assert [i["id"] for i in train["images"]] == [1, 2, 3, 4]
    assert [i["id"] for i in val["images"]] == [5, 6]
    for coco in (train, val):
        assert [(c["id"], c["name"]) for c in coco["categories"]] == [
            (3, "rectangle"),
            (7, "ellipse"),
        ]
        sizes = {i["id"]: (i["width"], i["height"]) for i in coco["images"]}
        for a in coco["annotations"]:
            x, y, w, h = a["bbox"]
            assert a["category_id"] in (3, 7) and a["image_id"] in sizes
            assert x >= 0 and y >= 0 and x + w <= sizes[a["image_id"]][0]
            assert y + h <= sizes[a["image_id"]][1]
    used = {a["category_id"] for coco in (train, val) for a in coco["annotations"]}
    assert used == {3, 7}
    for image in train["images"] + val["images"]:
        with Image.open(f"{paths['image_root']}/{image['file_name']}") as im:
            assert im.size == (image["width"], image["height"])
            assert im.mode == ("L" if image["id"] % 3 == 0 else "RGB"), image["file_name"]
    assert [i["file_name"] for i in val["images"]] == ["000004.png", "000005.png"]


def test_unknown_categories_are_refused_naming_the_shapes(tmp_path):
    with pytest.raises(ValueError, match=r"\['circle'\] are not shapes"):
        shapes.write_shapes_coco(tmp_path, [("x", 1)], 0, categories={"circle": 1})
