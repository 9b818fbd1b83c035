"""
Tests of ``atss.modeling.tta``: the box mapping and size filter, and the TTA wrapper on a fake
detector (exact geometry) and on a tiny ATSS model (single-scale equivalence, valid output).
Box voting, its merge step: tests/modeling/test_box_voting.py.
"""

import numpy as np
import pytest
import torch
from detectron2.config import LazyConfig
from detectron2.data.transforms import HFlipTransform, ResizeTransform, TransformList
from detectron2.structures import Boxes, Instances
from torch import nn

from atss.modeling.tta import (
    TTA_MIN_SIZES,
    ATSSWithTTA,
    boxes_to_original,
    build_tta_model,
    size_filter,
)
from tests.atss_testing import make_inputs, tiny_model

TEST_CONFIG = "configs/common/test.py"


# ------------------------------------------------------------------------------ geometry
def test_size_filter_is_strict_on_areas():
    boxes = torch.tensor([[0, 0, 96, 96], [0, 0, 97, 96], [0, 0, 10, 10], [0, 0, 300, 300.0]])
    assert size_filter(boxes, (96, 10000)).tolist() == [False, True, False, True]
    assert size_filter(boxes, (0, 256)).tolist() == [True, True, True, False]


@pytest.mark.parametrize("hflip", [False, True])
def test_boxes_to_original_inverts_resize_and_flip(hflip):
    height, width, h, w = 375, 500, 600, 800
    tfms = [ResizeTransform(height, width, h, w)] + ([HFlipTransform(w)] if hflip else [])
    original = np.array([[10.0, 20.0, 200.0, 300.0], [0.0, 0.0, 500.0, 375.0]])
    on_input = TransformList(tfms).apply_box(original)
    back = boxes_to_original(
        torch.tensor(on_input, dtype=torch.float32), (h, w), (height, width), hflip
    )
    np.testing.assert_allclose(back.numpy(), original, atol=1e-3)


class _SquareDetector(nn.Module):
    """Fake detector: one box around the pixels > 128 of channel 0, in its input's coordinates."""

    input_format = "BGR"

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, batched_inputs):
        out = []
        for x in batched_inputs:
            img = x["image"]
            self.calls.append((tuple(img.shape[-2:]), "height" in x))
            ys, xs = torch.nonzero(img[0] > 128, as_tuple=True)
            inst = Instances(tuple(img.shape[-2:]))
            found = len(xs) > 0
            box = [[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]] if found else []
            inst.pred_boxes = Boxes(torch.tensor(box, dtype=torch.float32).reshape(-1, 4))
            inst.scores = torch.tensor([0.9] if found else [])
            inst.pred_classes = torch.tensor([1] if found else [], dtype=torch.int64)
            out.append({"instances": inst})
        return out


def _square_image(height=120, width=160, box=(100, 30, 140, 70)):
    img = torch.zeros(3, height, width, dtype=torch.uint8)
    x1, y1, x2, y2 = box
    img[:, y1:y2, x1:x2] = 255
    return img


def test_tta_maps_every_scale_and_flip_back_onto_the_object():
    model = _SquareDetector().eval()
    tta = ATSSWithTTA(
        model,
        test_size=120,
        test_max_size=400,
        min_sizes=[60, 90, 240],
        max_size=1000,
        size_ranges=None,
        merge_type="vote",
    ).eval()
    (out,) = tta([{"image": _square_image(), "height": 120, "width": 160}])
    inst = out["instances"]
    # 8 runs of an asymmetric object (left/right flips included) vote for one box on the square.
    assert len(model.calls) == 8 and not any(has_hw for _, has_hw in model.calls)
    assert sorted({s for s, _ in model.calls}) == [(60, 80), (90, 120), (120, 160), (240, 320)]
    assert len(inst) == 1 and inst.image_size == (120, 160)
    torch.testing.assert_close(
        inst.pred_boxes.tensor, torch.tensor([[100.0, 30.0, 140.0, 70.0]]), atol=1.5, rtol=0
    )
    assert inst.scores.tolist() == pytest.approx([0.9])


def test_tta_size_filters_and_max_sizes_follow_the_authors_rules():
    model = _SquareDetector().eval()
    # Square of side 40 at the test scale: at shorter side 60 it is 20 px, at 240 it is 80 px.
    tta = ATSSWithTTA(
        model,
        test_size=120,
        test_max_size=150,
        flip=False,
        min_sizes=[60, 240],
        max_size=1000,
        scale_flip=False,
        size_ranges=[[30, 10000], [0, 64]],
    ).eval()
    (out,) = tta([{"image": _square_image(), "height": 120, "width": 160}])
    # Small scales use the test max size (150 -> 60x80 fits), larger ones max_size.
    assert [s for s, _ in model.calls] == [(113, 150), (60, 80), (240, 320)]
    # Both extra-scale boxes were filtered out: only the test-scale box is left.
    assert len(out["instances"]) == 1


def test_tta_on_an_original_size_image_resizes_it_like_the_test_mapper():
    model = _SquareDetector().eval()
    tta = ATSSWithTTA(model, test_size=240, min_sizes=[], size_ranges=None, flip=False).eval()
    img = _square_image()
    (out,) = tta([{"image": img, "height": 120, "width": 160}])
    assert model.calls[0][0] == (240, 320)
    torch.testing.assert_close(
        out["instances"].pred_boxes.tensor,
        torch.tensor([[100.0, 30.0, 140.0, 70.0]]),
        atol=1.0,
        rtol=0,
    )


class _ScaleTaggedSquareDetector(_SquareDetector):
    """_SquareDetector whose class is its input's shorter side: batched_box_voting never merges
    different classes, so the output shows which runs survived their size filter."""

    def forward(self, batched_inputs):
        out = super().forward(batched_inputs)
        for x, o in zip(batched_inputs, out):
            o["instances"].pred_classes = torch.tensor([min(x["image"].shape[-2:])])
        return out


def test_size_filter_applies_to_each_runs_input_pixels():
    """
    The authors filter each extra scale's boxes by their area in that scale's input pixels. The
    40-px square (120 x 160 original) is 20, 30 and 80 px at shorter sides 60, 90 and 240; the
    ranges keep it at 60 (< 25) and 240 (> 70) and drop it at 90 (> 35), the opposite of what
    its original size (40 px) would give. Fails if the filter is removed ({60, 90, 120, 240})
    or applied to the boxes mapped back to the original image ({90, 120}).
    """
    model = _ScaleTaggedSquareDetector().eval()
    tta = ATSSWithTTA(
        model,
        test_size=120,
        test_max_size=400,
        flip=False,
        min_sizes=[60, 90, 240],
        max_size=1000,
        scale_flip=False,
        size_ranges=[[0, 25], [35, 10000], [70, 10000]],
    ).eval()
    (out,) = tta([{"image": _square_image(), "height": 120, "width": 160}])
    assert [s for s, _ in model.calls] == [(120, 160), (60, 80), (90, 120), (240, 320)]
    assert sorted(out["instances"].pred_classes.tolist()) == [60, 120, 240]


def test_file_name_input_is_read_in_the_models_format(tmp_path):
    """
    {"file_name": ...} inputs are read from disk in the wrapped model's input_format (BGR here)
    and "height"/"width" default to the file's size. The square is only in the blue channel:
    read as RGB, channel 0 would be red (empty) and no box would come out. Fails if the file is
    ignored, read in the wrong channel order, or its size not used as the original size.
    """
    from PIL import Image

    rgb = np.zeros((120, 160, 3), dtype=np.uint8)
    rgb[30:70, 100:140, 2] = 255  # blue
    path = tmp_path / "square.png"
    Image.fromarray(rgb).save(path)
    model = _SquareDetector().eval()
    tta = ATSSWithTTA(model, test_size=240, min_sizes=[], size_ranges=None).eval()
    (out,) = tta([{"file_name": str(path)}])
    inst = out["instances"]
    assert model.calls[0][0] == (240, 320) and inst.image_size == (120, 160)
    torch.testing.assert_close(
        inst.pred_boxes.tensor, torch.tensor([[100.0, 30.0, 140.0, 70.0]]), atol=1.0, rtol=0
    )


# ------------------------------------------------------------------------------ real model
@pytest.fixture(scope="module")
def detector():
    torch.manual_seed(0)
    # prior_prob 0.3: the untrained model then has detections above the 0.05 threshold.
    return tiny_model(num_classes=3, **{"head.prior_prob": 0.3}).eval()


# The tiny model's head has GN with one channel per group: every input needs P7 (stride 128) to
# have 2 cells, i.e. a longer side > 128.
def _test_input(original=(72, 108), resized=(96, 144)):
    (inp,) = make_inputs([resized], [torch.zeros(0, 4)], seed=3)
    del inp["instances"]
    inp["height"], inp["width"] = original
    return inp


def test_single_scale_tta_equals_the_model(detector):
    inp = _test_input()
    tta = ATSSWithTTA(
        detector, test_size=96, test_max_size=1333, flip=False, min_sizes=[], size_ranges=None
    ).eval()
    (plain,) = detector([inp])
    (aug,) = tta([inp])
    p, a = plain["instances"], aug["instances"]
    assert len(p) > 0 and len(a) == len(p) and a.image_size == p.image_size == (72, 108)

    def rows(x):
        t = torch.cat([x.scores[:, None], x.pred_classes[:, None].float(), x.pred_boxes.tensor], 1)
        return sorted(t.tolist())

    assert rows(a) == rows(p)


def test_full_tta_returns_valid_capped_boxes(detector):
    inp = _test_input()
    cap = 25
    tta = ATSSWithTTA(
        detector,
        test_size=96,
        test_max_size=150,
        min_sizes=[88, 112, 128],
        max_size=200,
        size_ranges=[[0, 10000], [0, 10000], [0, 64]],
        max_detections_per_image=cap,
        batch_size=2,
    ).eval()
    (out,) = tta([inp])
    inst = out["instances"]
    b = inst.pred_boxes.tensor
    assert 0 < len(inst) <= cap and inst.image_size == (72, 108)
    assert torch.all(b[:, 0] >= 0) and torch.all(b[:, 1] >= 0)
    assert torch.all(b[:, 2] <= 108) and torch.all(b[:, 3] <= 72)
    assert torch.all(b[:, 2] > b[:, 0]) and torch.all(b[:, 3] > b[:, 1])
    assert torch.all((inst.scores > 0) & (inst.scores <= 1))
    assert torch.all(inst.scores[:-1] >= inst.scores[1:])
    assert set(inst.pred_classes.tolist()) <= {0, 1, 2}
    with pytest.raises(RuntimeError):
        tta.train()([inp])
    tta.eval()


class _CallCounter(nn.Module):
    """Wraps a detector and records the batch size of each forward."""

    def __init__(self, model):
        super().__init__()
        self.model, self.batch_sizes = model, []
        self.input_format = model.input_format

    def forward(self, batched_inputs):
        self.batch_sizes.append(len(batched_inputs))
        return self.model(batched_inputs)


def test_batched_tta_equals_one_by_one(detector):
    """
    Runs of one input size (a scale and its flip) batched together (batch_size=2), and two
    images in one call, give what one run / one image at a time gives. Fails if batched outputs
    are paired with the wrong run (a flip un-flipped as a plain run), if runs of different sizes
    are batched (padding changes the features), or if images leak into each other.
    """
    inputs = [_test_input(), _test_input(original=(96, 144), resized=(96, 144))]
    inputs[1]["image"] = inputs[1]["image"].flip(-1)  # a different second image
    kwargs = dict(
        test_size=96,
        test_max_size=150,
        min_sizes=[88, 112],
        max_size=200,
        size_ranges=[[0, 10000], [0, 64]],
    )

    def rows(inst):
        t = torch.cat(
            [inst.scores[:, None], inst.pred_classes[:, None].float(), inst.pred_boxes.tensor], 1
        )
        return t[torch.argsort(t[:, 0], descending=True, stable=True)]

    batched = _CallCounter(detector)
    together = ATSSWithTTA(batched, batch_size=2, **kwargs).eval()(inputs)
    assert batched.batch_sizes == [2, 2, 2] * 2  # (96, flip), (88, flip), (112, flip) per image
    for inp, out in zip(inputs, together):
        single = _CallCounter(detector)
        (alone,) = ATSSWithTTA(single, batch_size=1, **kwargs).eval()([inp])
        assert single.batch_sizes == [1] * 6
        assert len(out["instances"]) > 0
        torch.testing.assert_close(
            rows(out["instances"]), rows(alone["instances"]), atol=1e-4, rtol=1e-4
        )
    # Without flips every run has its own size: nothing may be batched.
    no_flip = _CallCounter(detector)
    ATSSWithTTA(no_flip, batch_size=2, flip=False, scale_flip=False, **kwargs).eval()(inputs[:1])
    assert no_flip.batch_sizes == [1, 1, 1]


# ------------------------------------------------------------------------------ config switch
def test_build_tta_model_follows_the_config_switch():
    cfg = LazyConfig.load(TEST_CONFIG)
    model = _SquareDetector()
    assert build_tta_model(cfg, model) is model  # off by default
    assert build_tta_model(LazyConfig.load("configs/common/optim.py"), model) is model
    cfg = LazyConfig.apply_overrides(cfg, ["test.aug.enabled=True"])
    model.train()
    tta = build_tta_model(cfg, model)
    assert isinstance(tta, ATSSWithTTA) and tta.model is model
    assert tta.training and model.training  # wrapping leaves the mode alone
    assert not build_tta_model(cfg, model.eval()).training
    # The authors' 26 runs: 800 (+flip) unfiltered, then 12 scales (+flips) with filters.
    assert len(tta.runs) == 2 + 2 * len(TTA_MIN_SIZES)
    assert tta.runs[0] == (800, 1333, False, None) and tta.runs[1] == (800, 1333, True, None)
    assert tta.runs[2] == (400, 1333, False, (96.0, 10000.0))
    assert tta.runs[-1] == (1800, 3000, True, (0.0, 96.0))
    assert tta.max_detections_per_image == 1000 and tta.vote_iou_threshold == 0.66
    assert tta.merge_type == "soft-vote"
