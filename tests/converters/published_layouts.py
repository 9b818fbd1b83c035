"""
Key names and shapes of the published ATSS checkpoints, generated from the structure of the code
that wrote them (not from our model), for synthetic checkpoints in tests.

* :func:`authors_layout` — ``sfzhang15/ATSS`` (maskrcnn-benchmark): ``GeneralizedRCNN`` with
  ``backbone = Sequential(body=ResNet, fpn=FPN)`` and ``rpn = ATSSModule(head=ATSSHead,
  anchor_generator)``, saved from the DDP-wrapped model (``module.`` prefix) under ``"model"``.
  Read in ``atss_core/modeling/backbone/{backbone,resnet}.py``, ``rpn/atss/atss.py``,
  ``rpn/anchor_generator.py``, ``layers/misc.py`` (``DFConv2d``), ``layers/scale.py`` (a (1,)
  parameter), ``utils/checkpoint.py``; FPN naming in ``fcos_core/modeling/backbone/fpn.py``.
* :func:`mmdet_layout` — ``open-mmlab/mmdetection``: ``backbone`` (``backbones/resnet.py``),
  ``neck`` (``necks/fpn.py``), ``bbox_head`` (``dense_heads/atss_head.py``, mmcv ``ConvModule``
  with ``conv`` + ``gn``, no conv bias before a norm; mmcv ``Scale`` is 0-d), under
  ``"state_dict"``.
"""

from collections import OrderedDict

import torch

_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
_FROZEN_BN = ("weight", "bias", "running_mean", "running_var")


def authors_layout(
    depth=50,
    num_groups=1,
    width_per_group=64,
    stage_with_dcn=(False, False, False, False),
    head_dcn=False,
    num_classes=80,
    num_convs=4,
    channels=256,
):
    """
    Returns:
        OrderedDict key -> shape of an authors' ATSS state dict (without the ``module.`` prefix).
    """
    shapes = OrderedDict()

    def frozen_bn(name, n):
        for field in _FROZEN_BN:
            shapes[f"{name}.{field}"] = (n,)

    body = "backbone.body"
    shapes[f"{body}.stem.conv1.weight"] = (64, 3, 7, 7)
    frozen_bn(f"{body}.stem.bn1", 64)
    in_ch = 64
    for idx, num_blocks in enumerate(_BLOCKS[depth], start=1):
        factor = 2 ** (idx - 1)
        bottleneck, out_ch = num_groups * width_per_group * factor, 256 * factor
        for b in range(num_blocks):
            p = f"{body}.layer{idx}.{b}"
            if in_ch != out_ch:  # Bottleneck.downsample = Sequential(Conv2d, FrozenBN)
                shapes[f"{p}.downsample.0.weight"] = (out_ch, in_ch, 1, 1)
                frozen_bn(f"{p}.downsample.1", out_ch)
            shapes[f"{p}.conv1.weight"] = (bottleneck, in_ch, 1, 1)
            frozen_bn(f"{p}.bn1", bottleneck)
            if stage_with_dcn[idx - 1]:  # DFConv2d(modulated): offset conv (27) + deform conv
                shapes[f"{p}.conv2.offset.weight"] = (27, bottleneck, 3, 3)
                shapes[f"{p}.conv2.offset.bias"] = (27,)
                shapes[f"{p}.conv2.conv.weight"] = (bottleneck, bottleneck // num_groups, 3, 3)
            else:
                shapes[f"{p}.conv2.weight"] = (bottleneck, bottleneck // num_groups, 3, 3)
            frozen_bn(f"{p}.bn2", bottleneck)
            shapes[f"{p}.conv3.weight"] = (out_ch, bottleneck, 1, 1)
            frozen_bn(f"{p}.bn3", out_ch)
            in_ch = out_ch
    # FPN(in_channels_list=[0, 512, 1024, 2048]): names are 1-based, slot 1 (res2) is skipped.
    for slot, c_in in ((2, 512), (3, 1024), (4, 2048)):
        shapes[f"backbone.fpn.fpn_inner{slot}.weight"] = (channels, c_in, 1, 1)
        shapes[f"backbone.fpn.fpn_inner{slot}.bias"] = (channels,)
        shapes[f"backbone.fpn.fpn_layer{slot}.weight"] = (channels, channels, 3, 3)
        shapes[f"backbone.fpn.fpn_layer{slot}.bias"] = (channels,)
    for p in ("p6", "p7"):
        shapes[f"backbone.fpn.top_blocks.{p}.weight"] = (channels, channels, 3, 3)
        shapes[f"backbone.fpn.top_blocks.{p}.bias"] = (channels,)
    for tower in ("cls_tower", "bbox_tower"):
        for i in range(num_convs):
            p = f"rpn.head.{tower}.{3 * i}"
            if head_dcn and i == num_convs - 1:  # DFConv2d(..., bias=True)
                shapes[f"{p}.offset.weight"] = (27, channels, 3, 3)
                shapes[f"{p}.offset.bias"] = (27,)
                shapes[f"{p}.conv.weight"] = (channels, channels, 3, 3)
                shapes[f"{p}.conv.bias"] = (channels,)
            else:
                shapes[f"{p}.weight"] = (channels, channels, 3, 3)
                shapes[f"{p}.bias"] = (channels,)
            shapes[f"rpn.head.{tower}.{3 * i + 1}.weight"] = (channels,)  # GroupNorm(32)
            shapes[f"rpn.head.{tower}.{3 * i + 1}.bias"] = (channels,)
    for name, n in (("cls_logits", num_classes), ("bbox_pred", 4), ("centerness", 1)):
        shapes[f"rpn.head.{name}.weight"] = (n, channels, 3, 3)
        shapes[f"rpn.head.{name}.bias"] = (n,)
    for level in range(5):
        shapes[f"rpn.head.scales.{level}.scale"] = (1,)
    for level in range(5):
        shapes[f"rpn.anchor_generator.cell_anchors.{level}"] = (1, 4)
    return shapes


def mmdet_layout(depth=50, num_classes=80, stacked_convs=4, channels=256):
    """
    Returns:
        OrderedDict key -> shape of an mmdetection ATSS ResNet-FPN state dict.
    """
    shapes = OrderedDict()

    def bn(name, n):
        for field in _FROZEN_BN:
            shapes[f"{name}.{field}"] = (n,)
        shapes[f"{name}.num_batches_tracked"] = ()

    shapes["backbone.conv1.weight"] = (64, 3, 7, 7)
    bn("backbone.bn1", 64)
    inplanes = 64
    for i, num_blocks in enumerate(_BLOCKS[depth]):
        planes = 64 * 2**i
        for b in range(num_blocks):
            p = f"backbone.layer{i + 1}.{b}"
            shapes[f"{p}.conv1.weight"] = (planes, inplanes, 1, 1)
            bn(f"{p}.bn1", planes)
            shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            bn(f"{p}.bn2", planes)
            shapes[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
            bn(f"{p}.bn3", planes * 4)
            if b == 0:  # ResLayer: downsample = Sequential(conv, norm) on the first block
                shapes[f"{p}.downsample.0.weight"] = (planes * 4, inplanes, 1, 1)
                bn(f"{p}.downsample.1", planes * 4)
            inplanes = planes * 4
    for j, c_in in enumerate((512, 1024, 2048)):  # start_level=1
        shapes[f"neck.lateral_convs.{j}.conv.weight"] = (channels, c_in, 1, 1)
        shapes[f"neck.lateral_convs.{j}.conv.bias"] = (channels,)
    for j in range(5):  # 3 outputs + P6, P7 ('on_output')
        shapes[f"neck.fpn_convs.{j}.conv.weight"] = (channels, channels, 3, 3)
        shapes[f"neck.fpn_convs.{j}.conv.bias"] = (channels,)
    for tower in ("cls_convs", "reg_convs"):
        for i in range(stacked_convs):
            shapes[f"bbox_head.{tower}.{i}.conv.weight"] = (channels, channels, 3, 3)
            shapes[f"bbox_head.{tower}.{i}.gn.weight"] = (channels,)
            shapes[f"bbox_head.{tower}.{i}.gn.bias"] = (channels,)
    for name, n in (("atss_cls", num_classes), ("atss_reg", 4), ("atss_centerness", 1)):
        shapes[f"bbox_head.{name}.weight"] = (n, channels, 3, 3)
        shapes[f"bbox_head.{name}.bias"] = (n,)
    for level in range(5):
        shapes[f"bbox_head.scales.{level}.scale"] = ()
    return shapes


def synthetic_state_dict(shapes, distinct=(), seed=0):
    """
    A state dict with the given shapes that costs almost no memory: every tensor is one constant
    (its position in ``shapes`` + 1, as an expanded 0-d tensor), except the keys in ``distinct``,
    which hold random values so that their placement can be checked element by element.
    """
    g = torch.Generator().manual_seed(seed)
    out = OrderedDict()
    for i, (key, shape) in enumerate(shapes.items()):
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(1000, dtype=torch.int64)
        elif key in distinct:
            out[key] = torch.randn(shape, generator=g)
        else:
            out[key] = torch.tensor(float(i + 1)).expand(shape)
    return out
