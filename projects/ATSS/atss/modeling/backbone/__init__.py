"""atss.modeling.backbone"""

from .mobilenet import *  # noqa: F403  (exports mobilenet.__all__)
from .resnet import DCN_INITS, DeformBottleneckBlock, build_resnet, make_resnet_stages
