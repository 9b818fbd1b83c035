# Ablation (paper: k in 3..19, R-50 1x): ATSS with k = 19 candidates per level. Any other k:
# `--config-file configs/COCO/atss_R_50_FPN_1x.py model.assigner.topk=K`.
from ..atss_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, test, train

model.assigner.topk = 19

train.output_dir = "./output/COCO/ablations/topk_19"
