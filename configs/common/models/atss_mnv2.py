# ATSS with an ImageNet MobileNetV2-FPN (128 channels) and a 2 x 128 head: the CPU-sized model of
# the tree-crown and the Custom (own data) configs. channels_last: a faster CPU training step,
# the same results within float rounding (docs/benchmarks.md). The configs set the class count.
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

from atss.modeling.backbone import (
    MOBILENET_V2_PIXEL_MEAN,
    MOBILENET_V2_PIXEL_STD,
    build_mobilenetv2_fpn,
)

from .atss import model

CHANNELS = 128

model.backbone = L(build_mobilenetv2_fpn)(
    out_channels=CHANNELS, freeze_at=2, pretrained=True, channels_last=True
)
model.pixel_mean = MOBILENET_V2_PIXEL_MEAN
model.pixel_std = MOBILENET_V2_PIXEL_STD
model.input_format = "RGB"
model.head.input_shape = [ShapeSpec(channels=CHANNELS)] * 5
model.head.conv_dims = [CHANNELS, CHANNELS]
