"""
Every LazyConfig file under configs/ loads and its model instantiates; the COCO model zoo has the
authors' recipes (backbone, DCN placement, pixel normalisation, checkpoint, schedule, multi-scale
training); the ablation configs change only what they claim to and their head matches their
anchors.

Backbones are instantiated on the "meta" device (no memory, no weight init: an X-101 costs
~1 s to initialise on this CPU), the rest of the model on the CPU. Nothing is downloaded and no
dataset is touched: the train/test loaders are checked as config structure, their mappers and
augmentations are instantiated.
"""

import copy
import functools
import glob
import itertools
import os
import re

import numpy as np
import pytest
import torch
from detectron2.checkpoint.catalog import ModelCatalog
from detectron2.config import LazyConfig, instantiate
from detectron2.data import transforms as T
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone.resnet import BottleneckBlock
from detectron2.utils.events import EventStorage

from atss import ATSS
from atss.modeling.backbone import DeformBottleneckBlock
from atss.modeling.tta import ATSSWithTTA, build_tta_model
from tests.atss_testing import make_inputs, random_boxes

ALL_CONFIGS = sorted(glob.glob("configs/**/*.py", recursive=True))
COCO_CONFIGS = [f for f in ALL_CONFIGS if f.startswith("configs/COCO/")]
ABLATIONS = [f for f in COCO_CONFIGS if "/ablations/" in f]

NO = (False, False, False, False)
RES3_5 = (False, True, True, True)
RES4_5 = (False, False, True, True)
MSRA_STD = [1.0, 1.0, 1.0]
X32_STD = [57.375, 57.120, 58.395]
# config: (depth, groups, width, stride_in_1x1, DCN per stage, pixel_std, checkpoint, max_iter, MS)
ZOO = {
    "atss_R_50_FPN_1x": (50, 1, 64, True, NO, MSRA_STD, "MSRA/R-50", 90000, False),
    "atss_dcnv2_R_50_FPN_1x": (50, 1, 64, True, RES3_5, MSRA_STD, "MSRA/R-50", 90000, False),
    "atss_R_101_FPN_2x_ms": (101, 1, 64, True, NO, MSRA_STD, "MSRA/R-101", 180000, True),
    "atss_dcnv2_R_101_FPN_2x_ms": (101, 1, 64, True, RES3_5, MSRA_STD, "MSRA/R-101", 180000, True),
    "atss_X_101_32x8d_FPN_2x_ms": (
        101,
        32,
        8,
        False,
        NO,
        X32_STD,
        "FAIR/X-101-32x8d",
        180000,
        True,
    ),
    "atss_dcnv2_X_101_32x8d_FPN_2x_ms": (
        *(101, 32, 8, False, RES4_5, X32_STD, "FAIR/X-101-32x8d", 180000, True),
    ),
    "atss_X_101_64x4d_FPN_2x_ms": (
        101,
        64,
        4,
        False,
        NO,
        MSRA_STD,
        "FAIR/X-101-64x4d",
        180000,
        True,
    ),
    "atss_dcnv2_X_101_64x4d_FPN_2x_ms": (
        *(101, 64, 4, False, RES4_5, MSRA_STD, "FAIR/X-101-64x4d", 180000, True),
    ),
    "atss_dcnv2_X_101_64x4d_FPN_2x_ms_tta": (
        *(101, 64, 4, False, RES4_5, MSRA_STD, "FAIR/X-101-64x4d", 180000, True),
    ),
}
# Backbone parameters (FrozenBN affine terms are buffers), Detectron2 yacs builds.
BACKBONE_PARAMS_M = {(50, 1): 23.45, (101, 1): 42.39, (101, 32): 86.54, (101, 64): 81.20}


def _name(path):
    return os.path.splitext(os.path.basename(path))[0]


@functools.lru_cache(maxsize=None)
def _cfg(path):
    """The loaded config (cached: treat as read-only)."""
    return LazyConfig.load(path)


@functools.lru_cache(maxsize=None)
def _model(path):
    """
    The config's model with everything on the meta device except the anchor generator (the model
    reads its anchor side at construction). Cached: built once per config for all tests.
    """
    model_cfg = copy.deepcopy(_cfg(path).model)
    if "dataset" in _cfg(path):  # configs/Custom: the class count comes from data not given here
        model_cfg.num_classes = 2
    if "anchor_generator" in model_cfg:  # FCOS (a reference detector) builds its own
        model_cfg.anchor_generator = instantiate(model_cfg.anchor_generator)
    if model_cfg.backbone.get("pretrained", False):  # ImageNet weights into meta tensors: a
        model_cfg.backbone.pretrained = False  # no-op that warns once per tensor (314 times)
    with torch.device("meta"):
        return instantiate(model_cfg)


def test_the_zoo_table_covers_every_coco_config():
    # converted/ holds configs for published weights, documented in projects/ATSS/README.md
    zoo = {f for f in COCO_CONFIGS if "/ablations/" not in f and "/converted/" not in f}
    assert {_name(f) for f in zoo} == set(ZOO)
    assert len(ABLATIONS) >= 15


# Detectron2's own detectors in the ATSS tree-crown setting, for tools/compare_detectors.py.
REFERENCE_DETECTORS = {
    "fcos_MNV2_FPN_treecrowns": "FCOS",
    "retinanet_MNV2_FPN_treecrowns": "RetinaNet",
}


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=_name)
def test_every_config_loads_and_instantiates(path):
    cfg = _cfg(path)
    assert len(cfg) > 0
    if "model" not in cfg:  # a common piece without a model (data, optimizer, schedule, TTA)
        return
    model = _model(path)
    if _name(path) in REFERENCE_DETECTORS:
        assert type(model).__name__ == REFERENCE_DETECTORS[_name(path)]
        assert model.num_classes == 1 and len(model.head_in_features) == 5
        return
    assert isinstance(model, ATSS)
    # The head's outputs must match the anchors per location and the classes.
    num_cell = model.anchor_generator.num_cell_anchors
    assert len(set(num_cell)) == 1
    a = num_cell[0]
    assert model.head.cls_score.out_channels == a * model.num_classes
    assert model.head.bbox_pred.out_channels == a * 4
    assert model.head.centerness.out_channels == a
    assert len(model.head.scales) == len(model.head_in_features) == 5


# The files one trains or evaluates with (configs/common/ holds the pieces they compose).
RUN_CONFIGS = [f for f in ALL_CONFIGS if not f.startswith("configs/common/")]


def test_every_config_writes_to_its_own_output_folder():
    """./output/<path under configs/ without .py>, so no two configs share a folder (and so a
    --resume or an evaluation never picks up another config's checkpoint). Fails if a config
    inherits its base's train.output_dir (an ablation over atss_R_50_FPN_1x.py without its own
    line) or keeps Detectron2's shared "./output"."""
    folders = {}
    for path in RUN_CONFIGS:
        expected = "./output/" + path[len("configs/") : -len(".py")]
        assert _cfg(path).train.output_dir == expected, path
        folders.setdefault(expected, []).append(path)
    assert len(folders) == len(RUN_CONFIGS) >= 37
    assert [len(paths) for paths in folders.values()] == [1] * len(folders)


def test_no_config_fixes_the_device():
    """train.device stays Detectron2's "cuda", which atss.engine.device.resolve_device turns
    into the CPU only where CUDA is absent. Fails if a config sets train.device (the first-try
    config once fixed "cpu", so a GPU machine trained on the CPU)."""
    from atss.config import get_detectron2_config

    default = get_detectron2_config("common/train.py").train.device
    assert default == "cuda"
    for path in RUN_CONFIGS:
        assert _cfg(path).train.device == default, path
        with open(path) as f:
            fixed = [line for line in f if re.match(r"\s*train\.device\s*=", line)]
        assert not fixed, f"{path} sets {fixed}"


TREECROWN_CONFIGS = [f for f in ALL_CONFIGS if f.startswith("configs/TreeCrowns/")]


def test_treecrown_configs_share_one_solver_at_the_linearly_scaled_lr():
    """
    The ATSS / FCOS / RetinaNet comparison is only fair with one solver, and its LR is the
    authors' 0.01 @ 16 images scaled linearly to the batch (0.005, twice that, made one of three
    cross-site ATSS runs diverge; docs/experiments.md).
    """
    assert len(TREECROWN_CONFIGS) == 4
    solvers = set()
    for path in TREECROWN_CONFIGS:
        cfg = _cfg(path)
        batch = cfg.dataloader.train.total_batch_size
        assert cfg.optimizer.lr == pytest.approx(0.01 * batch / 16), path
        sched = cfg.lr_multiplier
        solvers.add(
            (
                batch,
                cfg.optimizer.lr,
                cfg.optimizer.momentum,
                cfg.optimizer.weight_decay,
                cfg.train.max_iter,
                tuple(sched.scheduler.milestones),
                sched.warmup_length,
            )
        )
    assert len(solvers) == 1, solvers


@pytest.mark.parametrize("path", COCO_CONFIGS, ids=_name)
def test_coco_configs_have_the_training_pieces(path):
    cfg = _cfg(path)
    assert set(cfg) >= {"model", "dataloader", "optimizer", "lr_multiplier", "train", "test"}
    # Optimiser: the authors' SGD (bias LR x2, no bias weight decay) on the meta model.
    opt_cfg = copy.deepcopy(cfg.optimizer)
    opt_cfg.params.model = _model(path)
    opt = instantiate(opt_cfg)
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["lr"] == 0.01
    assert {g["lr"] for g in opt.param_groups} == {0.01, 0.02}
    assert all(g["weight_decay"] == 0.0 for g in opt.param_groups if g["lr"] == 0.02)
    # Schedule: constant warmup 1/3 for 500 iterations, then x0.1 at 2/3 and 8/9 of training.
    sched = instantiate(cfg.lr_multiplier)
    n = cfg.train.max_iter
    steps = (60000, 80000) if n == 90000 else (120000, 160000)
    assert sched(0.0) == pytest.approx(1 / 3) and sched(499 / n) == pytest.approx(1 / 3)
    assert sched(500 / n) == pytest.approx(1.0) and sched((steps[0] - 1) / n) == pytest.approx(1.0)
    assert sched(steps[0] / n) == pytest.approx(0.1) and sched(steps[1] / n) == pytest.approx(0.01)
    # Data: 16 images per batch; the loaders are only inspected (COCO is not on this machine).
    assert cfg.dataloader.train.total_batch_size == 16
    assert cfg.dataloader.train.dataset.names == "coco_2017_train"
    assert cfg.dataloader.train.mapper.use_instance_mask is False
    augs = instantiate(cfg.dataloader.train.mapper.augmentations)
    assert isinstance(augs[0], T.ResizeShortestEdge) and isinstance(augs[1], T.RandomFlip)
    assert augs[0].max_size == 1333
    instantiate(cfg.dataloader.test.mapper)
    assert cfg.model.backbone.bottom_up.freeze_at == 2


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_configs_follow_the_authors_recipes(name):
    depth, groups, width, s1x1, dcn, std, ckpt, max_iter, ms = ZOO[name]
    cfg = _cfg(f"configs/COCO/{name}.py")
    model = _model(f"configs/COCO/{name}.py")
    bottom_up = model.backbone.bottom_up

    # Backbone: the right blocks, grouped 3x3 convs and DCN stages, and parameter count.
    for i, stage in enumerate(["res2", "res3", "res4", "res5"]):
        blocks = list(getattr(bottom_up, stage).children())
        cls = DeformBottleneckBlock if dcn[i] else BottleneckBlock
        assert all(type(b) is cls for b in blocks), (stage, {type(b) for b in blocks})
        assert blocks[0].conv2.groups == groups
        assert blocks[0].conv2.out_channels == groups * width * 2**i
        if i > 0:  # MSRA ResNets downsample in the 1x1 conv, ResNeXts in the 3x3 conv
            assert (tuple(blocks[0].conv1.stride) == (2, 2)) == s1x1
            assert (tuple(blocks[0].conv2.stride) == (2, 2)) == (not s1x1)
    assert sum(len(list(getattr(bottom_up, s).children())) for s in bottom_up.stage_names) == (
        16 if depth == 50 else 33
    )
    if not any(dcn):
        params = sum(p.numel() for p in bottom_up.parameters()) / 1e6
        assert params == pytest.approx(BACKBONE_PARAMS_M[(depth, groups)], abs=0.01)
    # DCNv2, 1 deformable group: offsets (18) + mask (9) per block; DCN in both head towers.
    for stage in bottom_up.stage_names:
        for b in getattr(bottom_up, stage).children():
            if isinstance(b, DeformBottleneckBlock):
                assert b.deform_modulated and b.conv2_offset.out_channels == 27
    assert model.head.cls_subnet[-3].__class__.__name__ == (
        "DeformConvWithOffset" if any(dcn) else "Conv2d"
    )
    assert model.head.bbox_subnet[-3].__class__.__name__ == (
        "DeformConvWithOffset" if any(dcn) else "Conv2d"
    )
    assert cfg.model.head.use_dcn == any(dcn)

    # Input normalisation and checkpoint of the backbone's ImageNet weights.
    assert list(cfg.model.pixel_std) == pytest.approx(std) and model.pixel_std.shape == (3, 1, 1)
    assert list(cfg.model.pixel_mean) == pytest.approx([103.530, 116.280, 123.675])
    assert model.input_format == "BGR" and cfg.dataloader.train.mapper.image_format == "BGR"
    init = cfg.train.init_checkpoint
    if ckpt == "FAIR/X-101-64x4d":  # no Detectron2-format file: the Caffe2 one via the catalog
        assert init == "catalog://ImageNetPretrained/FAIR/X-101-64x4d"
        assert ModelCatalog.get("ImageNetPretrained/" + ckpt).endswith("FBResNeXt/X-101-64x4d.pkl")
    else:
        assert init == f"detectron2://ImageNetPretrained/{ckpt}.pkl"

    # Schedule and training scales.
    assert cfg.train.max_iter == max_iter
    assert cfg.lr_multiplier.scheduler.num_updates == max_iter
    resize = cfg.dataloader.train.mapper.augmentations[0]
    if ms:
        assert tuple(resize.short_edge_length) == (640, 800) and resize.sample_style == "range"
    else:
        assert resize.short_edge_length == 800
    test_resize = cfg.dataloader.test.mapper.augmentations
    assert cfg.test.aug.enabled == name.endswith("_tta")
    if name.endswith("_tta"):
        assert len(test_resize) == 0  # the TTA wrapper resizes the original image itself
    else:
        assert test_resize[0].short_edge_length == 800 and test_resize[0].max_size == 1333


DCN_CONFIGS = [f for f in COCO_CONFIGS if "dcnv2" in _name(f)]


@pytest.mark.parametrize("path", DCN_CONFIGS, ids=_name)
def test_dcn_configs_initialise_deformable_convs_as_the_authors(path):
    """
    Every DCNv2 config starts its deformable convs as sfzhang15/ATSS does (head and backbone,
    one switch, model.head.dcn_init); "detectron2" reaches the backbone too. Fails if a config
    leaves the backbone at Detectron2's zero offsets or the backbone ignores the switch.
    """
    cfg = _cfg(path)
    assert cfg.model.head.use_dcn and cfg.model.head.dcn_init == "authors"
    assert cfg.model.backbone.bottom_up.stages.dcn_init == "authors"
    other = LazyConfig.apply_overrides(copy.deepcopy(cfg), ["model.head.dcn_init=detectron2"])
    assert other.model.backbone.bottom_up.stages.dcn_init == "detectron2"
    # Our non-DCN base keeps Detectron2's convention (a head switched to DCN by hand gets it).
    assert _cfg("configs/COCO/atss_R_50_FPN_1x.py").model.head.dcn_init == "detectron2"


def test_tta_switch_wraps_the_model_only_when_on():
    base = LazyConfig.load("configs/COCO/atss_R_50_FPN_1x.py")
    model = _model("configs/COCO/atss_R_50_FPN_1x.py")
    assert build_tta_model(base, model) is model
    on = LazyConfig.apply_overrides(base, ["test.aug.enabled=True", "test.aug.flip=False"])
    tta = build_tta_model(on, model)
    assert isinstance(tta, ATSSWithTTA) and len(tta.runs) == 1 + 2 * 12
    tta_cfg = _cfg("configs/COCO/atss_dcnv2_X_101_64x4d_FPN_2x_ms_tta.py")
    assert isinstance(build_tta_model(tta_cfg, model), ATSSWithTTA)


# Ablations: base = atss_R_50_FPN_1x (ATSS, k = 9, one 8-stride square anchor, BOX coding).
ABLATION_EXPECTED = {
    "topk_3": dict(topk=3),
    "topk_19": dict(topk=19),
    **{
        f"anchor_scale_{s}": dict(sizes=[[s * x] for x in (8, 16, 32, 64, 128)])
        for s in (5, 6, 7, 9)
    },
    "anchor_ratio_1to4": dict(ratios=[0.25]),
    "anchor_ratio_1to2": dict(ratios=[0.5]),
    "anchor_ratio_2to1": dict(ratios=[2.0]),
    "anchor_ratio_4to1": dict(ratios=[4.0]),
    "anchors_9_ATSS": dict(num_anchors=9, ratios=[0.5, 1.0, 2.0]),
    "anchors_9_IoU": dict(num_anchors=9, ratios=[0.5, 1.0, 2.0], mode="IoU"),
    "assigner_IoU": dict(mode="IoU"),
    "assigner_SSC": dict(mode="SSC"),
    "assigner_TOPK": dict(mode="TOPK"),
    "point_ATSS": dict(coding="POINT"),
    "point_IoU": dict(coding="POINT", mode="IoU"),
    "point_SSC": dict(coding="POINT", mode="SSC"),
}


def test_every_ablation_is_listed():
    assert {_name(f) for f in ABLATIONS} == set(ABLATION_EXPECTED)


@pytest.mark.parametrize("name", sorted(ABLATION_EXPECTED))
def test_ablations_change_only_their_switch(name):
    exp = dict(
        topk=9, sizes=[[64], [128], [256], [512], [1024]], ratios=[1.0], num_anchors=1, mode="ATSS"
    )
    exp["coding"] = "BOX"
    exp.update(ABLATION_EXPECTED[name])
    cfg = _cfg(f"configs/COCO/ablations/{name}.py")
    m = cfg.model
    assert m.assigner.topk == exp["topk"] and m.assigner.mode == exp["mode"]
    assert m.box_coding == exp["coding"]
    assert m.head.num_anchors == exp["num_anchors"]
    assert list(m.anchor_generator.aspect_ratios) == exp["ratios"]
    if name.startswith("anchors_9"):
        assert [len(s) for s in m.anchor_generator.sizes] == [3] * 5
        assert m.anchor_generator.sizes[0][2] == pytest.approx(32 * 2 ** (2 / 3))
    else:
        assert [list(s) for s in m.anchor_generator.sizes] == exp["sizes"]
    # Everything else is the R-50 1x reference.
    assert cfg.train.max_iter == 90000
    assert cfg.train.init_checkpoint == "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
    assert cfg.dataloader.train.mapper.augmentations[0].short_edge_length == 800


@pytest.mark.parametrize("name", sorted(ABLATION_EXPECTED))
def test_ablations_train_and_infer_with_a_small_backbone(name):
    """The ablation's switches (anchors, assigner, coding) on an R-18 with a 64-channel FPN."""
    cfg = copy.deepcopy(_cfg(f"configs/COCO/ablations/{name}.py"))
    m = cfg.model
    m.num_classes = 3
    m.backbone.bottom_up.stages.depth = 18
    m.backbone.bottom_up.stages.pop("stride_in_1x1", None)  # BasicBlock has no such option
    m.backbone.out_channels = 64
    m.backbone.top_block.in_channels = 64
    m.head.input_shape = [ShapeSpec(channels=64)] * 5
    m.head.conv_dims = [64]
    torch.manual_seed(0)
    model = instantiate(m)
    boxes = [torch.tensor([[8.0, 6.0, 60.0, 50.0], [70.0, 20.0, 120.0, 90.0]])]
    inputs = make_inputs([(96, 128)], boxes, num_classes=3)
    with EventStorage():
        losses = model(inputs)
    assert all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        (out,) = model([{"image": inputs[0]["image"]}])
    assert out["instances"].image_size == (96, 128)


@pytest.mark.cuda
def test_r50_config_trains_with_amp_on_cuda(cuda_device, record_property):
    """Steps of the R-50 config with our train loop's trainer for ``train.amp.enabled=True``
    (:func:`atss.engine.train_loop.build_trainer`: fp16 and a gradient scaler on CUDA; one bf16
    step on images of half the size when the `cuda` tests run against the CPU), random init,
    two synthetic ~620x780 images with 8 boxes each: every loss finite. Fails on a layer that
    breaks under autocast (a dtype mismatch, a float16 overflow in the losses)."""
    from atss.engine.device import autocast_dtype
    from atss.engine.train_loop import build_trainer

    on_cuda = cuda_device.type == "cuda"
    amp = {"enabled": True, "precision": None if on_cuda else "bf16"}
    dtype = autocast_dtype(str(cuda_device), amp)
    cfg = copy.deepcopy(_cfg("configs/COCO/atss_R_50_FPN_1x.py"))
    torch.manual_seed(0)
    model = instantiate(cfg.model).to(cuda_device).train()
    cfg.optimizer.params.model = model
    g = torch.Generator().manual_seed(0)
    sizes = [(608, 800), (640, 768)] if on_cuda else [(304, 400), (320, 384)]
    boxes = [random_boxes(8, h, w, g, min_size=16, max_size=min(h, w) / 2) for h, w in sizes]
    batch = make_inputs(sizes, boxes, num_classes=cfg.model.num_classes)
    optimizer = instantiate(cfg.optimizer)
    trainer = build_trainer(model, itertools.repeat(batch), optimizer, str(cuda_device), dtype)
    steps = 5 if on_cuda else 1
    with EventStorage(0) as storage:
        for i in range(steps):  # the trainer raises FloatingPointError on a non-finite loss
            storage.iter = trainer.iter = i
            trainer.run_step()
        losses = [v for v, _ in storage.history("total_loss").values()]
    assert len(losses) == steps and all(map(np.isfinite, losses)), losses
    if on_cuda:
        peak = torch.cuda.max_memory_allocated(cuda_device) / 2**30
        record_property("detail", f"{steps} {dtype} steps, peak {peak:.2f} GiB allocated")


# --- facts asserted where they live (the values below are typed from the papers/codebases, not
# read from the code under test) ------------------------------------------------------------


def _anchors_of(generator, height, width):
    feats = [torch.zeros(1, 1, -(-height // s), -(-width // s)) for s in generator.strides]
    return [b.tensor for b in generator(feats)]


def test_atss_model_config_has_one_8_stride_anchor_centred_in_its_cell():
    """
    configs/common/models/atss.py: one square anchor of side 8·stride per location on P3-P7,
    centred at (i + 0.5)·stride. Fails on offset 0 (mmdetection's centres), on Detectron2's
    RetinaNet sizes (32..512, 4·stride) or on several anchors per location.
    """
    cfg = LazyConfig.load("configs/common/models/atss.py")
    generator = instantiate(cfg.model.anchor_generator)
    anchors = _anchors_of(generator, 256, 256)
    for level, stride in enumerate([8, 16, 32, 64, 128]):
        first = anchors[level][0].tolist()  # cell (0, 0): centre (stride / 2, stride / 2)
        half = 4 * stride
        assert first == [stride / 2 - half, stride / 2 - half, stride / 2 + half, stride / 2 + half]
        second = anchors[level][1].tolist()  # cell (0, 1): one stride to the right
        assert second[0] - first[0] == stride and second[1] == first[1]
    assert generator.num_cell_anchors == [1] * 5


CONVERTED = {
    # authors (maskrcnn-benchmark): Caffe2 BGR mean, std 1, BGR input, MSRA R-50 with the stride
    # in the 1x1 conv, centres (i + 0.5)·stride, their resize and results-file boxes.
    "atss_R_50_FPN_1x_authors": dict(
        mean=[102.9801, 115.9465, 122.7717],
        std=[1.0, 1.0, 1.0],
        fmt="BGR",
        offset=0.5,
        stride_in_1x1=True,
        boxes="authors",
        width_640x480=1066,
    ),
    # authors' X-101-64x4d: the same conventions, ResNeXt puts the stride in the 3x3 conv.
    "atss_dcnv2_X_101_64x4d_FPN_2x_authors": dict(
        mean=[102.9801, 115.9465, 122.7717],
        std=[1.0, 1.0, 1.0],
        fmt="BGR",
        offset=0.5,
        stride_in_1x1=False,
        boxes="authors",
        width_640x480=1066,
    ),
    # mmdetection 2.x: RGB, ImageNet mean/std, pytorch-style ResNet (stride in the 3x3 conv),
    # centres i·stride; continuous boxes and a rounded resize as Detectron2's.
    "atss_R_50_FPN_1x_mmdet": dict(
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        fmt="RGB",
        offset=0.0,
        stride_in_1x1=False,
        boxes="detectron2",
        width_640x480=1067,
    ),
}


@pytest.mark.parametrize("name", sorted(CONVERTED))
def test_converted_configs_mirror_their_codebase(name):
    """
    The conventions the published weights were trained and evaluated with
    (docs/published_weights.md, "Conventions the config must mirror"). Fails if a converted
    config falls back to a base-config value: Detectron2's BGR mean, BGR input for mmdetection
    weights, offset 0.5 for mmdetection, the wrong bottleneck stride, Detectron2's rounded test
    resize or continuous boxes for the authors' weights.
    """
    exp = CONVERTED[name]
    path = f"configs/COCO/converted/{name}.py"
    cfg, model = _cfg(path), _model(path)
    assert list(cfg.model.pixel_mean) == exp["mean"] and list(cfg.model.pixel_std) == exp["std"]
    assert model.input_format == exp["fmt"]
    assert cfg.dataloader.train.mapper.image_format == exp["fmt"]
    assert instantiate(cfg.dataloader.test.mapper).image_format == exp["fmt"]
    first = _anchors_of(model.anchor_generator, 64, 64)[0][0].tolist()
    assert (first[0] + first[2]) / 2 == 8 * exp["offset"]  # P3 cell (0, 0)
    res3 = model.backbone.bottom_up.res3[0]
    assert (tuple(res3.conv1.stride) == (2, 2)) == exp["stride_in_1x1"]
    assert (tuple(res3.conv2.stride) == (2, 2)) != exp["stride_in_1x1"]
    assert model.box_convention == exp["boxes"]
    (resize,) = instantiate(cfg.dataloader.test.mapper.augmentations)
    tfm = resize.get_transform(np.zeros((480, 640, 3), dtype=np.uint8))
    assert (tfm.new_h, tfm.new_w) == (800, exp["width_640x480"])


def test_treecrown_config_reads_rgb_normalises_as_imagenet_and_keeps_300_detections():
    """
    The MobileNetV2 backbone was trained on RGB inputs normalised with ImageNet's mean/std (0-255
    scale), and the 208-tree validation crop needs more than COCO's 100 detections. Fails on
    Detectron2's BGR/std-1 defaults or a cap of 100 in the model or the evaluator.
    """
    cfg = _cfg("configs/TreeCrowns/atss_MNV2_FPN_treecrowns.py")
    model = _model("configs/TreeCrowns/atss_MNV2_FPN_treecrowns.py")
    assert model.input_format == "RGB" and cfg.dataloader.train.mapper.image_format == "RGB"
    assert instantiate(cfg.dataloader.test.mapper).image_format == "RGB"
    assert list(cfg.model.pixel_mean) == [123.675, 116.28, 103.53]
    assert list(cfg.model.pixel_std) == [58.395, 57.12, 57.375]
    assert model.max_detections_per_image == 300
    assert cfg.dataloader.evaluator.max_dets_per_image == 300


@pytest.mark.parametrize("name", ["common/train.py", "common/optim.py", "common/models/fcos.py"])
def test_get_detectron2_config_matches_model_zoo(name):
    """The helper loads the same bundled file as detectron2.model_zoo.get_config (compared where
    pkg_resources exists, as on the pinned stack)."""
    pytest.importorskip("pkg_resources")
    from detectron2 import model_zoo

    from atss.config import get_detectron2_config

    assert LazyConfig.to_py(get_detectron2_config(name)) == LazyConfig.to_py(
        model_zoo.get_config(name)
    )


def test_get_detectron2_config_names_a_missing_file():
    from atss.config import get_detectron2_config

    with pytest.raises(FileNotFoundError, match="common/nope.py"):
        get_detectron2_config("common/nope.py")


def test_both_cpu_configs_compose_one_mobilenet_model():
    """The tree-crown and the Custom (own data) configs take their model from
    configs/common/models/atss_mnv2.py: the same backbone call (channels_last included: the
    ~1.5x faster CPU training step), normalisation, input format and head size. Fails if one of
    them re-spells the model and drifts (the Custom config once lacked channels_last)."""
    from omegaconf import OmegaConf

    def model_of(path):
        model = LazyConfig.load(path).model
        return {
            key: OmegaConf.to_container(model[key]) if hasattr(model[key], "keys") else model[key]
            for key in ("backbone", "pixel_mean", "pixel_std", "input_format")
        } | {"conv_dims": list(model.head.conv_dims), "head_in": len(model.head.input_shape)}

    tree = model_of("configs/TreeCrowns/atss_MNV2_FPN_treecrowns.py")
    assert tree == model_of("configs/Custom/atss_MNV2_FPN_coco_json.py")
    assert tree["backbone"]["channels_last"] is True and tree["conv_dims"] == [128, 128]
