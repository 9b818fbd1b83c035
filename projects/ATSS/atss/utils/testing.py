"""Builders that tests and the repository's tools share (as Detectron2's
``detectron2/utils/testing.py``): anchors, random GT boxes, a tiny ATSS model, its inputs, a
short fit that gives confident detections, and the matcher's random cases.

Nothing here runs at import time; the tiny model shrinks the packaged R-50 config
(:mod:`atss.model_zoo`), so it works in an installed package as in a checkout.
"""

import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from atss import model_zoo
from atss.modeling.anchors import ATSS_STRIDES, atss_anchor_args

__all__ = [
    "FIT_BOXES",
    "FIT_SIZE",
    "STRIDES",
    "fit_briefly",
    "grid_anchors",
    "make_inputs",
    "random_boxes",
    "random_matcher_case",
    "tiny_model",
    "tiny_model_cfg",
]

STRIDES = list(ATSS_STRIDES)


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
    cfg = model_zoo.get_config("COCO/atss_R_50_FPN_1x.py")
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
    """:func:`tiny_model_cfg`'s model, randomly initialised (seed 0), on the CPU, train mode."""
    from atss.engine.config import NO_WEIGHTS, build_model

    torch.manual_seed(0)
    return build_model(tiny_model_cfg(num_classes, channels, **model_overrides), NO_WEIGHTS, "cpu")


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


# Two well separated objects in a 136 x 168 image: what fit_briefly's callers teach the model.
FIT_SIZE = (136, 168)
FIT_BOXES = torch.tensor([[20.0, 30.0, 90.0, 110.0], [100.0, 20.0, 160.0, 70.0]])


def fit_briefly(model, inputs, steps=8, lr=0.02):
    """
    Fit ``model`` for ``steps`` SGD steps (momentum 0.9) on one batch, so that it gives
    confident, well separated detections on those images (random weights give near-ties that
    reorder across runtimes and devices). ``inputs``: training inputs as from
    :func:`make_inputs`; their images may stay on the CPU (the model moves them). Returns the
    model in eval mode.
    """
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    for _ in range(steps):
        with EventStorage():
            loss = sum(model(inputs).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def random_matcher_case(seed):
    """One of the matcher's 200 advertised random cases (``seed`` 0..199): four anchor layouts
    x 1, 5, 40 and 300 GTs. Returns (anchors per level, grid sizes, #A, (G, 4) GT boxes)."""
    g = torch.Generator().manual_seed(seed)
    h, w = (int(x) for x in torch.randint(64, 700, (2,), generator=g))
    variant = seed % 4
    if variant == 0:  # default anchors
        anchors, sizes, n_a = grid_anchors(h, w)
    elif variant == 1:  # #A = 9: 3 scales x 3 ratios
        anchors, sizes, n_a = grid_anchors(
            h,
            w,
            sizes=[[8 * s * 2 ** (i / 3) for i in range(3)] for s in [8, 16, 32, 64, 128]],
            ratios=(0.5, 1.0, 2.0),
        )
    elif variant == 2:  # #A = 2, offset 0 (mmdetection style)
        anchors, sizes, n_a = grid_anchors(
            h, w, sizes=[[6 * s, 9 * s] for s in [8, 16, 32, 64, 128]], offset=0.0
        )
    else:  # three levels only, small image: levels with fewer than k anchors
        h, w = int(h // 6) + 8, int(w // 6) + 8
        anchors, sizes, n_a = grid_anchors(h, w, strides=[8, 32, 128])
    # Every anchor variant meets every GT count (the count is independent of the variant).
    num_gt = [1, 5, 40, 300][(seed // 4) % 4]
    gt = random_boxes(num_gt, h, w, g, border=bool(seed % 2))
    return anchors, sizes, n_a, gt
