# A tiny ATSS for fast end-to-end tests on the generated shapes data (`shapes_train`: 64 images,
# `shapes_val`: 16 images, 128-256 px, 3 classes): randomly initialised MobileNetV2-FPN with
# 32 channels, a 1-conv head, inputs of ~128 px, 20 iterations at batch 2. Not meant to be
# accurate; meant to exercise train -> checkpoint -> evaluate in seconds.
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

from ..common.schedule import atss_schedule
from ..TreeCrowns.atss_MNV2_FPN_treecrowns import dataloader, model, optimizer, test, train

CHANNELS = 32

model.backbone.out_channels = CHANNELS
model.backbone.pretrained = False
model.backbone.freeze_at = 0
model.head.input_shape = [ShapeSpec(channels=CHANNELS)] * 5
model.head.conv_dims = [CHANNELS]
model.head.norm = ""
model.num_classes = 3
model.max_detections_per_image = 100

dataloader.train.dataset.names = "shapes_train"
dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=(112, 128), max_size=256, sample_style="choice"),
    L(T.RandomFlip)(horizontal=True),
]
dataloader.train.total_batch_size = 2
dataloader.test.dataset.names = "shapes_val"
dataloader.test.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=128, max_size=256),
]
dataloader.evaluator.max_dets_per_image = 100

optimizer.lr = 0.01
MAX_ITER = 20
lr_multiplier = atss_schedule(
    MAX_ITER, steps=(15,), warmup_iters=5, warmup_factor=0.1, warmup_method="linear"
)

train.max_iter = MAX_ITER
train.output_dir = "./output/Shapes/atss_tiny_shapes"
train.checkpointer.period = 10
train.eval_period = MAX_ITER
train.log_period = 5
train.seed = 0

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
