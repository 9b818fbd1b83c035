"""The ATSS head: shapes, initialisation, per-level scales, DCN towers."""

import pytest
import torch
from detectron2.layers import ShapeSpec

from atss import ATSSHead
from atss.layers import DeformConvWithOffset


def _head(**kw):
    torch.manual_seed(0)
    args = dict(input_shape=[ShapeSpec(channels=32)] * 3, num_classes=5, conv_dims=[32, 32])
    args.update(kw)
    return ATSSHead(**args)


def _features(n=2):
    return [torch.randn(n, 32, s, s + 1) for s in (16, 8, 4)]


def test_output_shapes_per_level():
    """(N, #A·C), (N, #A·4), (N, #A) maps per level, at each level's resolution."""
    head = _head(num_anchors=3)
    logits, boxes, ctr = head(_features())
    for lg, b, c, s in zip(logits, boxes, ctr, (16, 8, 4)):
        assert lg.shape == (2, 15, s, s + 1)
        assert b.shape == (2, 12, s, s + 1)
        assert c.shape == (2, 3, s, s + 1)


def test_initial_class_probability_is_prior():
    """Prior-prob bias: the initial foreground probability is ~0.01 everywhere."""
    logits, _, _ = _head()(_features())
    p = torch.cat([x.flatten() for x in logits]).sigmoid()
    assert abs(p.mean().item() - 0.01) < 0.002


def test_gn_towers_and_centerness_on_box_tower():
    """Towers use GroupNorm(32); centerness reads the box tower (its grad reaches bbox_subnet)."""
    head = _head()
    assert any(isinstance(m, torch.nn.GroupNorm) for m in head.cls_subnet)
    _, _, ctr = head(_features())
    sum(c.sum() for c in ctr).backward()
    assert head.bbox_subnet[0].weight.grad.abs().sum() > 0
    assert head.cls_subnet[0].weight.grad is None


def test_scales_start_at_one_and_receive_gradients():
    """One learnable scale per level, initialised to 1.0, each gets a gradient."""
    head = _head()
    assert [s.scale.item() for s in head.scales] == [1.0, 1.0, 1.0]
    _, boxes, _ = head(_features())
    sum((b**2).sum() for b in boxes).backward()
    assert all(s.scale.grad is not None and s.scale.grad.abs() > 0 for s in head.scales)


def test_point_coding_starts_at_four_strides():
    """POINT mode: the box bias is 4 (initial box = the 8-stride anchor)."""
    head = _head(box_coding="POINT")
    assert torch.all(head.bbox_pred.bias == 4.0)


def test_dcn_in_the_last_conv_of_each_tower_runs_and_trains_on_cpu():
    """use_dcn: the last tower conv of both towers is a modulated deformable conv."""
    head = _head(use_dcn=True)
    for tower in (head.cls_subnet, head.bbox_subnet):
        convs = [m for m in tower if isinstance(m, (torch.nn.Conv2d, DeformConvWithOffset))]
        assert isinstance(convs[-1], DeformConvWithOffset)
        assert not isinstance(convs[0], DeformConvWithOffset)
    logits, boxes, ctr = head(_features())
    (sum(x.sum() for x in logits) + sum(x.sum() for x in boxes)).backward()
    assert head.cls_subnet[-3].conv.weight.grad is not None


def _is_uniform_in(w, bound):
    """All values in [-bound, bound] and spread over it (std of U(-b, b) is b / sqrt(3))."""
    return bool(w.abs().max() <= bound) and abs(w.std().item() - bound / 3**0.5) < 0.1 * bound


def test_dcn_towers_start_as_in_the_authors_code():
    """
    dcn_init="authors" (set by the dcnv2 configs): sfzhang15/ATSS's head init loop
    sets every nn.Conv2d to N(0, 0.01), zero bias — DFConv2d's offset/mask conv is one — and
    skips its ModulatedDeformConv, which keeps its own reset_parameters():
    uniform(±1/sqrt(C_in·3·3)), zero bias. Fails if the deformable weights get N(0, 0.01)
    or the offset conv stays zero (the Detectron2 convention).
    """
    head = _head(
        use_dcn=True,
        dcn_init="authors",
        conv_dims=[64, 64],
        input_shape=[ShapeSpec(channels=64)] * 3,
    )
    bound = 1.0 / (64 * 3 * 3) ** 0.5  # 1/24, independent of the code: C_in = 64, 3x3 kernel
    for tower in (head.cls_subnet, head.bbox_subnet):
        dcn = tower[-3]
        assert _is_uniform_in(dcn.conv.weight, bound)
        assert torch.all(dcn.conv.bias == 0)
        offset = dcn.conv_offset.weight
        assert abs(offset.std().item() - 0.01) < 0.001 and abs(offset.mean().item()) < 0.001
        assert torch.all(dcn.conv_offset.bias == 0)


def test_dcn_towers_detectron2_init_is_reachable():
    """
    dcn_init="detectron2" (the default): zero offset/mask conv (offsets 0, masks 0.5 at the
    start, the DCNv2 convention) and N(0, 0.01) deformable weights like the other tower convs.
    Fails if the switch is ignored (authors' init) or an unknown value is accepted silently.
    """
    for head in (_head(use_dcn=True, dcn_init="detectron2"), _head(use_dcn=True)):
        for tower in (head.cls_subnet, head.bbox_subnet):
            dcn = tower[-3]
            assert torch.all(dcn.conv_offset.weight == 0) and torch.all(dcn.conv_offset.bias == 0)
            assert abs(dcn.conv.weight.std().item() - 0.01) < 0.001
    with pytest.raises(ValueError, match="dcn_init"):
        _head(use_dcn=True, dcn_init="zero")
