# ATSS, R-50-FPN with DCNv2 (modulated, 1 group) in res3-res5 and in the last conv of both head
# towers, 1x, single-scale training (published figure: configs/README.md).
from ..common.models.backbones import use_backbone
from .atss_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, test, train

use_backbone(model, train, "R-50", dcn=True)

train.output_dir = "./output/COCO/atss_dcnv2_R_50_FPN_1x"
