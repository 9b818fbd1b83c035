"""Datasets given on the command line (atss.data.config_datasets): paths, categories, class count,
registration, and the two configs/Custom configs."""

import json
import os

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog

from atss.data import DatasetError, get_checked_detection_dataset_dicts
from atss.data.config_datasets import (
    CUSTOM_TEST,
    CUSTOM_TRAIN,
    register_datasets_from_config,
)
from tests.atss_testing import coco_json_overrides, write_coco_example

MNV2 = "configs/Custom/atss_MNV2_FPN_coco_json.py"
R50 = "configs/Custom/atss_R_50_FPN_1x_coco_json.py"


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """6 train + 3 val images, categories {3: rectangle, 7: ellipse}."""
    return write_coco_example(str(tmp_path_factory.mktemp("coco")), 6, 3, size=(64, 96))


def data_opts(paths, train_json=None, test_json=None):
    return coco_json_overrides(paths, train_json, test_json)


def val_json_with_categories(paths, folder, categories):
    """A copy of the example's val JSON in ``folder`` with ``categories`` ({id: name})."""
    with open(paths["val_json"]) as f:
        coco = json.load(f)
    coco["categories"] = [{"id": i, "name": name} for i, name in categories.items()]
    path = folder / "val_other_categories.json"
    path.write_text(json.dumps(coco))
    return path


def load(config, opts):
    return LazyConfig.apply_overrides(LazyConfig.load(config), opts)


def test_registers_both_splits_with_the_json_classes(example):
    """Class names and count come from the train JSON; the sparse ids 3 and 7 become classes
    0 and 1 in the loaded records (oracle: the JSON read here). Fails if the class count is
    taken from the largest id (8), if ids are used as labels (id - 1), or if the datasets are
    not registered under the names the configs' loaders use."""
    cfg = load(MNV2, data_opts(example))
    names = register_datasets_from_config(cfg)
    assert names == [CUSTOM_TRAIN, CUSTOM_TEST]
    assert cfg.dataloader.train.dataset.names == CUSTOM_TRAIN
    assert cfg.dataloader.test.dataset.names == CUSTOM_TEST
    assert cfg.model.num_classes == 2 and cfg.model.head.num_classes == 2
    assert MetadataCatalog.get(CUSTOM_TRAIN).thing_classes == ["rectangle", "ellipse"]
    with open(example["train_json"]) as f:
        coco = json.load(f)
    expected = sorted(
        (a["image_id"], tuple(a["bbox"]), {3: 0, 7: 1}[a["category_id"]])
        for a in coco["annotations"]
    )
    records = DatasetCatalog.get(CUSTOM_TRAIN)
    got = sorted(
        (r["image_id"], tuple(a["bbox"]), a["category_id"])
        for r in records
        for a in r["annotations"]
    )
    assert got == expected


def test_grey_png_loads_as_three_channels(example):
    """An 8-bit grey PNG (every third example image) goes through the checked loader and mapper
    as a (3, H, W) image. Fails if grey images are passed on with one channel."""
    cfg = load(MNV2, data_opts(example))
    register_datasets_from_config(cfg)
    dicts = get_checked_detection_dataset_dicts(CUSTOM_TRAIN)
    record = next(d for d in dicts if d["file_name"].endswith("000002.png"))
    from PIL import Image

    assert Image.open(record["file_name"]).mode == "L"
    mapper = instantiate(cfg.dataloader.test.mapper)
    image = mapper(record)["image"]
    assert image.shape[0] == 3 and torch.equal(image[0], image[1])


def test_given_num_classes_is_kept_and_too_small_is_an_error(example):
    """``model.num_classes`` given on the command line wins (larger than the data: allowed);
    smaller than the data's category count is an error naming the key. Fails if the data
    silently overwrite the user's value or if a too small value is accepted."""
    cfg = load(MNV2, data_opts(example) + ["model.num_classes=5"])
    register_datasets_from_config(cfg)
    assert cfg.model.num_classes == 5 and cfg.model.head.num_classes == 5
    cfg = load(MNV2, data_opts(example) + ["model.num_classes=1"])
    with pytest.raises(DatasetError, match="model.num_classes=1"):
        register_datasets_from_config(cfg)


def test_test_categories_differing_from_train_is_an_error(example, tmp_path):
    """A test JSON whose categories differ (a renamed class, same ids) fails before anything
    is trained, naming both files and the differing (id, name). Fails if only the count or
    only the ids are compared, or if the test categories are not checked."""
    other = val_json_with_categories(example, tmp_path, {3: "rectangle", 7: "circle"})
    cfg = load(MNV2, data_opts(example, test_json=str(other)))
    with pytest.raises(DatasetError) as e:
        register_datasets_from_config(cfg)
    message = str(e.value)
    assert str(other) in message and example["train_json"] in message
    assert "(7, 'circle')" in message and "(7, 'ellipse')" in message


def _write_json(path, categories, boxes=()):
    """A COCO JSON with one 100 x 80 image per ``(category_id, [x, y, w, h])`` of ``boxes``."""
    data = {"images": [], "annotations": [], "categories": categories}
    for i, (category_id, bbox) in enumerate(boxes, start=1):
        data["images"].append({"id": i, "file_name": f"{i}.png", "height": 80, "width": 100})
        data["annotations"].append(
            {
                "id": i,
                "image_id": i,
                "category_id": category_id,
                "bbox": bbox,
                "area": bbox[2] * bbox[3],
                "iscrowd": 0,
            }
        )
    path.write_text(json.dumps(data))
    return str(path)


def test_categories_in_any_order_map_to_classes_and_back_to_the_json_ids(tmp_path):
    """Train JSON lists the categories 7, 12, 3 and the test JSON 12, 3, 7 (the same set):
    accepted; the classes are birch, spruce, oak (ids 3, 7, 12 -> 0, 1, 2, by hand); the test
    records carry those contiguous ids; and COCOEvaluator, given one exact detection per test
    box with its contiguous class, writes the JSON ids 7, 12, 3 back and scores AP 100 for each
    class. Fails if the categories are compared in file order (an error here), if the classes
    follow the file order (they would disagree with load_coco_json's) or if predictions are
    not mapped back to the JSON's ids."""
    from detectron2.evaluation import COCOEvaluator
    from detectron2.structures import Boxes, Instances

    def cats(*ids):
        return [{"id": i, "name": {3: "birch", 7: "spruce", 12: "oak"}[i]} for i in ids]

    boxes = [(7, [10, 10, 30, 20]), (12, [50, 20, 20, 40]), (3, [0, 0, 15, 15])]
    train = _write_json(tmp_path / "train.json", cats(7, 12, 3), boxes)
    test = _write_json(tmp_path / "test.json", cats(12, 3, 7), boxes)
    paths = {"train_json": train, "val_json": test, "image_root": str(tmp_path)}
    cfg = load(MNV2, data_opts(paths))
    register_datasets_from_config(cfg)
    assert MetadataCatalog.get(CUSTOM_TEST).thing_classes == ["birch", "spruce", "oak"]
    records = DatasetCatalog.get(CUSTOM_TEST)  # as the test loader does before inference
    assert [r["annotations"][0]["category_id"] for r in records] == [1, 2, 0]

    evaluator = COCOEvaluator(CUSTOM_TEST, tasks=("bbox",), output_dir=str(tmp_path / "out"))
    evaluator.reset()
    for image_id, (_, (x, y, w, h)), label in zip((1, 2, 3), boxes, (1, 2, 0)):
        inst = Instances((80, 100))
        inst.pred_boxes = Boxes(torch.tensor([[x, y, x + w, y + h]], dtype=torch.float32))
        inst.scores = torch.tensor([0.9])
        inst.pred_classes = torch.tensor([label])
        evaluator.process([{"image_id": image_id}], [{"instances": inst}])
    ap = evaluator.evaluate()["bbox"]
    with open(tmp_path / "out" / "coco_instances_results.json") as f:
        written = json.load(f)
    assert [(d["image_id"], d["category_id"]) for d in written] == [(1, 7), (2, 12), (3, 3)]
    assert (ap["AP-birch"], ap["AP-spruce"], ap["AP-oak"]) == (100.0, 100.0, 100.0)


@pytest.mark.parametrize(
    "key, value",
    [
        ("dataset.train.json_file", "/nonexistent/train.json"),
        ("dataset.train.image_root", "/nonexistent/images"),
        ("dataset.test.json_file", "/nonexistent/val.json"),
        ("dataset.test.image_root", "/nonexistent/val_images"),
    ],
)
def test_bad_path_names_the_key_and_the_path(example, key, value):
    """Each of the four keys pointing nowhere gives an error with ``key=path``. Fails if a
    path is not checked (Detectron2 would fail later with a bare FileNotFoundError) or the
    message names the wrong key."""
    cfg = load(MNV2, data_opts(example) + [f"{key}={value}"])
    with pytest.raises(DatasetError, match=f"{key}={value}"):
        register_datasets_from_config(cfg)


def test_missing_split_names_the_keys(example):
    """Training needs both splits, evaluation the test split, demo/export either one. Fails if
    a missing split is only noticed when the loader asks for an unregistered dataset."""
    train_only = load(MNV2, data_opts(example)[:2])
    with pytest.raises(DatasetError, match="dataset.test.json_file=PATH"):
        register_datasets_from_config(train_only)
    test_only = load(MNV2, data_opts(example)[2:])
    assert register_datasets_from_config(test_only, required=("test",)) == [CUSTOM_TEST]
    assert test_only.model.num_classes == 2  # from the test JSON when there is no train JSON
    with pytest.raises(DatasetError, match="dataset.train.json_file=PATH"):
        register_datasets_from_config(load(MNV2, []), required=())


def test_config_without_dataset_node_is_left_alone():
    """Configs that name registered datasets (tree crowns, shapes) are untouched."""
    cfg = LazyConfig.load("configs/Shapes/atss_tiny_shapes.py")
    before = LazyConfig.to_py(cfg)
    assert register_datasets_from_config(cfg) == []
    assert LazyConfig.to_py(cfg) == before


def test_reregistering_from_other_files_replaces_the_datasets(example, tmp_path):
    """Calling again (every process, every entry point) with the same files is a no-op; with
    other files the custom_* datasets follow the new config. Fails if a second call raises
    (Detectron2 refuses a name twice) or keeps serving the first dataset."""
    cfg = load(MNV2, data_opts(example))
    register_datasets_from_config(cfg)
    register_datasets_from_config(load(MNV2, data_opts(example)))
    other = write_coco_example(str(tmp_path), 2, 1, size=(64, 80), seed=5)
    register_datasets_from_config(load(MNV2, data_opts(other)))
    assert MetadataCatalog.get(CUSTOM_TRAIN).json_file == os.path.abspath(other["train_json"])
    assert len(DatasetCatalog.get(CUSTOM_TRAIN)) == 2


def test_r50_config_takes_the_class_count_from_the_data(example):
    """The GPU config composes the COCO recipe; its 80 classes are replaced by the data's."""
    cfg = load(R50, data_opts(example))
    register_datasets_from_config(cfg)
    assert cfg.model.num_classes == 2 and cfg.model.head.num_classes == 2
    assert cfg.optimizer.lr == 0.01 and cfg.dataloader.train.total_batch_size == 16


def test_mnv2_model_has_one_output_per_class(example):
    """The instantiated head predicts the data's 2 classes (the classifier's output channels)."""
    cfg = load(MNV2, data_opts(example) + ["model.backbone.pretrained=False"])
    register_datasets_from_config(cfg)
    model = instantiate(cfg.model)
    assert model.num_classes == 2 and model.head.cls_score.out_channels == 2  # 1 anchor


@pytest.fixture
def unregistered_custom():
    """custom_train / custom_test not registered (as in a fresh process), before and after."""

    def unregister():
        for name in (CUSTOM_TRAIN, CUSTOM_TEST):
            if name in DatasetCatalog.list():
                DatasetCatalog.remove(name)
                MetadataCatalog.remove(name)

    unregister()
    yield
    unregister()


def test_config_loaders_read_the_dataset_node_without_registration(example, unregistered_custom):
    """With only LazyConfig.load + overrides (Detectron2's tools), the test loader registers
    custom_test from dataset.test with the train JSON's classes, json_file and id map (what
    COCOEvaluator reads), and dataset.num_classes instantiates to the data's count. Fails if the
    loader does not register its split (the configs named custom_test and left registering it
    to our entry points), or if the class count is not read from the JSON (the placeholder was
    1)."""
    cfg = load(MNV2, data_opts(example))
    dicts = instantiate(cfg.dataloader.test.dataset)
    assert len(dicts) == 3
    meta = MetadataCatalog.get(CUSTOM_TEST)
    assert meta.thing_classes == ["rectangle", "ellipse"]
    assert meta.thing_dataset_id_to_contiguous_id == {3: 0, 7: 1}
    assert meta.json_file == os.path.abspath(example["val_json"])
    assert CUSTOM_TRAIN not in DatasetCatalog.list()  # each loader registers its own split
    assert instantiate(cfg.dataset.num_classes) == 2


def test_train_loader_refuses_a_test_json_with_other_categories(example, tmp_path):
    """The train loader checks the test JSON too, so Detectron2's lazyconfig_train_net (which
    builds the test loader only after training) stops before the first iteration. Fails if a
    loader checks only its own split."""
    other = val_json_with_categories(example, tmp_path, {3: "rectangle", 8: "ellipse"})
    cfg = load(MNV2, data_opts(example, test_json=str(other)))
    with pytest.raises(DatasetError, match=r"only in dataset.test.json_file=.*\(8, 'ellipse'\)"):
        instantiate(cfg.dataloader.train.dataset)


def test_config_loader_without_its_split_names_the_keys(example):
    """The test loader of a config given only the train split: an error naming the keys to
    give, not an empty path passed on to Detectron2."""
    cfg = load(MNV2, data_opts(example)[:2])
    with pytest.raises(DatasetError, match="give dataset.test.json_file=PATH"):
        instantiate(cfg.dataloader.test.dataset)
    with pytest.raises(DatasetError, match="give dataset.train.json_file=PATH"):
        instantiate(load(MNV2, []).dataset.num_classes)
