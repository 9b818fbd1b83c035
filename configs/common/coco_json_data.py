# COCO-format data of one's own, named by the config itself: the paths are the `dataset` node,
# set on the command line (dataset.{train,test}.{json_file,image_root}=...), and the loaders and
# the class count read them when instantiated, so the config works under any tool that
# instantiates it (Detectron2's tools/lazyconfig_train_net.py included), with no registration
# step before (atss/data/config_datasets.py). The train loader also checks the test JSON: other
# categories than the train JSON's are refused before training starts.
from detectron2.config import LazyCall as L

from atss.data.config_datasets import (
    CUSTOM_TEST,
    CUSTOM_TRAIN,
    coco_json_num_classes,
    get_checked_coco_json_dicts,
)

dataset = dict(
    train=dict(json_file="", image_root=""),
    test=dict(json_file="", image_root=""),
    # The number of categories of the train JSON; our entry points replace it by the number.
    num_classes=L(coco_json_num_classes)(train="${..train}", test="${..test}"),
)
# Registered as custom_train / custom_test (the names the evaluator uses) when first loaded.
train_dataset = L(get_checked_coco_json_dicts)(
    names=CUSTOM_TRAIN, splits="${dataset}", split="train"
)
test_dataset = L(get_checked_coco_json_dicts)(
    names=CUSTOM_TEST, splits="${dataset}", split="test", filter_empty=False
)
