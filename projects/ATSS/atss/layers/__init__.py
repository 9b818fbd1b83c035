"""atss.layers: deformable convolutions that train on CPU and trace, FrozenBN folding, and a
GroupNorm that stays fp32 under autocast."""

from .deform_conv import DeformConv, DeformConvWithOffset, ModulatedDeformConv
from .frozen_bn import FoldedConvBNSequential, conv_frozen_bn, fold_frozen_batchnorm
from .group_norm import GroupNormFP32
