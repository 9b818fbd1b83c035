# Ablation (paper: box vs point regression, R-50 1x): POINT coding (anchor-free: l, t, r, b / stride
# from the anchor centre) with SSC assignment (FCOS-style).
from ..atss_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, test, train

model.box_coding = "POINT"
model.assigner.mode = "SSC"

train.output_dir = "./output/COCO/ablations/point_SSC"
