# Ablation (paper: #A = 9 with ATSS, R-50 1x): RetinaNet's 9 anchors per location (3 octave scales
# x 3 aspect ratios, base side 4 x stride, as the authors advise in sfzhang15/ATSS#58), assigned by
# ATSS with k x 9 candidates per level.
from ..atss_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, test, train

model.anchor_generator.sizes = [
    [x * 2 ** (i / 3) for i in range(3)] for x in [32, 64, 128, 256, 512]
]
model.anchor_generator.aspect_ratios = [0.5, 1.0, 2.0]
model.head.num_anchors = 9

train.output_dir = "./output/COCO/ablations/anchors_9_ATSS"
