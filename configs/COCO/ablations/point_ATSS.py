# Ablation (paper: box vs point regression, R-50 1x): POINT coding (anchor-free: l, t, r, b / stride
# from the anchor centre) with ATSS assignment: "FCOS + ATSS".
from ..atss_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, test, train

model.box_coding = "POINT"
model.assigner.mode = "ATSS"

train.output_dir = "./output/COCO/ablations/point_ATSS"
