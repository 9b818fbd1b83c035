# ATSS, ResNeXt-101-64x4d-FPN with DCNv2 in res4-res5 and the head towers, 2x, multi-scale
# training: the authors' best single model (published figure: configs/README.md).
from ..common.models.backbones import use_backbone
from .atss_R_101_FPN_2x_ms import dataloader, lr_multiplier, model, optimizer, test, train

use_backbone(model, train, "X-101-64x4d", dcn=True)

train.output_dir = "./output/COCO/atss_dcnv2_X_101_64x4d_FPN_2x_ms"
