"""atss.layers: deformable convolutions that train on CPU and trace, and FrozenBN folding."""

from .deform_conv import DeformConv, DeformConvWithOffset, ModulatedDeformConv
from .frozen_bn import FoldedConvBNSequential, conv_frozen_bn, fold_frozen_batchnorm
