# ATSS R-50-FPN 1x with mmdetection's published weights
# (atss_r50_fpn_1x_coco_20200209-985f7bd0.pth), converted with
#   python tools/convert_checkpoint.py atss_r50_fpn_1x_coco_20200209-985f7bd0.pth \
#       output/converted/atss_r50_fpn_1x_coco_mmdet.pth \
#       --config-file configs/COCO/converted/atss_R_50_FPN_1x_mmdet.py
# What this mirrors (docs/published_weights.md): torchvision-style
# ResNet (stride in the 3x3 conv), RGB input normalised with ImageNet mean/std, anchor centres at
# i * stride (offset 0). Not mirrored: mmdetection has no ReLU between P6 and P7, our FPN top
# block always applies one, so P7 features (the largest objects) differ from mmdetection's.
from ..atss_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, test, train

model.pixel_mean = [123.675, 116.28, 103.53]
model.pixel_std = [58.395, 57.12, 57.375]
model.input_format = "RGB"
# The test mapper reads its image format from the train mapper.
dataloader.train.mapper.image_format = "RGB"
model.anchor_generator.offset = 0.0
model.backbone.bottom_up.stages.stride_in_1x1 = False

train.init_checkpoint = "output/converted/atss_r50_fpn_1x_coco_mmdet.pth"
train.output_dir = "./output/COCO/converted/atss_R_50_FPN_1x_mmdet"
