# ATSS, ResNeXt-101-64x4d-FPN, 2x, multi-scale training (published figure: configs/README.md).
# No Detectron2-format ImageNet file exists: the authors' Caffe2 file through Detectron2's
# ModelCatalog (BGR, std 1); for the torchvision alternative see configs/README.md.
from ..common.models.backbones import use_backbone
from .atss_R_101_FPN_2x_ms import dataloader, lr_multiplier, model, optimizer, test, train

use_backbone(model, train, "X-101-64x4d")

train.output_dir = "./output/COCO/atss_X_101_64x4d_FPN_2x_ms"
