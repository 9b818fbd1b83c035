# Detectron2's own FCOS in exactly the ATSS tree-crown setting (same MobileNetV2-FPN, 2 x 128 GN
# head, data, solver and schedule): the reference of tools/compare_detectors.py.
from detectron2.modeling.meta_arch.fcos import FCOS, FCOSHead

from .atss_MNV2_FPN_treecrowns import dataloader, lr_multiplier, model, optimizer, train

model._target_ = FCOS
for key in (
    "anchor_generator",
    "box_coding",
    "box_convention",
    "assigner",
    "reg_loss_weight",
    "input_format",
):
    del model[key]
model.head._target_ = FCOSHead
for key in ("num_anchors", "box_coding", "use_dcn", "dcn_init"):
    del model.head[key]
model.test_score_thresh = 0.2  # Detectron2's FCOS thresholds sqrt(p * ctr)
train.output_dir = "./output/TreeCrowns/fcos_MNV2_FPN_treecrowns"
