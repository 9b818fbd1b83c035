"""Validated dataset loading (atss/data/validation.py, atss/data/loading.py): every bad-data
case either fails early with a message naming the file, image id and field, or is
repaired/filtered and counted; and tools/validate_dataset.py, which reports it."""

import copy
import logging
import math

import numpy as np
import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from detectron2.utils.events import EventStorage
from hypothesis import given, settings
from hypothesis import strategies as st

from atss.data import CheckedDatasetMapper
from atss.data.loading import get_checked_detection_dataset_dicts
from atss.data.validation import (
    CLIPPED,
    CROWD,
    DROPPED_OUTSIDE,
    DROPPED_ZERO_SIZE,
    NO_ANNOTATIONS,
    DatasetError,
    validate_dataset_dicts,
)
from tests.atss_testing import load_script
from tests.data.annotation_files import H, W, annotation, coco_dataset, write_images

SHAPES_CONFIG = "configs/Shapes/atss_tiny_shapes.py"


def _boxes(dicts):
    return {d["image_id"]: [a["bbox"] for a in d["annotations"]] for d in dicts}


def test_a_clean_dataset_passes_unchanged_and_logs_nothing_to_repair(tmp_path, caplog):
    anns = [
        annotation(1, 10, [10, 10, 20, 30]),
        annotation(2, 11, [0, 0, W, H], 2),
        annotation(3, 12, [1, 2, 3, 4]),
    ]
    name, path = coco_dataset(tmp_path, anns)
    with caplog.at_level(logging.INFO, logger="atss.data.validation"):
        dicts = get_checked_detection_dataset_dicts(name, filter_empty=False)
    assert _boxes(dicts) == {10: [[10, 10, 20, 30]], 11: [[0, 0, W, H]], 12: [[1, 2, 3, 4]]}
    assert [a["category_id"] for d in dicts for a in d["annotations"]] == [0, 1, 0]
    # Only this module's records: other loggers (Detectron2's dataset loading) may reach the
    # capture too, depending on which tests configured logging before this one.
    ours = [r for r in caplog.records if r.name == "atss.data.validation"]
    assert [r.levelno for r in ours] == [logging.INFO]
    assert f"dataset '{name}' ({path}): 3 images, 3 boxes kept; nothing to repair." in caplog.text


def test_bad_boxes_are_repaired_or_dropped_and_each_kind_is_counted(tmp_path, caplog):
    anns = [
        annotation(1, 10, [10, 10, 20, 30]),  # fine
        annotation(2, 10, [5, 5, 0, 10]),  # zero width -> dropped
        annotation(3, 10, [5, 5, 10, -3]),  # negative height -> dropped
        annotation(4, 11, [-10.25, 80.125, 30.5, 40.3]),  # partly outside (left, bottom) -> clipped
        annotation(5, 11, [W + 5, 10, 10, 10]),  # wholly outside -> dropped
        annotation(6, 11, [20, 20, 40, 40], iscrowd=1),  # crowd -> kept, counted
        annotation(7, 12, [W, 0, 5, 5]),  # touches the right edge only: zero area inside -> dropped
    ]
    name, _ = coco_dataset(tmp_path, anns)
    with caplog.at_level(logging.INFO, logger="atss.data.validation"):
        dicts = get_checked_detection_dataset_dicts(name, filter_empty=False)
    # Clipped in float64 (no float32 round trip): exactly the image border.
    clipped = [0.0, 80.125, 20.25, 15.875]
    assert _boxes(dicts) == {10: [[10, 10, 20, 30]], 11: [clipped, [20, 20, 40, 40]], 12: []}
    assert [a.get("iscrowd") for a in dicts[1]["annotations"]] == [0, 1]
    summary = [r.message for r in caplog.records if r.levelno == logging.WARNING][0]
    for count, reason in [
        (2, DROPPED_ZERO_SIZE),
        (1, CLIPPED),
        (2, DROPPED_OUTSIDE),
        (1, CROWD),
        (1, NO_ANNOTATIONS),
    ]:
        assert f"{count} {reason}" in summary, reason
    assert "img0.png (image_id 10) annotation 1" in summary  # the first zero-size box
    # Training (filter_empty=True) drops the image left without boxes; Detectron2 logs that.
    train = get_checked_detection_dataset_dicts(name)
    assert [d["image_id"] for d in train] == [10, 11]


def test_a_crowd_only_image_is_kept_for_evaluation_and_removed_for_training(tmp_path):
    name, _ = coco_dataset(
        tmp_path, [annotation(1, 10, [1, 1, 9, 9]), annotation(2, 11, [5, 5, 9, 9], iscrowd=1)]
    )
    assert len(get_checked_detection_dataset_dicts(name, filter_empty=False)) == 3
    assert [d["image_id"] for d in get_checked_detection_dataset_dicts(name)] == [10]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_coordinate_fails_naming_file_image_id_and_field(tmp_path, bad):
    name, path = coco_dataset(
        tmp_path, [annotation(1, 10, [1, 1, 5, 5]), annotation(2, 11, [1, bad, 5, 5])]
    )
    with pytest.raises(DatasetError) as e:
        get_checked_detection_dataset_dicts(name)
    msg = str(e.value)
    assert all(s in msg for s in [name, path, "img1.png", "image_id 11", "annotation 0", "'bbox'"])
    assert "non-finite" in msg


def test_an_annotation_without_bbox_fails_naming_the_field(tmp_path):
    ann = annotation(1, 10, [1, 1, 5, 5])
    del ann["bbox"]  # pycocotools and Detectron2's loader accept this; the mapper would not
    name, _ = coco_dataset(tmp_path, [ann])
    with pytest.raises(DatasetError, match=r"img0\.png \(image_id 10\) annotation 0: field 'bbox'"):
        get_checked_detection_dataset_dicts(name)


def test_missing_image_files_fail_listing_how_many_and_which(tmp_path):
    name, _ = coco_dataset(tmp_path, [annotation(1, 10, [1, 1, 5, 5])])
    (tmp_path / "images" / "img0.png").unlink()
    (tmp_path / "images" / "img2.png").unlink()
    with pytest.raises(DatasetError) as e:
        get_checked_detection_dataset_dicts(name)
    msg = str(e.value)
    assert "2 of 3 image files are missing" in msg
    assert "img0.png (image_id 10)" in msg and "img2.png (image_id 12)" in msg
    assert "img1.png" not in msg
    # The check can be skipped (e.g. slow network file systems); the mapper still names the file.
    assert len(get_checked_detection_dataset_dicts(name, False, check_files=False)) == 3


def test_an_unregistered_or_empty_dataset_fails_by_name(tmp_path):
    with pytest.raises(DatasetError, match="'no_such_dataset' is not registered"):
        get_checked_detection_dataset_dicts("no_such_dataset")
    name, _ = coco_dataset(tmp_path, [], images=[])
    with pytest.raises(DatasetError, match=f"dataset '{name}' is empty"):
        get_checked_detection_dataset_dicts(name)


def test_dict_datasets_check_category_range_mode_and_image_size(tmp_path):
    write_images(tmp_path)
    record = {
        "file_name": str(tmp_path / "images" / "img0.png"),
        "image_id": 3,
        "height": H,
        "width": W,
        "annotations": [{"bbox": [1, 2, 5, 6], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0}],
    }
    out, report = validate_dataset_dicts([record], "custom", num_classes=1)
    assert out == [record] and report.boxes == 1 and not any(report.counts.values())
    bad_cases = [
        ({"category_id": 1}, "field 'category_id' is 1, but the dataset's thing_classes has 1"),
        ({"category_id": -1}, "field 'category_id' must be an int >= 0"),
        ({"bbox_mode": BoxMode.XYWHA_ABS}, "field 'bbox_mode'"),
        ({"bbox": np.array([1.0, 2.0, np.nan, 6.0])}, "non-finite coordinate"),
    ]
    for change, expected in bad_cases:
        bad = copy.deepcopy(record)
        bad["annotations"][0].update(change)
        with pytest.raises(DatasetError, match="custom: .*img0.png \\(image_id 3\\) annotation 0"):
            validate_dataset_dicts([bad], "custom", num_classes=1)
        with pytest.raises(DatasetError, match=expected.replace("(", "\\(")):
            validate_dataset_dicts([bad], "custom", num_classes=1)
    for key, value in [("height", 0), ("width", -5), ("height", float("nan"))]:
        bad = {**record, key: value}
        with pytest.raises(DatasetError, match=f"image_id 3\\): field '{key}' must be a positive"):
            validate_dataset_dicts([bad], "custom")


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(*[st.floats(-300, 300, allow_nan=False, width=32)] * 4), min_size=0, max_size=12
    ),
    st.sampled_from([BoxMode.XYXY_ABS, BoxMode.XYWH_ABS]),
)
def test_every_kept_box_lies_inside_the_image_with_positive_size(boxes, mode):
    record = {
        "file_name": "x.png",
        "image_id": 1,
        "height": H,
        "width": W,
        "annotations": [{"bbox": list(b), "bbox_mode": mode, "category_id": 0} for b in boxes],
    }
    before = copy.deepcopy(record)
    (out,), report = validate_dataset_dicts([record], "random", check_files=False)
    assert record == before  # the input is not modified
    dropped = report.counts[DROPPED_ZERO_SIZE] + report.counts[DROPPED_OUTSIDE]
    assert len(out["annotations"]) + dropped == len(boxes) == report.boxes + dropped
    for a in out["annotations"]:
        x0, y0, x1, y1 = BoxMode.convert(a["bbox"], mode, BoxMode.XYXY_ABS)
        assert 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H


# ------------------------------------------------------------------- configs and training
def test_project_configs_load_data_through_the_checked_loader_and_mapper():
    for path in [SHAPES_CONFIG, "configs/COCO/atss_R_50_FPN_1x.py",
                 "configs/TreeCrowns/atss_MNV2_FPN_treecrowns.py"]:  # fmt: skip
        cfg = LazyConfig.load(path)
        for split in (cfg.dataloader.train, cfg.dataloader.test):
            assert split.dataset._target_ is get_checked_detection_dataset_dicts, path
            assert split.mapper._target_ is CheckedDatasetMapper, path


def test_a_bad_dataset_stops_the_train_loader_before_training(tmp_path):
    name, _ = coco_dataset(tmp_path, [annotation(1, 10, [1, 1, 5, float("nan")])])
    cfg = LazyConfig.load(SHAPES_CONFIG)
    cfg.dataloader.train.dataset.names = name
    with pytest.raises(DatasetError, match="image_id 10"):
        instantiate(cfg.dataloader.train)


def test_a_messy_dataset_trains_with_finite_losses(tmp_path):
    """Zero-size, out-of-image, crowd boxes and an empty image (kept: filter_empty=False) go
    through the real loader and mapper into a training step without error or NaN."""
    anns = [
        annotation(1, 10, [10, 10, 40, 30]),
        annotation(2, 10, [5, 5, 0, 10]),
        annotation(3, 11, [-10, 60, 50, 80]),
        annotation(4, 11, [20, 20, 40, 40], iscrowd=1),
        annotation(5, 11, [W + 5, 10, 10, 10], 2),
    ]
    name, _ = coco_dataset(tmp_path, anns)
    MetadataCatalog.get(name)  # thing_classes set by the loader: tree, bush
    cfg = LazyConfig.load(SHAPES_CONFIG)
    cfg.dataloader.train.dataset.names = name
    cfg.dataloader.train.dataset.filter_empty = False
    cfg.dataloader.train.total_batch_size = 3
    cfg.dataloader.train.aspect_ratio_grouping = False
    cfg.model.num_classes = 2
    torch.manual_seed(0)
    model = instantiate(cfg.model).train()
    batch = next(iter(instantiate(cfg.dataloader.train)))
    assert sorted(len(x["instances"]) for x in batch) == [0, 1, 1]  # crowd not a target
    with EventStorage():
        losses = model(batch)
    assert all(math.isfinite(v.item()) for v in losses.values())
    sum(losses.values()).backward()
    DatasetCatalog.remove(name)


def test_find_unreadable_images_lists_every_bad_image(tmp_path):
    """tools/validate_dataset.py --decode: a file that is not an image and one of another size
    than its record each give a line naming the file and image id. Fails if the decoding stops
    at the first bad image or a size mismatch goes unnoticed."""
    entries = write_images(tmp_path)
    (tmp_path / "images" / "img0.png").write_bytes(b"junk")
    records = [
        {**e, "file_name": str(tmp_path / "images" / e["file_name"]), "image_id": e["id"]}
        for e in entries
    ]
    records[2]["width"] = W + 3
    problems = load_script("tools/validate_dataset.py").find_unreadable_images(records)
    assert len(problems) == 2
    assert "img0.png (image_id 10): UnidentifiedImageError" in problems[0]
    assert "img2.png (image_id 12): SizeMismatchError" in problems[1]


def test_validate_dataset_script_reports_repairs_and_fails_on_unusable_data(tmp_path, capsys):
    cli = load_script("tools/validate_dataset.py")

    anns = [annotation(1, 10, [1, 1, 5, 5]), annotation(2, 11, [-5, 1, 20, 5])]
    name, path = coco_dataset(tmp_path, anns)
    argv = ["--coco-json", path, "--image-root", str(tmp_path / "images"), "--decode"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "3 images read, 0 unusable" in out and out.endswith("OK\n")
    (tmp_path / "images" / "img1.png").write_bytes(b"junk")
    assert cli.main(argv) == 1
    out = capsys.readouterr().out
    assert "img1.png (image_id 11): UnidentifiedImageError" in out and out.endswith("FAILED\n")
    assert cli.main([name, "no_such_dataset"]) == 1
    assert "ERROR dataset 'no_such_dataset' is not registered" in capsys.readouterr().out
