# Ablation (paper: RetinaNet #A = 1 with the FCOS improvements, R-50 1x): BOX coding, IoU assignment
# (>= 0.5 positive, < 0.4 negative, centre inside the GT).
from ..atss_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, test, train

model.assigner.mode = "IoU"

train.output_dir = "./output/COCO/ablations/assigner_IoU"
