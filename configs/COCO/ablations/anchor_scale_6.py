# Ablation (paper: anchor scale 5..9, R-50 1x): one square anchor of side 6 x stride per location
# (the base config uses 8).
from ..atss_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, test, train

model.anchor_generator.sizes = [[6 * s] for s in model.anchor_generator.strides]

train.output_dir = "./output/COCO/ablations/anchor_scale_6"
