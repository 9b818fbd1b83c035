# Ablation (R-50 1x): the k = 9 highest-IoU anchors over all levels with their centre inside the
# GT, i.e. ATSS without its adaptive IoU threshold.
from ..atss_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, test, train

model.assigner.mode = "TOPK"

train.output_dir = "./output/COCO/ablations/assigner_TOPK"
