# ATSS R-50-FPN 1x with the authors' published weights (sfzhang15/ATSS, ATSS_R_50_FPN_1x.pth),
# converted with
#   python tools/convert_checkpoint.py ATSS_R_50_FPN_1x.pth \
#       output/converted/ATSS_R_50_FPN_1x.pth \
#       --config-file configs/COCO/converted/atss_R_50_FPN_1x_authors.py
# What this mirrors (docs/published_weights.md): maskrcnn-benchmark's input normalisation
# (BGR, 0-255, their Caffe2 mean, std 1), MSRA R-50 (stride in the 1x1 conv), FrozenBN, anchor
# centres at (i + 0.5) * stride, ReLU before P7: the base config already has all of it except
# the mean, which differs from Detectron2's MSRA mean by 0.3-0.9 per channel.
#
# Evaluated as the authors evaluated it (their COCO results file, to float rounding): their test
# resize truncates the longer side (640x480 -> 1066 px wide, Detectron2: 1067), and their
# legacy "+1" boxes sit 0.5 px right/down of ours (at the input resolution; see
# atss.modeling.meta_arch.ATSS, box_convention). Both switches are off for our own models.
from detectron2.config import LazyCall as L

from atss.data.transforms import AuthorsResizeShortestEdge

from ..atss_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, test, train

# maskrcnn-benchmark's INPUT.PIXEL_MEAN (BGR), std 1 (INPUT.PIXEL_STD), INPUT.TO_BGR255.
AUTHORS_PIXEL_MEAN = (102.9801, 115.9465, 122.7717)
model.pixel_mean = list(AUTHORS_PIXEL_MEAN)
model.pixel_std = [1.0, 1.0, 1.0]
model.input_format = "BGR"
model.anchor_generator.offset = 0.5
model.backbone.bottom_up.stages.stride_in_1x1 = True

model.box_convention = "authors"
dataloader.test.mapper.augmentations = [
    L(AuthorsResizeShortestEdge)(short_edge_length=800, max_size=1333)
]

train.init_checkpoint = "output/converted/ATSS_R_50_FPN_1x.pth"
train.output_dir = "./output/COCO/converted/atss_R_50_FPN_1x_authors"
