"""ResNet / ResNeXt stages (optionally with deformable convs) for LazyConfig files.

Detectron2's yacs builder ``build_resnet_backbone`` handles ResNeXt and per-stage DCN, but its
LazyConfig counterpart ``ResNet.make_default_stages`` does not: it forces the bottleneck width
to ``out_channels // 4`` (an X-101-32x8d with 2-channel groups and a fraction of its
parameters) and uses one block class for all stages. :func:`make_resnet_stages` mirrors the
yacs builder's loop with explicit arguments; :func:`build_resnet` builds the whole bottom-up.
Deformable stages use :class:`DeformBottleneckBlock`, Detectron2's block on
:mod:`atss.layers.deform_conv` (trains on CPU, traces), with Detectron2's state-dict keys,
shapes and initialisation, so checkpoints are interchangeable.
"""

import torch
from detectron2.layers import DeformConv as D2DeformConv
from detectron2.layers import ModulatedDeformConv as D2ModulatedDeformConv
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, BottleneckBlock
from detectron2.modeling.backbone.resnet import DeformBottleneckBlock as D2DeformBottleneckBlock
from detectron2.modeling.backbone.resnet import ResNet
from torch import nn

from atss.layers import DeformConv, ModulatedDeformConv

__all__ = ["DCN_INITS", "DeformBottleneckBlock", "make_resnet_stages", "build_resnet"]

# How a deformable conv's offset (and mask) predictor starts: "detectron2" zero-initialises it
# (Detectron2's DeformBottleneckBlock, the DCNv2 paper), "authors" as sfzhang15/ATSS (their
# maskrcnn-benchmark DFConv2d: kaiming-uniform with a=1, zero bias).
DCN_INITS = ("authors", "detectron2")

# Residual blocks in res2..res5 for each supported depth (as in Detectron2).
_NUM_BLOCKS_PER_STAGE = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}


def _torchvision_deform_conv_like(conv):
    """
    Build our torchvision-based equivalent of a Detectron2 (Modulated)DeformConv, sharing its
    weight Parameter and norm module (so the already-initialised values are kept).

    Args:
        conv (detectron2.layers.DeformConv or ModulatedDeformConv): module to replace.

    Returns:
        atss.layers.DeformConv or atss.layers.ModulatedDeformConv
    """
    modulated = isinstance(conv, D2ModulatedDeformConv)
    assert modulated or isinstance(conv, D2DeformConv), type(conv)
    cls = ModulatedDeformConv if modulated else DeformConv
    # The new module's own random init is discarded; fork the RNG so that building a backbone
    # consumes exactly the random numbers Detectron2's builder does (same seed -> same weights).
    with torch.random.fork_rng(devices=[]):
        new = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            deformable_groups=conv.deformable_groups,
            bias=conv.bias is not None,
            norm=conv.norm,
            activation=conv.activation,
        )
    new.weight = conv.weight
    new.bias = conv.bias
    return new


class DeformBottleneckBlock(D2DeformBottleneckBlock):
    """
    Detectron2's :class:`~detectron2.modeling.backbone.resnet.DeformBottleneckBlock` with its
    3x3 deformable conv ``conv2`` replaced by the torchvision-based op from
    :mod:`atss.layers`, so it runs forward and backward on CPU and traces into a saveable
    module. Everything else (``conv2_offset`` predicting 18 or 27 channels per deformable group;
    forward; state-dict keys and shapes; initialisation) is Detectron2's, except with
    ``dcn_init="authors"``: then ``conv2_offset`` starts as in the authors' ``DFConv2d``
    (``kaiming_uniform_(a=1)`` weight, zero bias) instead of zeros, so the offsets and masks of
    an ImageNet-initialised backbone are not all 0 / 0.5 at the first step.
    """

    def __init__(
        self,
        in_channels,
        out_channels,
        *,
        bottleneck_channels,
        stride=1,
        num_groups=1,
        norm="BN",
        stride_in_1x1=False,
        dilation=1,
        deform_modulated=False,
        deform_num_groups=1,
        dcn_init="detectron2",
    ):
        """
        Arguments are those of Detectron2's ``DeformBottleneckBlock``, plus ``dcn_init`` (one of
        :data:`DCN_INITS`), the initialisation of ``conv2_offset``.
        """
        if dcn_init not in DCN_INITS:
            raise ValueError(f"DeformBottleneckBlock: dcn_init must be one of {DCN_INITS}")
        super().__init__(
            in_channels,
            out_channels,
            bottleneck_channels=bottleneck_channels,
            stride=stride,
            num_groups=num_groups,
            norm=norm,
            stride_in_1x1=stride_in_1x1,
            dilation=dilation,
            deform_modulated=deform_modulated,
            deform_num_groups=deform_num_groups,
        )
        self.conv2 = _torchvision_deform_conv_like(self.conv2)
        if dcn_init == "authors":
            nn.init.kaiming_uniform_(self.conv2_offset.weight, a=1)
            nn.init.constant_(self.conv2_offset.bias, 0.0)


def make_resnet_stages(
    depth=50,
    num_groups=1,
    width_per_group=64,
    in_channels=64,
    out_channels=None,
    stride_in_1x1=True,
    norm="FrozenBN",
    res5_dilation=1,
    deform_on_per_stage=(False, False, False, False),
    deform_modulated=False,
    deform_num_groups=1,
    dcn_init="detectron2",
):
    """
    Build the res2..res5 stages of a ResNet / ResNeXt exactly as Detectron2's yacs
    ``build_resnet_backbone`` does (same modules, keys, shapes and initialisation order), for
    use as ``ResNet(stem, stages=make_resnet_stages(...))``. Arguments mirror
    ``cfg.MODEL.RESNETS.*``; omegaconf lists (as passed by LazyConfig ``instantiate``) are
    accepted.

    Args:
        depth (int): 18, 34, 50, 101 or 152.
        num_groups (int): groups of the 3x3 conv (32 for X-101-32x8d, 64 for X-101-64x4d).
        width_per_group (int): channels per group in res2 (8 for 32x8d, 4 for 64x4d); the
            bottleneck width ``num_groups * width_per_group`` doubles at each stage.
        in_channels (int): stem output channels.
        out_channels (int or None): res2 output channels; doubles at each stage. None means
            Detectron2's requirement for the depth: 256 for depth >= 50, 64 for R-18/R-34.
        stride_in_1x1 (bool): put the stride of the first block of a stage in the 1x1 conv
            (True for MSRA R-50/R-101 weights) instead of the 3x3 conv (ResNeXt, torchvision).
        norm (str or callable): normalization of every conv, see ``detectron2.layers.get_norm``.
        res5_dilation (int): 1 or 2; with 2, res5 keeps stride 16 and dilates its 3x3 convs.
        deform_on_per_stage (sequence[bool]): 4 flags, whether res2..res5 use deformable 3x3
            convs (:class:`DeformBottleneckBlock`).
        deform_modulated (bool): DCNv2 (offsets + mask) instead of DCNv1.
        deform_num_groups (int): deformable groups of the deformable convs.
        dcn_init (str): "detectron2" (zero offsets, Detectron2's builder) or "authors" (the
            authors' offset init), see :class:`DeformBottleneckBlock`.

    Returns:
        list[list[CNNBlockBase]]: blocks of res2, res3, res4, res5.
    """
    # LazyConfig hands lists over as omegaconf ListConfig, and numbers may be any int-like.
    depth = int(depth)
    num_groups = int(num_groups)
    res5_dilation = int(res5_dilation)
    deform_on_per_stage = tuple(bool(d) for d in deform_on_per_stage)
    if out_channels is None:
        out_channels = 64 if depth in (18, 34) else 256
    bottleneck_channels = num_groups * int(width_per_group)

    assert depth in _NUM_BLOCKS_PER_STAGE, f"depth must be one of {list(_NUM_BLOCKS_PER_STAGE)}"
    assert res5_dilation in (1, 2), f"res5_dilation cannot be {res5_dilation}"
    assert len(deform_on_per_stage) == 4, "deform_on_per_stage needs one flag per res2..res5"
    if depth in (18, 34):
        # Same restrictions as Detectron2's builder: BasicBlock has none of these options.
        assert out_channels == 64, "out_channels must be 64 for R-18/R-34"
        assert not any(deform_on_per_stage), "deformable convs are unsupported for R-18/R-34"
        assert res5_dilation == 1, "res5_dilation must be 1 for R-18/R-34"
        assert num_groups == 1, "num_groups must be 1 for R-18/R-34"

    stages = []
    for idx, num_blocks in enumerate(_NUM_BLOCKS_PER_STAGE[depth]):
        is_res5 = idx == 3
        dilation = res5_dilation if is_res5 else 1
        # res2 follows the stem's max-pool, and a dilated res5 keeps the resolution of res4.
        first_stride = 1 if idx == 0 or (is_res5 and dilation == 2) else 2
        stage_kwargs = {
            "num_blocks": num_blocks,
            "stride_per_block": [first_stride] + [1] * (num_blocks - 1),
            "in_channels": in_channels,
            "out_channels": out_channels,
            "norm": norm,
        }
        if depth in (18, 34):
            stage_kwargs["block_class"] = BasicBlock
        else:
            stage_kwargs.update(
                bottleneck_channels=bottleneck_channels,
                stride_in_1x1=stride_in_1x1,
                dilation=dilation,
                num_groups=num_groups,
            )
            if deform_on_per_stage[idx]:
                stage_kwargs.update(
                    block_class=DeformBottleneckBlock,
                    deform_modulated=deform_modulated,
                    deform_num_groups=deform_num_groups,
                    dcn_init=dcn_init,
                )
            else:
                stage_kwargs["block_class"] = BottleneckBlock
        stages.append(ResNet.make_stage(**stage_kwargs))
        in_channels = out_channels
        out_channels *= 2
        bottleneck_channels *= 2
    return stages


def build_resnet(
    depth=50,
    num_groups=1,
    width_per_group=64,
    stride_in_1x1=True,
    norm="FrozenBN",
    freeze_at=2,
    out_features=("res3", "res4", "res5"),
    deform_on_per_stage=(False, False, False, False),
    deform_modulated=False,
    deform_num_groups=1,
    res5_dilation=1,
    dcn_init="detectron2",
):
    """
    A :class:`detectron2.modeling.backbone.ResNet` with a ``BasicStem(3, 64, norm)`` and the
    stages of :func:`make_resnet_stages`: the LazyConfig equivalent of Detectron2's
    ``build_resnet_backbone`` with default stem settings (same modules, in the same order).

    Args:
        freeze_at (int): freeze the stem (1) and the first ``freeze_at - 1`` stages.
        out_features (sequence[str]): among "stem", "res2" ... "res5"; stages after the
            last requested one are not built.
        Other arguments: see :func:`make_resnet_stages`.

    Returns:
        ResNet
    """
    stem = BasicStem(in_channels=3, out_channels=64, norm=norm)
    stages = make_resnet_stages(
        depth=depth,
        num_groups=num_groups,
        width_per_group=width_per_group,
        in_channels=64,
        stride_in_1x1=stride_in_1x1,
        norm=norm,
        res5_dilation=res5_dilation,
        deform_on_per_stage=deform_on_per_stage,
        deform_modulated=deform_modulated,
        deform_num_groups=deform_num_groups,
        dcn_init=dcn_init,
    )
    # A plain list of str: ResNet keeps it as an attribute, and TorchScript scripting rejects
    # omegaconf ListConfig attributes.
    out_features = [str(f) for f in out_features]
    return ResNet(stem, stages, out_features=out_features, freeze_at=int(freeze_at))
