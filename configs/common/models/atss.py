# ATSS R-50-FPN model, composed from Detectron2's FCOS config (R-50 + FPN, P3-P7 with P6/P7 from
# P5 and a ReLU before P7, GN head) with the ATSS pieces swapped in.
from detectron2.config import LazyCall as L
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator

from atss import ATSS, AnchorAssigner, ATSSHead
from atss.config import get_detectron2_config
from atss.modeling.anchors import ATSS_STRIDES, atss_anchor_args

model = get_detectron2_config("common/models/fcos.py").model
model._target_ = ATSS

# One square anchor of side 8 x stride per location, centres at (i + 0.5) x stride (sizes
# [[64], [128], [256], [512], [1024]]); the ablations edit sizes / aspect_ratios / offset.
model.anchor_generator = L(DefaultAnchorGenerator)(**atss_anchor_args(ATSS_STRIDES))
# The switches: assigner mode ("ATSS" | "IoU" | "SSC" | "TOPK") and box coding ("BOX" | "POINT").
model.assigner = L(AnchorAssigner)(mode="ATSS", topk=9)
model.box_coding = "BOX"
model.reg_loss_weight = 2.0

model.head._target_ = ATSSHead
model.head.num_anchors = 1
model.head.box_coding = "${..box_coding}"
model.head.use_dcn = False
# How the deformable convs start when use_dcn is on (head, and the backbone's DCN stages follow
# it, see backbones.py): "detectron2" (zero offset/mask convs) or "authors" (sfzhang15/ATSS),
# which use_backbone(..., dcn=True) sets for the dcnv2 configs.
model.head.dcn_init = "detectron2"

# Authors' inference: raw p > 0.05, top 1000 per level by p*c, class-wise NMS 0.6, 100 per image.
model.test_score_thresh = 0.05
model.test_topk_candidates = 1000
model.test_nms_thresh = 0.6
model.max_detections_per_image = 100
model.input_format = "BGR"
# Output boxes: "detectron2" (continuous). "authors" only for evaluating the authors' published
# weights as they did (configs/COCO/converted/*_authors.py).
model.box_convention = "detectron2"
