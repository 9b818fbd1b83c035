# ATSS, R-101-FPN with DCNv2 in res3-res5 and the head towers, 2x, multi-scale training
# (published figure: configs/README.md).
from ..common.models.backbones import use_backbone
from .atss_R_101_FPN_2x_ms import dataloader, lr_multiplier, model, optimizer, test, train

use_backbone(model, train, "R-101", dcn=True)

train.output_dir = "./output/COCO/atss_dcnv2_R_101_FPN_2x_ms"
