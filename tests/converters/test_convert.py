"""Converters from the published ATSS checkpoints (authors', mmdetection) to our model, and the
rewriting of a trusted checkpoint the safe readers refuse (--allow-pickle)."""

import argparse
import contextlib
import logging
import pickle

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate
from detectron2.layers import FrozenBatchNorm2d

from atss.converters import (
    AUTHORS,
    DETECTRON2,
    MMDET,
    check_against_model,
    convert_authors_state_dict,
    convert_checkpoint,
    convert_mmdet_state_dict,
    convert_state_dict,
    detect_format,
    read_checkpoint,
)
from atss.engine import AtomicDetectionCheckpointer
from atss.fileio import load_torch_file
from tests.atss_testing import load_script
from tests.converters.published_layouts import authors_layout, mmdet_layout, synthetic_state_dict

AUTHORS_R50 = "configs/COCO/converted/atss_R_50_FPN_1x_authors.py"
AUTHORS_X101_DCN = "configs/COCO/converted/atss_dcnv2_X_101_64x4d_FPN_2x_authors.py"
MMDET_R50 = "configs/COCO/converted/atss_R_50_FPN_1x_mmdet.py"

# Hand-written (source key -> our key) pairs, independent of the converter's rules.
AUTHORS_R50_PLACES = {
    "backbone.body.stem.conv1.weight": "backbone.bottom_up.stem.conv1.weight",
    "backbone.body.layer3.2.conv2.weight": "backbone.bottom_up.res4.2.conv2.weight",
    "backbone.body.layer1.0.downsample.0.weight": "backbone.bottom_up.res2.0.shortcut.weight",
    "backbone.body.layer4.0.bn3.bias": "backbone.bottom_up.res5.0.conv3.norm.bias",
    "backbone.fpn.fpn_inner2.weight": "backbone.fpn_lateral3.weight",
    "backbone.fpn.fpn_layer4.weight": "backbone.fpn_output5.weight",
    "backbone.fpn.top_blocks.p7.weight": "backbone.top_block.p7.weight",
    "rpn.head.cls_tower.6.weight": "head.cls_subnet.6.weight",
    "rpn.head.bbox_tower.4.weight": "head.bbox_subnet.4.weight",
    "rpn.head.cls_logits.weight": "head.cls_score.weight",
    "rpn.head.centerness.bias": "head.centerness.bias",
}
AUTHORS_DCN_PLACES = {
    "backbone.body.layer2.3.conv2.weight": "backbone.bottom_up.res3.3.conv2.weight",
    "backbone.body.layer3.22.conv2.conv.weight": "backbone.bottom_up.res4.22.conv2.weight",
    "backbone.body.layer4.1.conv2.offset.weight": "backbone.bottom_up.res5.1.conv2_offset.weight",
    "backbone.body.layer4.1.conv2.offset.bias": "backbone.bottom_up.res5.1.conv2_offset.bias",
    "rpn.head.cls_tower.9.conv.weight": "head.cls_subnet.9.conv.weight",
    "rpn.head.bbox_tower.9.offset.weight": "head.bbox_subnet.9.conv_offset.weight",
    "rpn.head.bbox_tower.9.conv.bias": "head.bbox_subnet.9.conv.bias",
}
MMDET_R50_PLACES = {
    "backbone.conv1.weight": "backbone.bottom_up.stem.conv1.weight",
    "backbone.layer2.1.conv2.weight": "backbone.bottom_up.res3.1.conv2.weight",
    "backbone.layer3.0.downsample.1.running_var": (
        "backbone.bottom_up.res4.0.shortcut.norm.running_var"
    ),
    "neck.lateral_convs.0.conv.weight": "backbone.fpn_lateral3.weight",
    "neck.fpn_convs.2.conv.weight": "backbone.fpn_output5.weight",
    "neck.fpn_convs.3.conv.weight": "backbone.top_block.p6.weight",
    "neck.fpn_convs.4.conv.bias": "backbone.top_block.p7.bias",
    "bbox_head.cls_convs.2.conv.weight": "head.cls_subnet.6.weight",
    "bbox_head.reg_convs.1.gn.weight": "head.bbox_subnet.4.weight",
    "bbox_head.atss_reg.weight": "head.bbox_pred.weight",
    "bbox_head.atss_cls.bias": "head.cls_score.bias",
}


def _model(config_file):
    torch.manual_seed(0)
    return instantiate(LazyConfig.load(config_file).model)


def _assert_loads_and_places(model, converted, source, places):
    report = check_against_model(converted, model)
    assert report == {"missing": [], "unexpected": [], "shape_mismatch": []}, report
    model.load_state_dict(converted, strict=True)
    ours = model.state_dict()
    for src_key, our_key in places.items():
        assert torch.equal(ours[our_key], source[src_key]), (src_key, our_key)


def test_authors_r50_loads_strictly_and_lands_in_place():
    """Authors' R-50: every tensor finds a home; identifiable tensors land where they belong."""
    shapes = authors_layout(depth=50)
    source = synthetic_state_dict(shapes, distinct=AUTHORS_R50_PLACES)
    source["rpn.head.scales.3.scale"] = torch.tensor([1.75])
    wrapped = {"model": {"module." + k: v for k, v in source.items()}, "iteration": 90000}
    assert detect_format(wrapped["model"]) == AUTHORS
    converted = convert_state_dict(wrapped, "auto")
    model = _model(AUTHORS_R50)
    _assert_loads_and_places(model, converted, source, AUTHORS_R50_PLACES)
    assert model.head.scales[3].scale.shape == () and model.head.scales[3].scale.item() == 1.75


def test_authors_frozen_bn_computes_their_affine_map():
    """Their FrozenBN is w / sqrt(var) (no eps); the converted FrozenBN gives the same output."""
    g = torch.Generator().manual_seed(1)
    n = 8
    theirs = {
        "weight": torch.rand(n, generator=g) + 0.5,
        "bias": torch.randn(n, generator=g),
        "running_mean": torch.randn(n, generator=g),
        "running_var": torch.rand(n, generator=g) * 1e-3 + 1e-4,  # small: eps matters
    }
    sd = {f"backbone.body.stem.bn1.{k}": v for k, v in theirs.items()}
    converted = convert_authors_state_dict(sd)
    bn = FrozenBatchNorm2d(n)
    bn.load_state_dict({k.split(".")[-1]: v for k, v in converted.items()})
    x = torch.randn(2, n, 3, 3, generator=g)
    scale = theirs["weight"] * theirs["running_var"].rsqrt()
    expected = (
        x * scale[:, None, None] + (theirs["bias"] - theirs["running_mean"] * scale)[:, None, None]
    )
    torch.testing.assert_close(bn(x), expected, rtol=1e-5, atol=1e-5)


def test_authors_x101_64x4d_dcn_loads_strictly_and_lands_in_place():
    """Authors' DCNv2 X-101-64x4d (DCN in res4-res5 and the last conv of both towers)."""
    shapes = authors_layout(
        depth=101,
        num_groups=64,
        width_per_group=4,
        stage_with_dcn=(False, False, True, True),
        head_dcn=True,
    )
    source = synthetic_state_dict(shapes, distinct=AUTHORS_DCN_PLACES)
    converted = convert_authors_state_dict(source)
    _assert_loads_and_places(_model(AUTHORS_X101_DCN), converted, source, AUTHORS_DCN_PLACES)


def test_mmdet_r50_loads_strictly_and_lands_in_place():
    """mmdetection R-50: tower convs get zero biases, BN statistics are kept as they are."""
    shapes = mmdet_layout(depth=50)
    source = synthetic_state_dict(shapes, distinct=MMDET_R50_PLACES)
    source["bbox_head.scales.0.scale"] = torch.tensor(0.5)
    wrapped = {"state_dict": dict(source), "meta": {"epoch": 12}}
    assert detect_format(wrapped["state_dict"]) == MMDET
    converted = convert_state_dict(wrapped)
    model = _model(MMDET_R50)
    _assert_loads_and_places(model, converted, source, MMDET_R50_PLACES)
    for tower in (model.head.cls_subnet, model.head.bbox_subnet):
        for i in (0, 3, 6, 9):
            assert torch.count_nonzero(tower[i].bias) == 0
    assert model.head.scales[0].scale.item() == 0.5


def test_checkpoint_file_round_trip_and_detectron2_load(tmp_path):
    """A file on disk: read, convert, save, then Detectron2's checkpointer loads it cleanly."""
    source = synthetic_state_dict(mmdet_layout(depth=50), distinct=MMDET_R50_PLACES)
    path = tmp_path / "atss_r50_fpn_1x_coco.pth"
    torch.save({"state_dict": source, "meta": {"epoch": 12}}, path)
    fmt, checkpoint = convert_checkpoint(str(path))
    assert fmt == MMDET and checkpoint["__converted_from__"] == MMDET
    converted = checkpoint["model"]
    out = tmp_path / "converted.pth"
    torch.save(checkpoint, out)
    model = _model(MMDET_R50)
    assert not any(check_against_model(converted, model).values())
    DetectionCheckpointer(model).load(str(out))
    for key, value in model.state_dict().items():
        assert torch.equal(value, converted[key]), key


def test_cli_converts_and_checks_against_a_config(tmp_path, caplog):
    """tools/convert_checkpoint.py: converts, checks against the config's model, writes."""
    main = load_script("tools/convert_checkpoint.py").main

    caplog.set_level(logging.INFO)
    source = synthetic_state_dict(authors_layout(depth=50))
    path = tmp_path / "ATSS_R_50_FPN_1x.pth"
    torch.save({"model": {"module." + k: v for k, v in source.items()}}, path)
    out = tmp_path / "out" / "converted.pth"
    assert main([str(path), str(out), "--config-file", AUTHORS_R50]) == 0
    assert "all keys and shapes match" in caplog.text
    assert set(torch.load(out)["model"]) == set(_model(AUTHORS_R50).state_dict())
    # The same weights do not fit the DCN X-101 model: exit status 1, the report says why.
    assert main([str(path), str(out), "--config-file", AUTHORS_X101_DCN]) == 1
    assert "missing" in caplog.text and "shape_mismatch" in caplog.text


def test_unknown_key_is_named():
    sd = {
        "backbone.body.stem.conv1.weight": torch.zeros(64, 3, 7, 7),
        "rpn.head.foo": torch.zeros(1),
    }
    with pytest.raises(ValueError, match=r"my\.pth.*rpn\.head\.foo"):
        convert_authors_state_dict(sd, source="my.pth")
    with pytest.raises(ValueError, match=r"bbox_head\.cls_convs\.0\.conv_offset\.weight"):
        convert_mmdet_state_dict(
            {"bbox_head.cls_convs.0.conv_offset.weight": torch.zeros(1)}, source="m.pth"
        )


def test_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        read_checkpoint(str(tmp_path / "nope.pth"))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pth.*cannot be read"):
        read_checkpoint(str(garbage))
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(ValueError, match="list.pth.*expected a state dict"):
        read_checkpoint(str(listed))
    both = {"backbone.body.stem.conv1.weight": torch.zeros(1), "neck.x.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match="both.pth.*cannot tell"):
        detect_format(both, "both.pth")
    with pytest.raises(ValueError, match="unknown checkpoint format"):
        convert_state_dict({"fc.weight": torch.zeros(2)}, "caffe")


def _small_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))


def _trusted_file(path):
    """A checkpoint of :func:`_small_model`'s weights holding, beside them, a harmless Python
    object the safe readers refuse (the argparse.Namespace training scripts save): this
    project's .pth format, or a Detectron2 model-zoo .pkl of NumPy arrays."""
    state = {k: v + 1 for k, v in _small_model().state_dict().items()}
    args = argparse.Namespace(lr=0.01)
    if path.suffix == ".pth":
        torch.save({"model": state, "args": args, "iteration": 9}, path)
        return state
    arrays = {k: v.numpy() for k, v in state.items()}
    content = {"model": arrays, "__author__": "Detectron2 Model Zoo", "matching_heuristics": True}
    with open(path, "wb") as f:
        pickle.dump({**content, "args": args}, f, protocol=2)
    return state


@pytest.mark.parametrize("name", ["model_final.pth", "model_zoo.pkl"])
def test_allow_pickle_rewrites_any_trusted_checkpoint_as_one_that_loads_safely(
    tmp_path, caplog, name
):
    """The refusal's fix holds for every file kind it names: without --allow-pickle the tool
    refuses the file (exit 2, naming the opt-in); with it, a file in neither published format
    (this project's own .pth, a Detectron2 model-zoo .pkl) is kept as it is, and the output
    loads through the safe reader and fills a model as Detectron2's trusting checkpointer fills
    it from the original. Fails if the converter knows only the published formats, or drops a
    model-zoo file's name-matching marks."""
    main = load_script("tools/convert_checkpoint.py").main
    path, out = tmp_path / name, tmp_path / "out.pth"
    state = _trusted_file(path)
    assert main([str(path), str(out)]) == 2
    assert "refused to unpickle argparse.Namespace" in caplog.text and not out.exists()
    assert f"--allow-pickle {path} OUT.pth" in caplog.text
    assert main(["--allow-pickle", str(path), str(out)]) == 0
    rewritten = load_torch_file(str(out))
    assert rewritten["__converted_from__"] == DETECTRON2
    assert rewritten.get("matching_heuristics") is (True if name.endswith(".pkl") else None)
    ours, theirs = _small_model(), _small_model()
    AtomicDetectionCheckpointer(ours).load(str(out))
    # Detectron2's reader trusts the file on torch < 2.6; later torch needs the object allowed.
    trusted = getattr(torch.serialization, "safe_globals", lambda _: contextlib.nullcontext())
    with trusted([argparse.Namespace]):
        DetectionCheckpointer(theirs).load(str(path))
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value) and torch.equal(value, state[key]), key
