# The model zoo's backbones in one place: ResNet-50/101 and ResNeXt-101 32x8d/64x4d, optionally with
# the authors' DCNv2 placement, each with the pixel normalisation, stride_in_1x1 and ImageNet
# checkpoint it needs. A COCO config selects one with `use_backbone(model, train, name, dcn=...)`.
from detectron2.config import LazyCall as L

from atss.modeling.backbone import make_resnet_stages

# DCNv2 (modulated, 1 deformable group) per stage res2..res5, as in the authors' DCN configs.
DCN_RESNET = [False, True, True, True]  # res3-res5
DCN_RESNEXT = [False, False, True, True]  # ResNeXt: res4-res5
NO_DCN = [False, False, False, False]

# Detectron2's BGR ImageNet mean; std 1 where the checkpoint absorbed it (MSRA / Caffe2 files).
_BGR_MEAN = [103.530, 116.280, 123.675]

BACKBONES = {
    # MSRA Caffe2 weights re-saved by Detectron2: BGR, std 1, stride in the 1x1 conv.
    "R-50": dict(
        depth=50,
        num_groups=1,
        width_per_group=64,
        stride_in_1x1=True,
        dcn_stages=DCN_RESNET,
        pixel_mean=_BGR_MEAN,
        pixel_std=[1.0, 1.0, 1.0],
        init_checkpoint="detectron2://ImageNetPretrained/MSRA/R-50.pkl",
    ),
    "R-101": dict(
        depth=101,
        num_groups=1,
        width_per_group=64,
        stride_in_1x1=True,
        dcn_stages=DCN_RESNET,
        pixel_mean=_BGR_MEAN,
        pixel_std=[1.0, 1.0, 1.0],
        init_checkpoint="detectron2://ImageNetPretrained/MSRA/R-101.pkl",
    ),
    # FAIR ResNeXt re-converted by Detectron2: BGR, but the std is NOT absorbed.
    "X-101-32x8d": dict(
        depth=101,
        num_groups=32,
        width_per_group=8,
        stride_in_1x1=False,
        dcn_stages=DCN_RESNEXT,
        pixel_mean=_BGR_MEAN,
        pixel_std=[57.375, 57.120, 58.395],
        init_checkpoint="detectron2://ImageNetPretrained/FAIR/X-101-32x8d.pkl",
    ),
    # No Detectron2-format file exists: the Detectron1/Caffe2 file the authors used, through
    # Detectron2's ModelCatalog (BN folded into an affine -> FrozenBN only; BGR, std 1; names are
    # converted by DetectionCheckpointer). Alternative: torchvision's resnext101_64x4d converted
    # with detectron2's tools/convert-torchvision-to-d2.py, used with RGB input, mean
    # [123.675, 116.28, 103.53], std [58.395, 57.12, 57.375] (see configs/README.md).
    "X-101-64x4d": dict(
        depth=101,
        num_groups=64,
        width_per_group=4,
        stride_in_1x1=False,
        dcn_stages=DCN_RESNEXT,
        pixel_mean=_BGR_MEAN,
        pixel_std=[1.0, 1.0, 1.0],
        init_checkpoint="catalog://ImageNetPretrained/FAIR/X-101-64x4d",
    ),
}


def use_backbone(model, train, name, dcn=False):
    """
    Put backbone `name` (a key of BACKBONES) into an ATSS `model` config and its ImageNet
    checkpoint into `train.init_checkpoint`. dcn=True adds the authors' DCNv2: in the backbone
    stages of `dcn_stages` and in the last conv of both head towers, initialised as the authors'
    code does (`model.head.dcn_init = "authors"`; the backbone's offset convs follow that switch:
    "authors" kaiming-uniform a=1 as their DFConv2d, "detectron2" zeros). Everything else
    (FrozenBN, freeze_at, FPN, head) stays as in the base config.
    """
    spec = BACKBONES[name]
    model.backbone.bottom_up.stages = L(make_resnet_stages)(
        depth=spec["depth"],
        num_groups=spec["num_groups"],
        width_per_group=spec["width_per_group"],
        stride_in_1x1=spec["stride_in_1x1"],
        norm="FrozenBN",
        deform_on_per_stage=list(spec["dcn_stages"] if dcn else NO_DCN),
        deform_modulated=True,
        deform_num_groups=1,
    )
    if dcn:
        model.head.dcn_init = "authors"
        # One switch for head and backbone (relative to stages: bottom_up, backbone, model).
        model.backbone.bottom_up.stages.dcn_init = "${....head.dcn_init}"
    model.head.use_dcn = bool(dcn)
    model.pixel_mean = list(spec["pixel_mean"])
    model.pixel_std = list(spec["pixel_std"])
    model.input_format = "BGR"
    train.init_checkpoint = spec["init_checkpoint"]
    return model
