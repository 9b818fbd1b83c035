# ATSS, ResNeXt-101-32x8d-FPN, 2x, multi-scale training (published figure: configs/README.md).
# Detectron2's FAIR X-101-32x8d weights: BGR, std [57.375, 57.120, 58.395], stride in the 3x3 conv.
from ..common.models.backbones import use_backbone
from .atss_R_101_FPN_2x_ms import dataloader, lr_multiplier, model, optimizer, test, train

use_backbone(model, train, "X-101-32x8d")

train.output_dir = "./output/COCO/atss_X_101_32x8d_FPN_2x_ms"
