"""
Tests of the torchvision-based deformable convolutions in ``atss.layers.deform_conv``.

References used:
* ``nn.Conv2d``: with zero offsets (and mask 1) a deformable conv is a regular conv;
* Detectron2's ``DeformConv`` CPU forward (which itself calls torchvision when
  deformable_groups == 1): plumbing of stride/padding/dilation/groups;
* a naive implementation written from Detectron2's CUDA kernel (offset channel ``2k`` is the
  y and ``2k + 1`` the x displacement of sampling point ``k = i * kw + j``, per deformable
  group; mask channel ``k`` per group), which pins down the offset/mask layout independently
  of torchvision, including deformable_groups > 1 and modulation.
"""

import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import DeformConv as D2DeformConv
from detectron2.layers import FrozenBatchNorm2d
from detectron2.layers import ModulatedDeformConv as D2ModulatedDeformConv
from torch import nn

from atss.layers import DeformConv, DeformConvWithOffset, ModulatedDeformConv

# (in, out, kernel, stride, padding, dilation, groups)
CONV_GEOMETRIES = [
    (4, 6, 3, 1, 1, 1, 1),
    (4, 6, 3, 2, 1, 1, 2),
    (6, 4, 3, 1, 2, 2, 1),
    (4, 4, (3, 1), 1, (1, 0), 1, 4),
]


def _out_size(size, kernel, stride, padding, dilation):
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _offset_and_mask(x, conv, scale=2.0, seed=0):
    """Random offsets (N, 2*dg*K, Ho, Wo) and masks (N, dg*K, Ho, Wo) for ``conv``."""
    gen = torch.Generator().manual_seed(seed)
    kh, kw = conv.kernel_size
    out_hw = [
        _out_size(s, k, st, p, d)
        for s, k, st, p, d in zip(
            x.shape[-2:], conv.kernel_size, conv.stride, conv.padding, conv.dilation
        )
    ]
    num_points = conv.deformable_groups * kh * kw
    offset = scale * torch.randn(x.shape[0], 2 * num_points, *out_hw, generator=gen)
    mask = torch.rand(x.shape[0], num_points, *out_hw, generator=gen)
    return offset.to(x.dtype), mask.to(x.dtype)


def _naive_modulated_deform_conv(x, offset, mask, weight, bias, stride, padding, dilation, groups):
    """
    Direct implementation of the DCNv2 sum, written from Detectron2's CUDA im2col kernel:
    out[o, p] = sum_{c, k} w[o, c, k] * mask[g(c), k, p] * bilinear(x[c], p0 + p_k + offset),
    with zero outside the image (grid_sample's "zeros" padding and align_corners=True give
    exactly the kernel's per-corner zero bilinear interpolation).
    """
    n, c, h, w = x.shape
    kh, kw = weight.shape[-2:]
    dg = offset.shape[1] // (2 * kh * kw)
    ho, wo = offset.shape[-2:]
    base_y = torch.arange(ho, dtype=x.dtype).view(ho, 1) * stride[0] - padding[0]
    base_x = torch.arange(wo, dtype=x.dtype).view(1, wo) * stride[1] - padding[1]
    columns = []  # per input channel, K sampled maps: (N, C, K, Ho, Wo)
    for g in range(dg):
        xg = x[:, g * c // dg : (g + 1) * c // dg]
        samples = []
        for i in range(kh):
            for j in range(kw):
                k = i * kw + j
                dy = offset[:, g * 2 * kh * kw + 2 * k]
                dx = offset[:, g * 2 * kh * kw + 2 * k + 1]
                py = base_y + i * dilation[0] + dy
                px = base_x + j * dilation[1] + dx
                grid = torch.stack([2 * px / (w - 1) - 1, 2 * py / (h - 1) - 1], dim=-1)
                sampled = F.grid_sample(xg, grid, mode="bilinear", align_corners=True)
                samples.append(sampled * mask[:, g * kh * kw + k].unsqueeze(1))
        columns.append(torch.stack(samples, dim=2))
    columns = torch.cat(columns, dim=1)
    cols = columns.view(n, groups, c // groups, kh * kw, ho, wo)
    wts = weight.view(groups, -1, c // groups, kh * kw)
    out = torch.einsum("ngckhw,gock->ngohw", cols, wts).reshape(n, -1, ho, wo)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out


@pytest.mark.parametrize("geometry", CONV_GEOMETRIES)
@pytest.mark.parametrize("bias", [True, False])
def test_modulated_zero_offset_unit_mask_is_conv2d(geometry, bias):
    cin, cout, k, s, p, d, g = geometry
    torch.manual_seed(0)
    dcn = ModulatedDeformConv(cin, cout, k, stride=s, padding=p, dilation=d, groups=g, bias=bias)
    if bias:
        nn.init.normal_(dcn.bias)
    conv = nn.Conv2d(cin, cout, k, stride=s, padding=p, dilation=d, groups=g, bias=bias)
    conv.load_state_dict(dcn.state_dict())
    x = torch.randn(2, cin, 9, 11)
    offset, mask = _offset_and_mask(x, dcn)
    out = dcn(x, torch.zeros_like(offset), torch.ones_like(mask))
    torch.testing.assert_close(out, conv(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("geometry", CONV_GEOMETRIES)
def test_deform_zero_offset_is_conv2d(geometry):
    cin, cout, k, s, p, d, g = geometry
    dcn = DeformConv(cin, cout, k, stride=s, padding=p, dilation=d, groups=g)
    conv = nn.Conv2d(cin, cout, k, stride=s, padding=p, dilation=d, groups=g, bias=False)
    conv.load_state_dict(dcn.state_dict())
    x = torch.randn(2, cin, 9, 11)
    offset, _ = _offset_and_mask(x, dcn)
    torch.testing.assert_close(dcn(x, torch.zeros_like(offset)), conv(x), rtol=1e-5, atol=1e-5)


def test_deform_conv_with_offset_at_init_is_half_conv_plus_bias():
    # conv_offset is zero-initialised: offsets 0 and mask sigmoid(0) = 0.5 everywhere, so the
    # output is 0.5 * conv(x) (without bias) + bias.
    m = DeformConvWithOffset(4, 6, kernel_size=3, stride=2, padding=1)
    nn.init.normal_(m.conv.bias)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False)
    conv.weight.data.copy_(m.conv.weight)
    x = torch.randn(2, 4, 10, 7)
    expected = 0.5 * conv(x) + m.conv.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(m(x), expected, rtol=1e-5, atol=1e-5)
    assert m.conv_offset.out_channels == 27
    assert not m.conv_offset.weight.any() and not m.conv_offset.bias.any()


@pytest.mark.parametrize("geometry", CONV_GEOMETRIES)
def test_matches_detectron2_deform_conv_on_cpu(geometry):
    # Detectron2's DeformConv forward falls back to torchvision on CPU (deformable_groups 1
    # only); its ModulatedDeformConv has no CPU path at all.
    cin, cout, k, s, p, d, g = geometry
    kwargs = dict(stride=s, padding=p, dilation=d, groups=g)
    ref = D2DeformConv(cin, cout, k, **kwargs)
    ours = DeformConv(cin, cout, k, **kwargs)
    ours_modulated = ModulatedDeformConv(cin, cout, k, bias=False, **kwargs)
    ours.load_state_dict(ref.state_dict())
    ours_modulated.load_state_dict(ref.state_dict())
    x = torch.randn(2, cin, 9, 11)
    offset, mask = _offset_and_mask(x, ours)
    expected = ref(x, offset)
    torch.testing.assert_close(ours(x, offset), expected)
    torch.testing.assert_close(ours_modulated(x, offset, torch.ones_like(mask)), expected)


@pytest.mark.parametrize("deformable_groups", [1, 2])
@pytest.mark.parametrize("geometry", CONV_GEOMETRIES)
def test_matches_naive_dcn_v2(geometry, deformable_groups):
    cin, cout, k, s, p, d, g = geometry
    m = ModulatedDeformConv(
        cin, cout, k, stride=s, padding=p, dilation=d, groups=g, deformable_groups=deformable_groups
    ).double()
    nn.init.normal_(m.bias)
    x = torch.randn(2, cin, 9, 11, dtype=torch.float64)
    offset, mask = _offset_and_mask(x, m)
    expected = _naive_modulated_deform_conv(
        x, offset, mask, m.weight, m.bias, m.stride, m.padding, m.dilation, g
    )
    torch.testing.assert_close(m(x, offset, mask), expected)


def test_wrong_offset_channels_raise():
    m = ModulatedDeformConv(4, 4, 3, padding=1, deformable_groups=2)
    x = torch.randn(1, 4, 5, 5)
    with pytest.raises(ValueError, match="offset"):
        m(x, torch.zeros(1, 18, 5, 5), torch.ones(1, 18, 5, 5))
    with pytest.raises(ValueError, match="mask"):
        m(x, torch.zeros(1, 36, 5, 5), torch.ones(1, 9, 5, 5))


def test_empty_batch():
    m = ModulatedDeformConv(4, 6, 3, stride=2, padding=1)
    out = m(torch.zeros(0, 4, 9, 9), torch.zeros(0, 18, 5, 5), torch.zeros(0, 9, 5, 5))
    assert out.shape == (0, 6, 5, 5)


def test_gradients_on_cpu():
    m = ModulatedDeformConv(4, 6, 3, padding=1, deformable_groups=2)
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    offset, mask = _offset_and_mask(x, m, scale=0.7)
    offset.requires_grad_()
    mask.requires_grad_()
    m(x, offset, mask).square().sum().backward()
    for t in [x, offset, mask, m.weight, m.bias]:
        assert t.grad is not None and t.grad.abs().sum() > 0

    plain = DeformConv(4, 6, 3, padding=1)
    offset = offset[:, :18].detach().requires_grad_()
    plain(x, offset).sum().backward()
    assert plain.weight.grad.abs().sum() > 0 and offset.grad.abs().sum() > 0


def test_gradcheck():
    m = ModulatedDeformConv(2, 3, 3, padding=1, deformable_groups=2).double()
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    offset, mask = _offset_and_mask(x, m, scale=0.7)
    offset.requires_grad_()
    mask.requires_grad_()
    assert torch.autograd.gradcheck(lambda *a: m(*a), (x, offset, mask))


def test_deform_conv_with_offset_trains():
    # conv_offset starts at zero; it must still receive gradients (through offsets and mask).
    m = DeformConvWithOffset(4, 6)
    m(torch.randn(2, 4, 8, 8)).square().sum().backward()
    assert m.conv_offset.weight.grad.abs().sum() > 0
    assert m.conv.weight.grad.abs().sum() > 0


class _Wrapper(nn.Module):
    """Traceable module feeding an offset/mask conv into ModulatedDeformConv."""

    def __init__(self):
        super().__init__()
        self.offset = nn.Conv2d(4, 27, 3, padding=1)
        self.dcn = ModulatedDeformConv(
            4, 6, 3, padding=1, norm=nn.GroupNorm(2, 6), activation=F.relu
        )

    def forward(self, x):
        o = self.offset(x)
        return self.dcn(x, o[:, :18], o[:, 18:].sigmoid())


@pytest.mark.parametrize("make_module", [_Wrapper, lambda: DeformConvWithOffset(4, 6, stride=2)])
def test_trace_save_load(make_module, tmp_path):
    torch.manual_seed(0)
    m = make_module().eval()
    # Non-zero offsets so that the deformation itself is exercised.
    for p in m.parameters():
        nn.init.normal_(p, std=0.1)
    traced = torch.jit.trace(m, torch.randn(1, 4, 12, 12))
    path = str(tmp_path / "dcn.pt")
    torch.jit.save(traced, path)
    loaded = torch.jit.load(path)
    x = torch.randn(2, 4, 16, 20)  # a different size than the tracing input
    expected = m(x)
    torch.testing.assert_close(loaded(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("deformable_groups", [1, 2])
def test_state_dict_parity_with_detectron2(bias, deformable_groups):
    args = (8, 16, 3)
    kwargs = dict(stride=2, padding=1, groups=2, deformable_groups=deformable_groups, bias=bias)
    ref = D2ModulatedDeformConv(*args, **kwargs, norm=FrozenBatchNorm2d(16))
    ours = ModulatedDeformConv(*args, **kwargs, norm=FrozenBatchNorm2d(16))
    ref_sd, ours_sd = ref.state_dict(), ours.state_dict()
    assert {k: v.shape for k, v in ref_sd.items()} == {k: v.shape for k, v in ours_sd.items()}
    assert (ours.bias is None) == (not bias)
    ours.load_state_dict(ref_sd)
    ref.load_state_dict(ours_sd)

    # Plain DeformConv: weight (+ norm) only, no bias, in both.
    assert D2DeformConv(*args).state_dict().keys() == DeformConv(*args).state_dict().keys()


def test_same_init_as_detectron2():
    torch.manual_seed(0)
    ref = D2ModulatedDeformConv(8, 16, 3, groups=2)
    torch.manual_seed(0)
    ours = ModulatedDeformConv(8, 16, 3, groups=2)
    torch.testing.assert_close(ours.weight, ref.weight, rtol=0, atol=0)
    torch.testing.assert_close(ours.bias, ref.bias, rtol=0, atol=0)
