# ATSS, R-50-FPN, 1x (90k iterations at 16 images), single-scale training: the authors' reference
# recipe (its published figure: configs/README.md). MSRA R-50 weights, FrozenBN, stem + res2 frozen.
from atss.config import get_detectron2_config

from ..common.coco_data import dataloader
from ..common.models.atss import model
from ..common.optim import SGD as optimizer
from ..common.schedule import lr_multiplier_1x as lr_multiplier
from ..common.test import test  # TTA off (test.aug.enabled), no tiling, field metrics at 0.5

train = get_detectron2_config("common/train.py").train
train.max_iter = 90000
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
train.checkpointer.period = 5000
train.eval_period = 10000
train.output_dir = "./output/COCO/atss_R_50_FPN_1x"

model.backbone.bottom_up.freeze_at = 2
dataloader.train.total_batch_size = 16
