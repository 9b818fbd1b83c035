# ATSS X-101-64x4d-FPN with DCNv2, 2x multi-scale, with the authors' published weights
# (sfzhang15/ATSS, ATSS_dcnv2_X_101_64x4d_FPN_2x.pth: 47.7 AP minival single-scale), converted
# with scripts/convert_checkpoint.py (see atss_R_50_FPN_1x_authors.py).
# Backbone as in their atss_dcnv2_X_101_64x4d_FPN_2x.yaml: ResNeXt-101 64x4d, stride in the 3x3
# conv, modulated DCN (1 deformable group) in res4-res5, FrozenBN, stem + res2 frozen; the last
# conv of both head towers is a modulated DCN too.
from detectron2.config import LazyCall as L

from atss.modeling.backbone import build_resnet

from ...common.coco_data import MULTI_SCALE_AUGMENTATIONS
from ...common.schedule import lr_multiplier_2x as lr_multiplier
from .atss_R_50_FPN_1x_authors import dataloader, model, optimizer, test, train

model.backbone.bottom_up = L(build_resnet)(
    depth=101,
    num_groups=64,
    width_per_group=4,
    stride_in_1x1=False,
    norm="FrozenBN",
    freeze_at=2,
    out_features=["res3", "res4", "res5"],
    deform_on_per_stage=[False, False, True, True],
    deform_modulated=True,
    deform_num_groups=1,
)
model.head.use_dcn = True

dataloader.train.mapper.augmentations = MULTI_SCALE_AUGMENTATIONS
train.max_iter = 180000
train.init_checkpoint = "output/converted/ATSS_dcnv2_X_101_64x4d_FPN_2x.pth"
