"""The ATSS head: GN conv towers, classification, box and centerness predictors, per-level scale."""

import functools
import math
from typing import List

import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead
from torch import Tensor, nn

from ..layers import DeformConvWithOffset, GroupNormFP32

__all__ = ["ATSSHead", "Scale"]


class Scale(nn.Module):
    """A learnable scalar (init 1.0) multiplying its input; one per pyramid level."""

    def __init__(self, init_value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init_value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class ATSSHead(RetinaNetHead):
    """
    Two towers (classification, box) of ``len(conv_dims)`` x (3x3 conv, norm, ReLU), shared by
    all levels, then

    * ``cls_score``: #A·C logits (prior-probability bias, default 0.01);
    * ``bbox_pred``: #A·4 box regression, multiplied by a learnable ``scales[l]`` per level;
    * ``centerness``: #A·1 logits, computed on the **box** tower as in the authors' code.

    Weights are normal(0, 0.01) with zero bias (RetinaNetHead's init). With ``box_coding="POINT"``
    the box bias starts at 4, so that the initial box spans ±4 strides, the size of the 8·stride
    anchor (authors' POINT mode). With ``use_dcn=True`` the last conv of each tower is a
    modulated deformable conv (DCNv2) with its offset/mask conv, as in the authors' DCN models,
    initialised by ``dcn_init``:

    * ``"authors"`` (set by the ``dcnv2`` configs; sfzhang15/ATSS ``atss.py`` + ``DFConv2d``):
      their init loop sets every ``nn.Conv2d`` of the towers to normal(0, 0.01), zero bias — the
      offset/mask conv included (it is a ``Conv2d``) — but skips the deformable conv itself (not
      a ``Conv2d``), which keeps its layer's own init: uniform(±1/sqrt(C_in·kh·kw)), zero bias;
    * ``"detectron2"`` (default): the DCNv2 / Detectron2 convention, a zero offset/mask conv
      (all offsets 0, masks 0.5 at the start), and the deformable conv normal(0, 0.01) like the
      other tower convs.
    """

    def __init__(
        self,
        *,
        input_shape: List[ShapeSpec],
        num_classes: int,
        num_anchors: int = 1,
        conv_dims: List[int],
        norm="GN",
        prior_prob: float = 0.01,
        box_coding: str = "BOX",
        use_dcn: bool = False,
        dcn_init: str = "detectron2",
    ):
        """
        Args:
            input_shape: one ShapeSpec per level (channels must be equal).
            num_classes: C. num_anchors: #A per location.
            conv_dims: output channels of each tower conv.
            norm: tower normalisation (see ``detectron2.layers.get_norm``), GN(32) by default;
                "GN" is :class:`~atss.layers.GroupNormFP32`, fp32 under autocast on every
                device as CUDA's autocast runs GroupNorm (same parameters as ``nn.GroupNorm``).
            prior_prob: initial foreground probability of every class.
            box_coding: "BOX" or "POINT" (only changes the box-bias init here).
            use_dcn: deformable last tower conv.
            dcn_init: "authors" or "detectron2", the init of the deformable convs (see above).
        """
        if dcn_init not in ("authors", "detectron2"):
            raise ValueError(
                f"ATSSHead: dcn_init must be 'authors' or 'detectron2', got {dcn_init!r}"
            )
        conv_dims = [int(c) for c in conv_dims]
        if norm == "GN":
            norm = functools.partial(GroupNormFP32, 32)
        super().__init__(
            input_shape=list(input_shape),
            num_classes=num_classes,
            num_anchors=num_anchors,
            conv_dims=conv_dims,
            norm=norm,
            prior_prob=prior_prob,
        )
        self.num_levels = len(input_shape)
        self.centerness = nn.Conv2d(conv_dims[-1], num_anchors, kernel_size=3, padding=1)
        nn.init.normal_(self.centerness.weight, std=0.01)
        nn.init.constant_(self.centerness.bias, 0.0)
        self.scales = nn.ModuleList([Scale(1.0) for _ in range(self.num_levels)])
        if box_coding == "POINT":
            if num_anchors != 1:
                raise ValueError("ATSSHead: POINT box coding needs one anchor per location")
            nn.init.constant_(self.bbox_pred.bias, 4.0)
        if use_dcn:
            self._use_deformable_last_conv(conv_dims, dcn_init)

    def _use_deformable_last_conv(self, conv_dims, dcn_init):
        for tower in (self.cls_subnet, self.bbox_subnet):
            convs = [i for i, m in enumerate(tower) if isinstance(m, nn.Conv2d)]
            last = convs[-1]
            in_channels = tower[last].in_channels
            dcn = DeformConvWithOffset(in_channels, conv_dims[-1], kernel_size=3, padding=1)
            if dcn_init == "authors":
                nn.init.normal_(dcn.conv_offset.weight, std=0.01)
                fan_in = in_channels * dcn.conv.kernel_size[0] * dcn.conv.kernel_size[1]
                bound = 1.0 / math.sqrt(fan_in)
                nn.init.uniform_(dcn.conv.weight, -bound, bound)
            else:  # DeformConvWithOffset zero-initialises conv_offset itself
                nn.init.normal_(dcn.conv.weight, std=0.01)
            nn.init.constant_(dcn.conv_offset.bias, 0.0)
            nn.init.constant_(dcn.conv.bias, 0.0)
            tower[last] = dcn

    def forward(self, features: List[Tensor]):
        """
        Args:
            features: L tensors (N, C_in, H_l, W_l), high to low resolution.

        Returns:
            logits: L tensors (N, #A·C, H_l, W_l);
            bbox_reg: L tensors (N, #A·4, H_l, W_l), already multiplied by the level's scale;
            centerness: L tensors (N, #A, H_l, W_l) logits.
        """
        assert len(features) == self.num_levels, (len(features), self.num_levels)
        logits, bbox_reg, centerness = [], [], []
        for feature, scale in zip(features, self.scales):
            logits.append(self.cls_score(self.cls_subnet(feature)))
            box_feature = self.bbox_subnet(feature)
            bbox_reg.append(scale(self.bbox_pred(box_feature)))
            centerness.append(self.centerness(box_feature))
        return logits, bbox_reg, centerness
