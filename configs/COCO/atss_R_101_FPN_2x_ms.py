# ATSS, R-101-FPN, 2x (180k iterations at 16 images, LR steps 120k/160k), multi-scale training:
# shorter side uniform in 640..800, longer side <= 1333. Published figure: configs/README.md.
from ..common.coco_data import MULTI_SCALE_AUGMENTATIONS
from ..common.models.backbones import use_backbone
from ..common.schedule import lr_multiplier_2x as lr_multiplier
from .atss_R_50_FPN_1x import dataloader, model, optimizer, test, train

use_backbone(model, train, "R-101")
dataloader.train.mapper.augmentations = MULTI_SCALE_AUGMENTATIONS
train.max_iter = 180000
train.output_dir = "./output/COCO/atss_R_101_FPN_2x_ms"
