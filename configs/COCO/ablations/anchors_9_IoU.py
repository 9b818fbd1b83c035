# Ablation (paper: #A = 9 without ATSS = RetinaNet's IoU assignment, R-50 1x): 9 anchors per
# location, IoU >= 0.5 positive, < 0.4 negative, positives with their centre outside the GT ignored.
from .anchors_9_ATSS import dataloader, lr_multiplier, model, optimizer, test, train

model.assigner.mode = "IoU"

train.output_dir = "./output/COCO/ablations/anchors_9_IoU"
