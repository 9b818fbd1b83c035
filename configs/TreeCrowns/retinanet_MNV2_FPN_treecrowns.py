# Detectron2's RetinaNet with one square 8-stride anchor per location (#A = 1) and its IoU
# assigner (0.4 / 0.5, low-quality matches), in exactly the ATSS tree-crown setting (same
# backbone, 2 x 128 GN head, data, solver, schedule): the paper's "RetinaNet (#A=1)" baseline.
from detectron2.config import LazyCall as L
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.meta_arch.retinanet import RetinaNet, RetinaNetHead

from .atss_MNV2_FPN_treecrowns import dataloader, lr_multiplier, model, optimizer, train

model._target_ = RetinaNet
for key in ("box_coding", "box_convention", "assigner", "reg_loss_weight"):
    del model[key]
model.box2box_transform = L(Box2BoxTransform)(weights=[1.0, 1.0, 1.0, 1.0])
model.anchor_matcher = L(Matcher)(
    thresholds=[0.4, 0.5], labels=[0, -1, 1], allow_low_quality_matches=True
)
model.head._target_ = RetinaNetHead
for key in ("box_coding", "use_dcn", "dcn_init"):
    del model.head[key]
model.head.num_anchors = 1
model.test_score_thresh = 0.05
train.output_dir = "./output/TreeCrowns/retinanet_MNV2_FPN_treecrowns"
