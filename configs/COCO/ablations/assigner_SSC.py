# Ablation (paper: the spatial and scale constraint of FCOS instead of ATSS, R-50 1x, BOX coding):
# anchor centre inside the GT and the GT's largest centre-to-side distance in the level's range.
from ..atss_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, test, train

model.assigner.mode = "SSC"

train.output_dir = "./output/COCO/ablations/assigner_SSC"
