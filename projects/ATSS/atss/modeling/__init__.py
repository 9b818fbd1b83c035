"""ATSS modeling: matcher, assigners, box coding, head, losses and the meta-architecture."""

from .anchors import atss_anchor_args, atss_anchor_generator
from .assigners import AnchorAssigner, iou_match, ssc_match, topk_match
from .box_coding import PointBoxTransform, build_box_transform
from .box_voting import batched_box_voting, box_voting
from .head import ATSSHead, Scale
from .matcher import atss_match
from .meta_arch import ATSS
from .tta import ATSSWithTTA, build_tta_model
