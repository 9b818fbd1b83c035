"""
Tests of ``atss.modeling.backbone.resnet``: the LazyConfig stage builder must build exactly
what Detectron2's yacs ``build_resnet_backbone`` builds, with DCN stages that run forward and
backward on CPU and trace into a saveable module.

Full-size backbones are compared structurally (keys, shapes, parameter counts, frozen
parameters) after building them on the "meta" device, which skips the ~1 s of weight
initialisation per X-101 on CPU; values are compared on a real R-50 DCN build.
"""

import pytest
import torch
from detectron2.config import LazyCall as L
from detectron2.config import get_cfg, instantiate
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone.resnet import BasicStem, ResNet, build_resnet_backbone
from omegaconf import ListConfig

from atss.layers import DeformConv, ModulatedDeformConv
from atss.modeling.backbone import DeformBottleneckBlock, build_resnet, make_resnet_stages

NO_DCN = (False, False, False, False)
DCN_RES3_RES5 = (False, True, True, True)  # ATSS DCNv2 ResNets
DCN_RES4_RES5 = (False, False, True, True)  # ATSS DCNv2 ResNeXts

# name: (depth, num_groups, width_per_group, stride_in_1x1, DCN stages in the ATSS configs)
BACKBONES = {
    "R-50": (50, 1, 64, True, DCN_RES3_RES5),
    "R-101": (101, 1, 64, True, DCN_RES3_RES5),
    "X-101-32x8d": (101, 32, 8, False, DCN_RES4_RES5),
    "X-101-64x4d": (101, 64, 4, False, DCN_RES4_RES5),
}
# Parameters (trainable + frozen; FrozenBN affine terms are buffers) without DCN, in millions.
KNOWN_PARAMS_M = {"R-50": 23.45, "R-101": 42.39, "X-101-32x8d": 86.54, "X-101-64x4d": 81.20}


def _d2_backbone(
    depth,
    num_groups=1,
    width_per_group=64,
    stride_in_1x1=True,
    deform_on_per_stage=NO_DCN,
    deform_modulated=False,
    deform_num_groups=1,
    res5_dilation=1,
):
    """Detectron2's yacs-built backbone with ATSS's settings (res3-res5 out, freeze_at 2)."""
    cfg = get_cfg()
    r = cfg.MODEL.RESNETS
    r.DEPTH = depth
    r.NUM_GROUPS = num_groups
    r.WIDTH_PER_GROUP = width_per_group
    r.STRIDE_IN_1X1 = stride_in_1x1
    r.DEFORM_ON_PER_STAGE = list(deform_on_per_stage)
    r.DEFORM_MODULATED = deform_modulated
    r.DEFORM_NUM_GROUPS = deform_num_groups
    r.RES5_DILATION = res5_dilation
    r.RES2_OUT_CHANNELS = 64 if depth in (18, 34) else 256
    r.OUT_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.BACKBONE.FREEZE_AT = 2
    return build_resnet_backbone(cfg, ShapeSpec(channels=3))


def _num_params(model):
    return sum(p.numel() for p in model.parameters())


def _assert_same_structure(ours, ref):
    ours_sd, ref_sd = ours.state_dict(), ref.state_dict()
    assert [(k, v.shape) for k, v in ours_sd.items()] == [(k, v.shape) for k, v in ref_sd.items()]
    assert _num_params(ours) == _num_params(ref)
    frozen = {n for n, p in ref.named_parameters() if not p.requires_grad}
    assert {n for n, p in ours.named_parameters() if not p.requires_grad} == frozen
    assert ours.output_shape() == ref.output_shape()


@pytest.mark.parametrize("dcn", [False, True], ids=["plain", "dcnv2"])
@pytest.mark.parametrize("name", list(BACKBONES))
def test_matches_detectron2_yacs_builder(name, dcn):
    depth, groups, width, stride_in_1x1, dcn_stages = BACKBONES[name]
    deform_on_per_stage = dcn_stages if dcn else NO_DCN
    kwargs = dict(
        num_groups=groups,
        width_per_group=width,
        stride_in_1x1=stride_in_1x1,
        deform_on_per_stage=deform_on_per_stage,
        deform_modulated=True,
    )
    with torch.device("meta"):
        ref = _d2_backbone(depth, **kwargs)
        ours = build_resnet(depth, **kwargs)
    _assert_same_structure(ours, ref)
    if not dcn:
        assert round(_num_params(ours) / 1e6, 2) == KNOWN_PARAMS_M[name]

    dcn_blocks = [b for b in ours.modules() if isinstance(b, DeformBottleneckBlock)]
    num_blocks = [len(s) for s in ours.stages]
    assert len(dcn_blocks) == sum(n for n, on in zip(num_blocks, deform_on_per_stage) if on)
    for block in dcn_blocks:
        assert type(block.conv2) is ModulatedDeformConv
        assert block.conv2_offset.out_channels == 27


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(depth=18),
        dict(depth=34),
        dict(depth=50, deform_on_per_stage=DCN_RES3_RES5, deform_modulated=False),
        dict(depth=50, deform_on_per_stage=(True,) * 4, deform_modulated=True, deform_num_groups=2),
        dict(depth=152, num_groups=32, width_per_group=8, stride_in_1x1=False, res5_dilation=2),
    ],
    ids=["R-18", "R-34", "R-50-dcnv1", "R-50-dcnv2-2groups", "X-152-dilated"],
)
def test_other_variants_match_detectron2(kwargs):
    with torch.device("meta"):
        ref = _d2_backbone(**kwargs)
        ours = build_resnet(**kwargs)
    _assert_same_structure(ours, ref)
    expected_op = ModulatedDeformConv if kwargs.get("deform_modulated") else DeformConv
    for block in ours.modules():
        if isinstance(block, DeformBottleneckBlock):
            assert type(block.conv2) is expected_op


def test_same_seed_same_weights_as_detectron2():
    # Replacing conv2 does not consume random numbers, so a seeded build reproduces
    # Detectron2's weights exactly (and its checkpoints load with identical semantics).
    kwargs = dict(deform_on_per_stage=DCN_RES3_RES5, deform_modulated=True)
    torch.manual_seed(0)
    ref = _d2_backbone(50, **kwargs)
    torch.manual_seed(0)
    ours = build_resnet(50, **kwargs)
    ref_sd = ref.state_dict()
    for k, v in ours.state_dict().items():
        assert torch.equal(v, ref_sd[k]), k


def test_detectron2_make_default_stages_builds_wrong_resnext():
    # Why make_resnet_stages exists: make_default_stages forces bottleneck_channels to
    # out_channels // 4 (256 // 4 = 64 in res2, i.e. 32 groups of width 2 instead of 8), so
    # "X-101-32x8d" silently comes out with 21.7M parameters instead of 86.5M.
    with torch.device("meta"):
        wrong = ResNet(
            BasicStem(3, 64, "FrozenBN"),
            ResNet.make_default_stages(101, num_groups=32, stride_in_1x1=False, norm="FrozenBN"),
            out_features=["res3", "res4", "res5"],
        )
        right = ResNet(
            BasicStem(3, 64, "FrozenBN"),
            make_resnet_stages(101, num_groups=32, width_per_group=8, stride_in_1x1=False),
            out_features=["res3", "res4", "res5"],
        )
    assert round(_num_params(wrong) / 1e6, 1) == 21.7
    assert round(_num_params(right) / 1e6, 2) == 86.54
    assert wrong.res2[0].conv2.weight.shape[0] == 64
    assert right.res2[0].conv2.weight.shape[0] == 256


def test_lazy_config_instantiate():
    # instantiate() passes lists as omegaconf ListConfig; both config styles must work.
    stages_cfg = L(make_resnet_stages)(
        depth=50, deform_on_per_stage=[False, True, True, True], deform_modulated=True
    )
    cfg_a = L(build_resnet)(
        depth=50,
        out_features=["res3", "res4", "res5"],
        deform_on_per_stage=[False, True, True, True],
        deform_modulated=True,
    )
    cfg_b = L(ResNet)(
        stem=L(BasicStem)(in_channels=3, out_channels=64, norm="FrozenBN"),
        stages=stages_cfg,
        out_features=["res3", "res4", "res5"],
        freeze_at=2,
    )
    assert isinstance(cfg_a.deform_on_per_stage, ListConfig)
    with torch.device("meta"):
        a = instantiate(cfg_a)
        b = instantiate(cfg_b)
        ref = _d2_backbone(50, deform_on_per_stage=DCN_RES3_RES5, deform_modulated=True)
    _assert_same_structure(a, ref)
    _assert_same_structure(b, ref)
    assert type(a._out_features) is list


def _randomize_offsets(model, std=0.05):
    """Non-zero offset/mask convs, so that the deformable path is actually exercised."""
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, DeformBottleneckBlock):
            with torch.no_grad():
                m.conv2_offset.weight.copy_(
                    std * torch.randn(m.conv2_offset.weight.shape, generator=gen)
                )
                m.conv2_offset.bias.copy_(torch.randn(m.conv2_offset.bias.shape, generator=gen))


@pytest.mark.parametrize("modulated", [True, False], ids=["dcnv2", "dcnv1"])
def test_dcn_resnet_trains_on_cpu(modulated):
    torch.manual_seed(0)
    model = build_resnet(50, deform_on_per_stage=DCN_RES3_RES5, deform_modulated=modulated)
    model.train()
    out = model(torch.randn(2, 3, 64, 64))
    assert [tuple(v.shape) for v in out.values()] == [
        (2, 512, 8, 8),
        (2, 1024, 4, 4),
        (2, 2048, 2, 2),
    ]
    sum(v.square().mean() for v in out.values()).backward()
    for stage in (model.res3, model.res5):
        block = stage[0]
        assert isinstance(block, DeformBottleneckBlock)
        # The offset conv starts at zero but must still learn.
        assert block.conv2_offset.weight.grad.abs().sum() > 0
        assert block.conv2.weight.grad.abs().sum() > 0
    assert model.res2[0].conv1.weight.grad is None  # frozen (freeze_at=2)


def test_dcnv1_block_matches_detectron2_forward():
    # Detectron2's DCNv1 forward runs on CPU (via torchvision, one deformable group), so the
    # whole block can be compared with the same weights and non-zero offsets.
    kwargs = dict(deform_on_per_stage=DCN_RES3_RES5, deform_modulated=False)
    ref = _d2_backbone(50, **kwargs).eval()
    ours = build_resnet(50, **kwargs).eval()
    _randomize_offsets(ref)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected, actual = ref(x), ours(x)
    for k in expected:
        torch.testing.assert_close(actual[k], expected[k])


def test_trace_save_load_dcn_resnet(tmp_path):
    torch.manual_seed(0)
    model = build_resnet(50, deform_on_per_stage=DCN_RES3_RES5, deform_modulated=True).eval()
    _randomize_offsets(model)
    with torch.no_grad():
        traced = torch.jit.trace(model, torch.randn(1, 3, 64, 64), strict=False)
    path = str(tmp_path / "dcn_r50.pt")
    torch.jit.save(traced, path)
    loaded = torch.jit.load(path)
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        expected, actual = model(x), loaded(x)
    assert list(actual) == ["res3", "res4", "res5"]
    for k in expected:
        torch.testing.assert_close(actual[k], expected[k], rtol=0, atol=0)


def test_stage_builder_arguments():
    stages = make_resnet_stages(
        depth=50, deform_on_per_stage=ListConfig([True, False, False, False])
    )
    assert [len(s) for s in stages] == [3, 4, 6, 3]
    assert isinstance(stages[0][0], DeformBottleneckBlock)
    assert [s[0].stride for s in stages] == [1, 2, 2, 2]
    with pytest.raises(AssertionError):
        make_resnet_stages(depth=18, deform_on_per_stage=(True, False, False, False))
    with pytest.raises(AssertionError):
        make_resnet_stages(depth=50, deform_on_per_stage=(True, False))


def test_dcn_offsets_start_as_in_the_authors_code_or_detectron2():
    """
    dcn_init="authors": the offset/mask conv of every deformable block starts as the authors'
    DFConv2d.offset, kaiming_uniform_(a=1) — uniform(±sqrt(3 / fan_in)), fan_in = C_in·3·3 —
    with zero bias; "detectron2" (the default, Detectron2's builder) zero-initialises it.
    Fails if the switch does not reach the blocks or the authors' bound is wrong (e.g.
    kaiming's ReLU gain, bound sqrt(6 / fan_in)).
    """
    kwargs = dict(depth=50, deform_on_per_stage=DCN_RES3_RES5, deform_modulated=True)
    torch.manual_seed(0)
    authors = make_resnet_stages(dcn_init="authors", **kwargs)
    detectron2 = make_resnet_stages(**kwargs)
    for stage_a, stage_d in zip(authors[1:], detectron2[1:]):
        for block_a, block_d in zip(stage_a, stage_d):
            w = block_a.conv2_offset.weight
            bound = (3.0 / (block_a.conv2_offset.in_channels * 9)) ** 0.5
            assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound
            assert abs(w.std().item() - bound / 3**0.5) < 0.05 * bound
            assert torch.all(block_a.conv2_offset.bias == 0)
            assert torch.all(block_d.conv2_offset.weight == 0)
    with pytest.raises(ValueError, match="dcn_init"):
        make_resnet_stages(dcn_init="kaiming", **kwargs)
