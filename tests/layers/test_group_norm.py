"""GroupNormFP32: the head's GN computes in fp32 under CPU autocast, as CUDA autocast runs it."""

import torch
from detectron2.layers import ShapeSpec
from torch import nn

from atss.layers import GroupNormFP32
from atss.modeling.head import ATSSHead


def _pair(channels=64):
    torch.manual_seed(0)
    plain = nn.GroupNorm(32, channels)
    nn.init.normal_(plain.weight)
    nn.init.normal_(plain.bias)
    fp32 = GroupNormFP32(32, channels)
    fp32.load_state_dict(plain.state_dict())
    return plain, fp32


def test_in_fp32_it_is_group_norm_itself():
    """Same state dict keys, bitwise the same output for an fp32 input, and for an fp64 one
    with the layer in fp64. Fails if the layer renames or adds parameters (checkpoints of
    nn.GroupNorm heads would not load), changes the fp32 computation, or casts every input
    that is not fp32 (an fp64 input meets fp64 parameters as fp32: a dtype error)."""
    plain, fp32 = _pair()
    assert plain.state_dict().keys() == fp32.state_dict().keys()
    x = torch.randn(2, 64, 9, 7) * 3 + 1
    assert torch.equal(fp32(x), plain(x))
    out = fp32.double()(x.double())
    assert out.dtype == torch.float64 and torch.equal(out, plain.double()(x.double()))


def test_under_cpu_bf16_autocast_it_normalises_in_fp32():
    """A bf16 input under CPU bf16 autocast gives an fp32 output, bitwise GroupNorm of the
    input cast to fp32. Fails if the layer lets autocast's CPU rule run it in bf16 (bf16
    output, means and variances from 8-bit values)."""
    plain, fp32 = _pair()
    x = (torch.randn(2, 64, 9, 7) * 3 + 1).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fp32(x)
    assert out.dtype == torch.float32
    assert torch.equal(out, plain(x.float()))


def test_the_heads_gn_runs_in_fp32_under_cpu_autocast():
    """The head built with its default ``norm="GN"``: under CPU bf16 autocast the towers'
    convolutions run in bf16 and every norm layer returns fp32, in a forward and a backward.
    Fails if "GN" builds plain ``nn.GroupNorm`` (CPU autocast then normalises in bf16, which
    lowered the bf16-trained demo's AP50: docs/experiments.md)."""
    head = ATSSHead(input_shape=[ShapeSpec(channels=64)] * 2, num_classes=3, conv_dims=[64, 64])
    norms = [m for m in head.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 4  # 2 towers x 2 convs
    seen = []
    for m in norms:
        m.register_forward_hook(lambda m, i, o: seen.append((i[0].dtype, o.dtype)))
    features = [torch.randn(1, 64, 8, 8), torch.randn(1, 64, 4, 4)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, boxes, ctr = head(features)
        loss = sum(t.float().sum() for t in [*logits, *boxes, *ctr])
    loss.backward()
    assert seen and all(dtypes == (torch.bfloat16, torch.float32) for dtypes in seen), seen
    assert all(torch.isfinite(m.weight.grad).all() for m in norms)
