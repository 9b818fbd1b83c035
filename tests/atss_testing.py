"""Shared builders for the tests: anchors, random GT boxes, a tiny ATSS model and inputs."""

import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.structures import Boxes, Instances

from atss.modeling.anchors import ATSS_STRIDES, atss_anchor_args

STRIDES = list(ATSS_STRIDES)
R50_CONFIG = "configs/COCO/atss_R_50_FPN_1x.py"


def grid_anchors(height, width, strides=STRIDES, sizes=None, ratios=(1.0,), offset=0.5):
    """Detectron2 anchors for a padded (height, width) input: (list of (A_l, 4), grid sizes)."""
    args = atss_anchor_args(strides, offset=offset)
    args.update(sizes=sizes or args["sizes"], aspect_ratios=list(ratios))
    gen = DefaultAnchorGenerator(**args)
    feats = [torch.zeros(1, 1, -(-height // s), -(-width // s)) for s in strides]
    anchors = [b.tensor for b in gen(feats)]
    return anchors, [tuple(f.shape[-2:]) for f in feats], gen.num_cell_anchors[0]


def random_boxes(n, height, width, generator, min_size=2.0, max_size=None, border=False):
    """n random float XYXY boxes; with border=True some are pushed against the image edges."""
    max_size = max_size or max(height, width) / 2
    wh = min_size + torch.rand(n, 2, generator=generator) * (max_size - min_size)
    ctr = torch.rand(n, 2, generator=generator) * torch.tensor([width, height])
    boxes = torch.cat([ctr - wh / 2, ctr + wh / 2], dim=1)
    if border:
        side = torch.randint(0, 4, (n,), generator=generator)
        boxes[side == 0, 0] = 0.0
        boxes[side == 1, 1] = 0.0
        boxes[side == 2, 2] = float(width)
        boxes[side == 3, 3] = float(height)
    return boxes


def tiny_model_cfg(num_classes=3, channels=32, **model_overrides):
    """
    The R-50 ATSS config shrunk to a ResNet-18 FPN with ``channels`` channels and a 2-conv head.
    With 32 channels GroupNorm(32) has one value per group on a 1x1 map (P7 of inputs <= 128 px),
    which torch refuses: use 64 channels for such inputs (real configs have 128-256).
    """
    cfg = LazyConfig.load(R50_CONFIG)
    m = cfg.model
    m.num_classes = num_classes
    m.backbone.bottom_up.stages.depth = 18
    del m.backbone.bottom_up.stages.stride_in_1x1  # BasicBlock has no such option
    m.backbone.bottom_up.freeze_at = 0
    m.backbone.out_channels = channels
    m.backbone.top_block.in_channels = channels
    m.head.input_shape = [ShapeSpec(channels=channels)] * 5
    m.head.conv_dims = [channels, channels]
    for k, v in model_overrides.items():
        node, *path = k.split(".")
        target = m
        for p in [node, *path][:-1]:
            target = target[p]
        target[[node, *path][-1]] = v
    return cfg


def tiny_model(num_classes=3, channels=32, **model_overrides):
    torch.manual_seed(0)
    return instantiate(tiny_model_cfg(num_classes, channels, **model_overrides).model)


def make_inputs(sizes, boxes_per_image, num_classes=3, seed=0):
    """Batched inputs: random images of the given (h, w) and the given GT boxes (list)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for (h, w), boxes in zip(sizes, boxes_per_image):
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(boxes.reshape(-1, 4).float())
        inst.gt_classes = torch.randint(0, num_classes, (len(inst.gt_boxes),), generator=g)
        img = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8).float()
        out.append({"image": img, "instances": inst, "height": h, "width": w, "image_id": len(out)})
    return out
