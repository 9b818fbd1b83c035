"""
Convolutions followed by a FrozenBatchNorm2d, run as one convolution.

A frozen BN is a fixed per-channel affine map y = s * x + b (s = gamma / sqrt(var + eps),
b = beta - mean * s), so conv(x, W) followed by it equals conv(x, s * W) + (s * bias + b). The
folded weight is recomputed from W at every call, so W stays the trained parameter (same
state dict, same gradients up to float rounding): the only change is that the activation-sized
multiply and add of the BN (and their backward) disappear, a large share of the tree-crown
MobileNetV2 training step (docs/benchmarks.md).
"""

import torch.nn.functional as F
from detectron2.layers import FrozenBatchNorm2d
from torch import Tensor, nn

__all__ = ["FoldedConvBNSequential", "conv_frozen_bn", "fold_frozen_batchnorm"]


def conv_frozen_bn(conv: nn.Conv2d, bn: FrozenBatchNorm2d, x: Tensor) -> Tensor:
    """``bn(conv(x))`` computed as one convolution with the BN folded into its weight and bias."""
    scale = bn.weight * (bn.running_var + bn.eps).rsqrt()  # (C_out,)
    bias = bn.bias - bn.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    weight = conv.weight * scale.reshape(-1, 1, 1, 1).to(conv.weight.dtype)
    if conv.padding_mode != "zeros":
        raise ValueError(f"conv_frozen_bn: padding_mode {conv.padding_mode!r} is not supported")
    return F.conv2d(
        x, weight, bias.to(x.dtype), conv.stride, conv.padding, conv.dilation, conv.groups
    )


class FoldedConvBNSequential(nn.Sequential):
    """An ``nn.Sequential`` that runs each (Conv2d, FrozenBatchNorm2d) pair as one convolution.
    Same children, names and state dict as the Sequential it replaces."""

    def forward(self, x: Tensor) -> Tensor:
        modules = list(self)
        i = 0
        while i < len(modules):
            module = modules[i]
            following = modules[i + 1] if i + 1 < len(modules) else None
            if (
                type(module) is nn.Conv2d
                and isinstance(following, FrozenBatchNorm2d)
                and module.padding_mode == "zeros"
            ):
                x = conv_frozen_bn(module, following, x)
                i += 2
            else:
                x = module(x)
                i += 1
        return x


def fold_frozen_batchnorm(module: nn.Module) -> nn.Module:
    """
    Make every ``nn.Sequential`` inside ``module`` (itself included) that holds a Conv2d
    directly followed by a FrozenBatchNorm2d a :class:`FoldedConvBNSequential`, in place (the
    class is swapped, so parameters, buffers and state-dict keys are untouched). Returns
    ``module``.
    """
    for sub in module.modules():
        if not isinstance(sub, nn.Sequential) or isinstance(sub, FoldedConvBNSequential):
            continue
        children = list(sub)
        if any(
            type(a) is nn.Conv2d and isinstance(b, FrozenBatchNorm2d)
            for a, b in zip(children, children[1:])
        ):
            if type(sub) is not nn.Sequential and type(sub).forward is not nn.Sequential.forward:
                continue  # a subclass with its own forward: leave it alone
            # torchvision's Conv2dNormActivation has Sequential's forward: swapping its class
            # only changes the forward.
            sub.__class__ = FoldedConvBNSequential
    return module
