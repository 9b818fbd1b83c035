"""atss.layers"""

from .deform_conv import DeformConv, DeformConvWithOffset, ModulatedDeformConv
