"""
Each backbone family of the COCO model zoo (R-50, R-101, X-101-32x8d, X-101-64x4d, each with and
without DCNv2), built from its config file, runs one CPU training iteration and one inference.

The backbones are the real ones (all blocks, widths, groups and DCN stages of the config); only
depth-independent parts are shrunk to keep this fast on a 2-core CPU: FPN and head width 64
(GN keeps 2 channels per group, which a 1x1 P7 map needs), 2 tower convs (the last one
deformable in the DCN configs), 3 classes, and two small images (64x96 and 56x80).

torch runs single-threaded here: on a 2-core machine shared with other jobs, OpenMP threads
waiting on each other made the many tiny grouped / deformable convs of an X-101 step 5-10x
slower (measured: X-101-32x8d-DCN step at 64x64 from ~1 s with 1 thread to 7-18 s with 2).
"""

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.layers import ShapeSpec
from detectron2.utils.events import EventStorage

from atss.layers import DeformConvWithOffset
from atss.modeling.backbone import DeformBottleneckBlock
from tests.atss_testing import make_inputs

CONFIGS = [
    "atss_R_50_FPN_1x",
    "atss_dcnv2_R_50_FPN_1x",
    "atss_R_101_FPN_2x_ms",
    "atss_dcnv2_R_101_FPN_2x_ms",
    "atss_X_101_32x8d_FPN_2x_ms",
    "atss_dcnv2_X_101_32x8d_FPN_2x_ms",
    "atss_X_101_64x4d_FPN_2x_ms",
    "atss_dcnv2_X_101_64x4d_FPN_2x_ms",
]
SIZES = [(64, 96), (56, 80)]
BOXES = [
    torch.tensor([[8.0, 6.0, 40.0, 50.0], [50.0, 20.0, 90.0, 60.0]]),
    torch.tensor([[10.0, 10.0, 70.0, 45.0]]),
]


def _small_neck_and_head(name, channels=64, num_classes=3):
    cfg = LazyConfig.load(f"configs/COCO/{name}.py")
    m = cfg.model
    m.num_classes = num_classes
    m.backbone.out_channels = channels
    m.backbone.top_block.in_channels = channels
    m.head.input_shape = [ShapeSpec(channels=channels)] * 5
    m.head.conv_dims = [channels, channels]
    # This backbone is random (no ImageNet weights; FrozenBN at identity), so its activations are
    # ~10-30 on 0-255 inputs: the authors' kaiming-uniform offset convs (dcn_init="authors")
    # then predict offsets of ~14 px on res5's 2 x 3 map (measured), every sample falls off the
    # map and res5's deformable weights get no gradient. The authors' init assumes pretrained,
    # BN-normalised activations; the mechanics tested here use zero offsets.
    m.head.dcn_init = "detectron2"
    return cfg


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.slow
def test_backbone_family_trains_and_infers_on_cpu(name):
    cfg = _small_neck_and_head(name)
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    dcn = "dcnv2" in name
    blocks = [
        b for s in ("res2", "res3", "res4", "res5") for b in getattr(model.backbone.bottom_up, s)
    ]
    assert len(blocks) == (16 if "R_50" in name else 33)
    assert any(isinstance(b, DeformBottleneckBlock) for b in blocks) == dcn
    assert isinstance(model.head.cls_subnet[-3], DeformConvWithOffset) == dcn

    # One training iteration with the config's optimiser (SGD, bias LR x2).
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    inputs = make_inputs(SIZES, BOXES, num_classes=3)
    model.train()
    with EventStorage():
        losses = model(inputs)
    assert set(losses) == {"loss_atss_cls", "loss_atss_reg", "loss_atss_ctr"}
    assert all(torch.isfinite(v) for v in losses.values()), losses
    optimizer.zero_grad()
    sum(losses.values()).backward()
    # Frozen stem + res2 (freeze_at 2); the other stages, DCN offsets included, get gradients.
    assert all(p.grad is None for p in model.backbone.bottom_up.res2.parameters())
    res5 = model.backbone.bottom_up.res5[0]
    assert res5.conv2.weight.grad is not None and res5.conv2.weight.grad.abs().sum() > 0
    if dcn:
        assert res5.conv2_offset.weight.grad.abs().sum() > 0
        assert model.head.bbox_subnet[-3].conv_offset.weight.grad.abs().sum() > 0
    before = res5.conv2.weight.detach().clone()
    optimizer.step()
    assert not torch.equal(before, res5.conv2.weight)

    # One inference on the same images, results in their own image size.
    model.eval()
    with torch.no_grad():
        outputs = model([{"image": x["image"]} for x in inputs])
    for (h, w), out in zip(SIZES, outputs):
        inst = out["instances"]
        assert inst.image_size == (h, w) and len(inst) <= 100
        b = inst.pred_boxes.tensor
        assert torch.all((b[:, 0] >= 0) & (b[:, 2] <= w) & (b[:, 1] >= 0) & (b[:, 3] <= h))
