"""atss.engine.predictor's class list: model_classes, the one answer to "which ids and names do the
model's outputs stand for" (the demo, classes.json, model.json), and write_run_classes; the
predictor's precision."""

import json

import numpy as np
import pytest
import torch
from detectron2.config import LazyConfig
from detectron2.data import DatasetCatalog, MetadataCatalog
from omegaconf import OmegaConf

from atss.engine.config import load_config
from atss.engine.predictor import ATSSPredictor, model_classes, write_run_classes
from tests.atss_testing import (
    coco_json_overrides,
    record_head_dtypes,
    write_coco_example,
    write_tiny_config,
)

CUSTOM_CONFIG = "configs/Custom/atss_MNV2_FPN_coco_json.py"


def test_training_writes_the_json_category_ids_and_names(tmp_path):
    """classes.json of a Custom config holds the train JSON's ids and names in output order
    (write_coco_example: rectangles are id 3, ellipses id 7), and a config beside it answers
    with them. Fails if the class index is written as id, or the names are lost."""
    data = write_coco_example(str(tmp_path / "data"), 2, 1, size=(64, 96))
    cfg = load_config(CUSTOM_CONFIG, coco_json_overrides(data), data_splits=("train", "test"))
    write_run_classes(cfg, str(tmp_path / "run"))
    written = json.loads((tmp_path / "run" / "classes.json").read_text())
    assert written == {"classes": [{"id": 3, "name": "rectangle"}, {"id": 7, "name": "ellipse"}]}
    assert model_classes(cfg, str(tmp_path / "run" / "config.yaml")) == [
        (3, "rectangle"),
        (7, "ellipse"),
    ]


def test_a_registered_dataset_gives_its_classes_with_its_ids(tmp_path):
    """For a config without a dataset node (COCO), classes.json holds the registered dataset's
    thing_classes with its own ids: 80 classes, person = 1, toothbrush = 90 (COCO's ids have
    gaps). Fails if the contiguous index is written as the id."""
    cfg = LazyConfig.load("configs/COCO/atss_R_50_FPN_1x.py")
    write_run_classes(cfg, str(tmp_path))
    classes = [
        (c["id"], c["name"]) for c in json.loads((tmp_path / "classes.json").read_text())["classes"]
    ]
    assert len(classes) == 80
    assert classes[0] == (1, "person") and classes[-1] == (90, "toothbrush")


def test_the_run_comes_first_then_a_dataset_of_the_models_class_count(tmp_path):
    """The run's classes.json beside the config wins over the config's datasets; among the
    datasets the first with model.num_classes classes answers, with the class index as id
    where it has no id map; none of that count: None (the callers then show indices). Fails if
    the run's list is not preferred (a fine-tuned model would be named by its training data's
    classes) or a dataset of another class count names the model's outputs."""
    DatasetCatalog.register("classes_test_two", list)
    MetadataCatalog.get("classes_test_two").set(thing_classes=["oak", "pine"])
    cfg = OmegaConf.create(
        {
            "model": {"num_classes": 2},
            "dataloader": {
                "train": {"dataset": {"names": "shapes_train"}},  # 3 classes: skipped
                "test": {"dataset": {"names": ["classes_test_two"]}},
            },
        }
    )
    assert model_classes(cfg) == [(0, "oak"), (1, "pine")]
    (tmp_path / "classes.json").write_text(json.dumps({"classes": [{"id": 5, "name": "elm"}]}))
    assert model_classes(cfg, str(tmp_path / "config.yaml")) == [(5, "elm")]
    cfg.model.num_classes = 4
    assert model_classes(cfg) is None


@pytest.mark.parametrize("amp", [[], ["train.amp.enabled=True", "train.amp.precision=bf16"]])
def test_the_predictor_follows_the_precision_switch_on_whole_images_and_tiles(tmp_path, amp):
    """ATSSPredictor (demo.py's) runs the network in the precision of train.amp, on a whole
    image and on each of its tiles, and answers fp32 boxes and scores. Fails if the switch is
    ignored at inference, or lost when the predictor is tiled."""
    config = write_tiny_config(tmp_path / "tiny.py", 160, 1333, "model.test_score_thresh = 0.001")
    predictor = ATSSPredictor(load_config(str(config), amp), random_weights=True)
    head = record_head_dtypes(predictor.model)
    image = np.random.default_rng(0).integers(0, 256, (136, 168, 3), dtype=np.uint8)
    whole = predictor(image)
    predictor.tile(96, 16)
    tiled = predictor(image)
    expected = torch.bfloat16 if amp else torch.float32
    assert len(head) > 2 and all(dtypes == {expected} for dtypes in head), head
    for instances in (whole, tiled):
        assert len(instances) > 0
        assert instances.scores.dtype == instances.pred_boxes.tensor.dtype == torch.float32
