# ATSS X-101-64x4d-FPN with DCNv2, 2x multi-scale, with the authors' published weights
# (sfzhang15/ATSS, ATSS_dcnv2_X_101_64x4d_FPN_2x.pth), converted
# with tools/convert_checkpoint.py (see atss_R_50_FPN_1x_authors.py).
# Backbone as in their atss_dcnv2_X_101_64x4d_FPN_2x.yaml: ResNeXt-101 64x4d, stride in the 3x3
# conv, modulated DCN (1 deformable group) in res4-res5, FrozenBN, stem + res2 frozen; the last
# conv of both head towers is a modulated DCN too. The input normalisation and the evaluation
# conventions stay those of atss_R_50_FPN_1x_authors.py (use_backbone would set Detectron2's
# BGR mean: put the authors' back).
from ...common.coco_data import MULTI_SCALE_AUGMENTATIONS
from ...common.models.backbones import use_backbone
from ...common.schedule import lr_multiplier_2x as lr_multiplier
from .atss_R_50_FPN_1x_authors import AUTHORS_PIXEL_MEAN, dataloader, model, optimizer, test, train

use_backbone(model, train, "X-101-64x4d", dcn=True)
model.pixel_mean = list(AUTHORS_PIXEL_MEAN)

dataloader.train.mapper.augmentations = MULTI_SCALE_AUGMENTATIONS
train.max_iter = 180000
train.init_checkpoint = "output/converted/ATSS_dcnv2_X_101_64x4d_FPN_2x.pth"
train.output_dir = "./output/COCO/converted/atss_dcnv2_X_101_64x4d_FPN_2x_authors"

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "test", "train"]
