"""Tree-crown datasets from deepforest's offline data: conversion, splits, cache, registration,
input validation."""

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import Boxes, BoxMode, Instances
from PIL import Image

from atss.data import cache as cache_mod
from atss.data import treecrowns as tc
from atss.data.voc import read_voc_folder
from tests.data.annotation_files import write_voc


@pytest.fixture(autouse=True)
def _forget_tree_crown_registrations():
    """The tests here register the tree-crown names on their own caches and sources (temporary
    folders); unregister them after each test, so that later tests (the make-demo job, the
    entry points) register the real ones lazily instead of reading a deleted folder."""
    yield
    for split in tc.TREECROWNS_SPLITS:
        if split in DatasetCatalog.list():
            DatasetCatalog.remove(split)
            MetadataCatalog.remove(split)


@pytest.fixture(scope="module")
def real_cache(tmp_path_factory):
    """The default split of the real data, built once into a temporary cache root."""
    root = tmp_path_factory.mktemp("treecrowns")
    folder = tc.build_treecrowns_cache(root)
    return root, folder


def _coco(folder, split):
    return json.loads((folder / f"{split}.json").read_text())


# --- the source data --------------------------------------------------------------------------


def test_deepforest_ships_4_annotated_images_with_951_boxes_from_3_sites():
    images = read_voc_folder(tc.deepforest_data_dir())
    assert [i.name for i in images] == [
        "2019_YELL_2_528000_4978000_image_crop2",
        "2019_YELL_2_541000_4977000_image_crop",
        "OSBS_029",
        "SOAP_061",
    ]
    assert sum(len(i.boxes) for i in images) == 951
    assert [tc._site_of(i.name) for i in images] == ["YELL", "YELL", "OSBS", "SOAP"]
    assert {lb for i in images for lb in i.labels} == {"Tree", "Dead", "Alive"}


def test_missing_deepforest_raises_error_naming_package_and_fix(monkeypatch):
    real = tc.importlib.util.find_spec
    monkeypatch.setattr(
        tc.importlib.util, "find_spec", lambda n, *a: None if n == "deepforest" else real(n, *a)
    )
    with pytest.raises(ModuleNotFoundError, match=r"deepforest.*pip install --no-deps deepforest"):
        tc.deepforest_data_dir()


# --- splits -------------------------------------------------------------------------------------


def test_spatial_split_reproduces_reference_counts(real_cache):
    """65 training tiles / 730 boxes, 4 validation crops / 293 boxes (tile 320, stride 240)."""
    _, folder = real_cache
    splits = json.loads((folder / "manifest.json").read_text())["splits"]
    assert splits["treecrowns_train"] == {"images": 65, "boxes": 730}
    assert splits["treecrowns_val"] == {"images": 4, "boxes": 293}
    assert splits["treecrowns_xsite_train"] == {"images": 93, "boxes": 1128}
    assert splits["treecrowns_xsite_val"] == {"images": 2, "boxes": 98}


def test_spatial_split_every_site_in_both_sets_and_no_pixel_in_both(real_cache):
    _, folder = real_cache
    train, val = _coco(folder, "treecrowns_train"), _coco(folder, "treecrowns_val")
    assert (
        {i["site"] for i in train["images"]}
        == {i["site"] for i in val["images"]}
        == {
            "YELL",
            "OSBS",
            "SOAP",
        }
    )
    val_x0 = {}
    for im in val["images"]:
        x0, y0, x1, y1 = im["window_xyxy"]
        # One crop per image: its right quarter, full height.
        assert im["source_image"] not in val_x0
        val_x0[im["source_image"]] = x0
        assert y0 == 0 and x1 - x0 == math.ceil(x1 * 0.25)
    for im in train["images"]:
        x0, y0, x1, y1 = im["window_xyxy"]
        assert x1 <= val_x0[im["source_image"]]
        assert (x1 - x0, y1 - y0) in {(320, 320), (300, 320)}  # 400x400 images: 300 px left


def test_all_boxes_lie_inside_their_image_and_have_positive_size(real_cache):
    _, folder = real_cache
    for split in tc.TREECROWNS_SPLITS:
        coco = _coco(folder, split)
        sizes = {i["id"]: (i["width"], i["height"]) for i in coco["images"]}
        for a in coco["annotations"]:
            x, y, w, h = a["bbox"]
            iw, ih = sizes[a["image_id"]]
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= iw and y + h <= ih, a
            assert a["category_id"] == 1 and a["area"] == pytest.approx(w * h)


def test_crop_pixels_equal_the_source_window(real_cache):
    _, folder = real_cache
    val = _coco(folder, "treecrowns_val")
    im = next(i for i in val["images"] if i["source_image"] == "SOAP_061.png")
    x0, y0, x1, y1 = im["window_xyxy"]
    src = np.asarray(Image.open(tc.deepforest_data_dir() / "SOAP_061.png").convert("RGB"))
    crop = np.asarray(Image.open(folder / "images" / im["file_name"]))
    np.testing.assert_array_equal(crop, src[y0:y1, x0:x1])


def test_cross_site_split_trains_on_yell_and_validates_on_osbs_and_soap(real_cache):
    _, folder = real_cache
    train = _coco(folder, "treecrowns_xsite_train")
    val = _coco(folder, "treecrowns_xsite_val")
    assert {i["site"] for i in train["images"]} == {"YELL"}
    assert sorted(i["source_image"] for i in val["images"]) == ["OSBS_029.tif", "SOAP_061.png"]
    assert all(i["window_xyxy"] == [0, 0, 400, 400] for i in val["images"])
    assert len(val["annotations"]) == 61 + 37


# --- cache --------------------------------------------------------------------------------------


def test_cache_is_reused_and_keyed_on_split_parameters(real_cache):
    root, folder = real_cache
    stamp = (folder / "manifest.json").stat().st_mtime_ns
    assert tc.build_treecrowns_cache(root) == folder
    assert (folder / "manifest.json").stat().st_mtime_ns == stamp  # not rebuilt
    images = read_voc_folder(tc.deepforest_data_dir())
    other = tc._cache_dir(root, images, tc.TreeCrownSplitParams(stride=256))
    assert other != folder and other.parent == folder.parent
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".tmp")]


def test_cache_is_rebuilt_when_a_source_file_changes(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    write_voc(src, "2019_YELL_a", [[1, 1, 20, 20], [30, 10, 60, 40]])
    first = tc.build_treecrowns_cache(tmp_path / "cache", src)
    write_voc(src, "2019_YELL_a", [[1, 1, 20, 20]])
    second = tc.build_treecrowns_cache(tmp_path / "cache", src)
    assert first != second and (first / "manifest.json").exists()
    assert json.loads((second / "treecrowns_xsite_train.json").read_text())["annotations"]


def test_default_cache_root_is_env_var_else_the_user_cache_never_the_checkout(monkeypatch):
    """$ATSS_CACHE wins; else $XDG_CACHE_HOME/atss, else ~/.cache/atss. Fails if the default is
    the checkout's .cache/ again (a run must not write into the source tree)."""
    monkeypatch.setenv("ATSS_CACHE", "/some/where")
    assert cache_mod.default_cache_root() == Path("/some/where")
    monkeypatch.delenv("ATSS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", "/user/cache")
    assert cache_mod.default_cache_root() == Path("/user/cache/atss")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", "/home/someone")
    assert cache_mod.default_cache_root() == Path("/home/someone/.cache/atss")


def test_failed_build_publishes_nothing(tmp_path):
    def boom(folder):
        (folder / "partial.json").write_text("{")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        cache_mod.build_dir_atomically(tmp_path / "key", boom)
    assert list(tmp_path.iterdir()) == []


# --- registration -------------------------------------------------------------------------------


def test_register_all_is_idempotent_and_sets_coco_metadata(real_cache):
    root, folder = real_cache
    assert tc.register_all_treecrowns(root) == list(tc.TREECROWNS_SPLITS)
    assert tc.register_all_treecrowns(root) == list(tc.TREECROWNS_SPLITS)
    for split in tc.TREECROWNS_SPLITS:
        meta = MetadataCatalog.get(split)
        assert meta.thing_classes == ["tree"] and meta.evaluator_type == "coco"
        assert Path(meta.json_file) == folder / f"{split}.json" and Path(meta.json_file).is_file()
    dicts = DatasetCatalog.get("treecrowns_val")
    assert len(dicts) == 4 and sum(len(d["annotations"]) for d in dicts) == 293
    assert all(os.path.isfile(d["file_name"]) for d in dicts)
    assert {a["category_id"] for d in dicts for a in d["annotations"]} == {0}


def test_coco_evaluator_scores_ground_truth_as_predictions_100_ap(real_cache):
    """The registered metadata (json_file, id map) is what COCOEvaluator needs; the largest
    validation crop has 208 trees, so maxDets must be raised above COCO's 100."""
    root, _ = real_cache
    tc.register_all_treecrowns(root)
    evaluator = COCOEvaluator(
        "treecrowns_val",
        tasks=("bbox",),
        output_dir=None,
        max_dets_per_image=tc.TREECROWNS_MAX_DETS_PER_IMAGE,
    )
    evaluator.reset()
    for d in DatasetCatalog.get("treecrowns_val"):
        boxes = [
            BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in d["annotations"]
        ]
        inst = Instances((d["height"], d["width"]))
        inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        inst.scores = torch.ones(len(boxes))
        inst.pred_classes = torch.zeros(len(boxes), dtype=torch.int64)
        evaluator.process([{"image_id": d["image_id"]}], [{"instances": inst}])
    assert evaluator.evaluate()["bbox"]["AP"] == pytest.approx(100.0)


def test_lazy_registration_builds_the_json_on_first_use(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    write_voc(src, "2019_YELL_a", [[1, 1, 20, 20], [30, 10, 60, 40]])
    write_voc(src, "OSBS_029", [[5, 5, 25, 25]], size=(40, 40))
    tc.register_all_treecrowns(tmp_path / "cache", src, build=False)
    json_file = Path(MetadataCatalog.get("treecrowns_xsite_val").json_file)
    assert not json_file.exists()
    dicts = DatasetCatalog.get("treecrowns_xsite_val")
    assert json_file.is_file() and len(dicts) == 1 and len(dicts[0]["annotations"]) == 1


def test_source_changed_after_lazy_registration_is_a_clear_error(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    write_voc(src, "2019_YELL_a", [[1, 1, 20, 20]])
    tc.register_all_treecrowns(tmp_path / "cache", src, build=False)
    write_voc(src, "2019_YELL_a", [[1, 1, 30, 20]])
    with pytest.raises(RuntimeError, match="changed since treecrowns_train was registered"):
        DatasetCatalog.get("treecrowns_train")
