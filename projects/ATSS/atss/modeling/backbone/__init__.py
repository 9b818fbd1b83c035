"""atss.modeling.backbone"""

from .resnet import DeformBottleneckBlock, build_resnet, make_resnet_stages
