"""A run folder's config stands alone: classes.json beside config.yaml gives the class count
and the class list when the training data are gone (atss.engine.run_folder, load_config), and
the export's model.json says what its user must apply (atss.export.export_info)."""

import json
import os
import shutil

import pytest
from detectron2.config import LazyConfig

from atss.data import DatasetError
from atss.engine.config import load_config
from atss.engine.overrides import ConfigError
from atss.engine.run_folder import (
    model_classes,
    read_run_classes,
    run_arguments,
    write_run_classes,
)
from atss.export import export_info, resize_of_test_loader
from tests.atss_testing import coco_json_overrides, write_coco_example

CONFIG = "configs/Custom/atss_MNV2_FPN_coco_json.py"
# write_coco_example's categories: rectangles are id 3, ellipses id 7.
EXAMPLE_CLASSES = [{"id": 3, "name": "rectangle"}, {"id": 7, "name": "ellipse"}]


@pytest.fixture
def run(tmp_path):
    """A run folder as training leaves it (config.yaml as default_setup saves it, classes.json)
    whose training data were then deleted; returns (folder, a second dataset's paths)."""
    data = write_coco_example(str(tmp_path / "data"), 2, 1, size=(64, 96))
    other = write_coco_example(str(tmp_path / "other"), 1, 2, size=(64, 96), seed=1)
    cfg = load_config(CONFIG, coco_json_overrides(data), data_splits=("train", "test"))
    folder = str(tmp_path / "run")
    os.makedirs(folder)
    LazyConfig.save(cfg, os.path.join(folder, "config.yaml"))
    write_run_classes(cfg, folder)
    shutil.rmtree(tmp_path / "data")
    return folder, other


def test_training_writes_the_json_category_ids_and_names(run):
    """classes.json holds the train JSON's ids and names in output order. Fails if the class
    index is written as id, or the names are lost."""
    folder, _ = run
    with open(os.path.join(folder, "classes.json")) as f:
        assert json.load(f) == {"classes": EXAMPLE_CLASSES}
    assert read_run_classes(folder) == [(3, "rectangle"), (7, "ellipse")]


def test_a_run_config_loads_without_the_training_data(run):
    """load_config of RUN/config.yaml for demo/export (no split needed) after the data are
    deleted: the 2 classes of classes.json, the train split not read. Fails if load_config
    still checks dataset.train (it stops with 'dataset.train.json_file=...: no such file')."""
    folder, _ = run
    cfg = load_config(os.path.join(folder, "config.yaml"))
    assert cfg.model.num_classes == 2
    assert cfg.dataset.train.json_file == ""
    assert model_classes(cfg, os.path.join(folder, "config.yaml")) == [
        (3, "rectangle"),
        (7, "ellipse"),
    ]


def test_a_run_config_evaluates_another_dataset_with_the_same_categories(run, tmp_path):
    """--eval-only's load (test split required) on another dataset registers custom_test with
    the JSON's id map; a test JSON whose categories differ from classes.json is refused, naming
    classes.json. Fails if the check against the run's classes is dropped."""
    folder, other = run
    config = os.path.join(folder, "config.yaml")
    test = [f"dataset.test.json_file={other['val_json']}"]
    test.append(f"dataset.test.image_root={other['image_root']}")
    cfg = load_config(config, test, data_splits=("test",))
    assert cfg.model.num_classes == 2
    with open(other["val_json"]) as f:
        data = json.load(f)
    data["categories"][0]["id"] = 4  # another id for 'rectangle'
    for annotation in data["annotations"]:
        annotation["category_id"] = 4 if annotation["category_id"] == 3 else 7
    renamed = str(tmp_path / "renamed.json")
    with open(renamed, "w") as f:
        json.dump(data, f)
    with pytest.raises(DatasetError, match="classes.json"):
        load_config(config, [f"dataset.test.json_file={renamed}", test[1]], data_splits=("test",))


def test_training_from_a_run_config_still_needs_its_data(run):
    """Training (train split required) does not use classes.json: the deleted train JSON is
    reported by its path. Fails if the run's config drops dataset.train for training too (then
    'give dataset.train.json_file=PATH')."""
    folder, _ = run
    with pytest.raises(DatasetError, match=r"dataset\.train\.json_file=\S+train\.json: no such"):
        load_config(os.path.join(folder, "config.yaml"), data_splits=("train", "test"))


def test_run_argument_expands_to_the_config_and_the_weights(tmp_path):
    """--run RUN is --config-file RUN/config.yaml train.init_checkpoint=RUN/model_final.pth;
    a folder without them is a usage error."""
    with pytest.raises(ConfigError, match="config.yaml"):
        run_arguments(str(tmp_path))
    for name in ("config.yaml", "model_final.pth"):
        (tmp_path / name).write_text("")
    config, opts = run_arguments(str(tmp_path), ["a.b=1"])
    assert config == str(tmp_path / "config.yaml")
    assert opts == [f"train.init_checkpoint={tmp_path / 'model_final.pth'}", "a.b=1"]
    assert run_arguments(str(tmp_path), [], with_weights=False)[1] == []


def test_export_info_names_the_resize_channels_and_classes():
    """model.json's content for the Custom config: its test resize (512, 853), RGB, 0-255 and
    the user's ids; a drawn short edge is refused (a user could not reproduce it). Fails if
    the resize is read from the train loader or the ids are the class indices."""
    cfg = LazyConfig.load(CONFIG)
    assert resize_of_test_loader(cfg) == {"short_edge": 512, "max_size": 853}
    info = export_info("out/model.onnx", "RGB", resize_of_test_loader(cfg), [(3, "a"), (7, "b")], 2,
                       ["pred_boxes0"], ["image0"])  # fmt: skip
    assert info["model"] == "model.onnx" and info["input_names"] == ["image0"]
    assert info["pixel_range"] == [0, 255] and info["input_format"] == "RGB"
    assert info["classes"] == [{"id": 3, "name": "a"}, {"id": 7, "name": "b"}]
    assert [c["id"] for c in export_info("m", "BGR", None, None, 2, [], [])["classes"]] == [0, 1]
    cfg.dataloader.test.mapper.augmentations[0].short_edge_length = [96, 128]
    with pytest.raises(ValueError, match="short edge"):
        resize_of_test_loader(cfg)


def test_a_registered_dataset_gives_its_classes_with_its_ids(tmp_path):
    """For a config without a dataset node (COCO), classes.json holds the registered dataset's
    thing_classes with its own ids: 80 classes, person = 1, toothbrush = 90 (COCO's ids have
    gaps). Fails if the contiguous index is written as the id."""
    cfg = LazyConfig.load("configs/COCO/atss_R_50_FPN_1x.py")
    write_run_classes(cfg, str(tmp_path))
    classes = read_run_classes(str(tmp_path))
    assert len(classes) == 80
    assert classes[0] == (1, "person") and classes[-1] == (90, "toothbrush")
