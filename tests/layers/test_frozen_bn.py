"""Conv + FrozenBatchNorm2d folded into one conv, and the channels-last MobileNetV2: same math."""

import copy

import pytest
import torch
from detectron2.layers import FrozenBatchNorm2d
from torch import nn

from atss.layers import FoldedConvBNSequential, conv_frozen_bn, fold_frozen_batchnorm
from atss.modeling.backbone import MobileNetV2Backbone


def _frozen_bn(channels, generator):
    bn = FrozenBatchNorm2d(channels)
    bn.weight.copy_(torch.rand(channels, generator=generator) + 0.5)
    bn.bias.copy_(torch.randn(channels, generator=generator))
    bn.running_mean.copy_(torch.randn(channels, generator=generator))
    bn.running_var.copy_(torch.rand(channels, generator=generator) + 0.1)
    return bn.double()


@pytest.mark.parametrize("groups,stride,bias", [(1, 1, False), (8, 2, False), (1, 1, True)])
def test_folded_conv_equals_conv_then_frozen_bn_with_gradients(groups, stride, bias):
    """
    Output and the gradients of input and conv weight equal bn(conv(x)) in float64 (1e-12).
    Fails if the scale is applied along the wrong axis, the running mean or the conv bias is
    dropped, or the folded weight is detached (no weight gradient).
    """
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, stride=stride, padding=1, groups=groups, bias=bias).double()
    bn = _frozen_bn(16, g)
    x = torch.randn(2, 8, 11, 13, generator=g, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(2, 16, (11 - 1) // stride + 1, (13 - 1) // stride + 1, dtype=torch.float64)

    expected = bn(conv(x))
    expected.backward(grad)
    dx, dw = x.grad.clone(), conv.weight.grad.clone()
    x.grad, conv.weight.grad = None, None
    got = conv_frozen_bn(conv, bn, x)
    got.backward(grad)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(x.grad, dx, atol=1e-12, rtol=0)
    torch.testing.assert_close(conv.weight.grad, dw, atol=1e-12, rtol=0)


def test_folding_mobilenet_keeps_its_state_dict_and_its_outputs():
    """
    MobileNetV2 features with FrozenBN: after folding the state dict (keys and values) is the
    same and the outputs equal the unfolded ones in float64. Fails if folding renames or drops
    a parameter (checkpoints would no longer load), or folds a BN that does not directly follow
    its conv (e.g. across a ReLU6).
    """
    import torchvision

    torch.manual_seed(0)
    features = FrozenBatchNorm2d.convert_frozen_batchnorm(
        torchvision.models.mobilenet_v2(weights=None).features[:5]
    ).double()
    g = torch.Generator().manual_seed(1)
    for m in features.modules():
        if isinstance(m, FrozenBatchNorm2d):
            random_bn = _frozen_bn(m.weight.numel(), g)
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(m, name).copy_(getattr(random_bn, name))
    reference = copy.deepcopy(features)
    fold_frozen_batchnorm(features)
    assert sum(type(m) is FoldedConvBNSequential for m in features.modules()) >= 10
    assert list(features.state_dict()) == list(reference.state_dict())
    for k, v in reference.state_dict().items():
        assert torch.equal(features.state_dict()[k], v), k
    x = torch.randn(2, 3, 64, 48, dtype=torch.float64)
    torch.testing.assert_close(features(x), reference(x), atol=1e-10, rtol=1e-10)


def test_channels_last_backbone_gives_the_same_features_in_channels_last():
    """
    ``channels_last=True`` returns channels-last features equal (float64, 1e-10) to the default
    layout's with the same weights. Fails if the flag is ignored (no speed-up) or changes the
    computation.
    """
    torch.manual_seed(0)
    plain = MobileNetV2Backbone(pretrained=False, freeze_at=2).double().eval()
    torch.manual_seed(0)
    fast = MobileNetV2Backbone(pretrained=False, freeze_at=2, channels_last=True).double().eval()
    fast.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 96, 64, dtype=torch.float64)
    expected, got = plain(x), fast(x)
    for name in expected:
        assert got[name].is_contiguous(memory_format=torch.channels_last), name
        assert not expected[name].is_contiguous(memory_format=torch.channels_last), name
        torch.testing.assert_close(got[name], expected[name], atol=1e-10, rtol=1e-10)
