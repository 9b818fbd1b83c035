# Ablation (paper: anchor aspect ratio, R-50 1x): one anchor per location of area (8 x stride)^2
# with height:width = 1:2 (Detectron2's aspect_ratio = height / width = 0.5).
from ..atss_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, test, train

model.anchor_generator.aspect_ratios = [0.5]

train.output_dir = "./output/COCO/ablations/anchor_ratio_1to2"
