"""End-to-end behaviour of the ATSS meta-architecture on a tiny CPU model."""

import pytest
import torch
from detectron2.structures import Boxes, pairwise_iou
from detectron2.utils.events import EventStorage

from tests.atss_testing import make_inputs, tiny_model

SIZES = [(128, 160), (96, 128)]


def _boxes():
    return [
        torch.tensor([[10.0, 12.0, 70.0, 90.0], [60.0, 20.0, 150.0, 60.0], [5, 80, 30, 120]]),
        torch.tensor([[30.0, 30.0, 90.0, 80.0]]),
    ]


def _train_losses(model, inputs):
    model.train()
    with EventStorage() as storage:
        losses = model(inputs)
    return losses, storage


def test_training_losses_are_finite_and_named():
    """A training step gives three finite losses and logs positives per image."""
    model = tiny_model()
    losses, storage = _train_losses(model, make_inputs(SIZES, _boxes()))
    assert set(losses) == {"loss_atss_cls", "loss_atss_reg", "loss_atss_ctr"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert storage.history("num_pos_anchors").latest() > 0
    assert 0 <= storage.history("gt_without_positive_frac").latest() <= 1


@pytest.mark.parametrize("which", ["one_image", "whole_batch"])
def test_images_without_gt(which):
    """Zero GTs (one image or the whole batch): finite losses, reg/ctr in the graph."""
    boxes = _boxes()
    boxes[1] = torch.zeros(0, 4)
    if which == "whole_batch":
        boxes[0] = torch.zeros(0, 4)
    model = tiny_model()
    losses, _ = _train_losses(model, make_inputs(SIZES, boxes))
    assert all(torch.isfinite(v) for v in losses.values())
    if which == "whole_batch":
        assert losses["loss_atss_reg"].item() == 0 and losses["loss_atss_ctr"].item() == 0
    total = sum(losses.values())
    total.backward()
    assert losses["loss_atss_reg"].grad_fn is not None
    assert losses["loss_atss_ctr"].grad_fn is not None
    assert model.head.cls_score.weight.grad is not None


def test_a_few_steps_reduce_the_loss():
    """Ten SGD steps on one fixed tiny batch lower the total loss."""
    model = tiny_model()
    inputs = make_inputs(SIZES, _boxes())
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    first = last = None
    for _ in range(10):
        losses, _ = _train_losses(model, inputs)
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        opt.step()
        first = first if first is not None else total.item()
        last = total.item()
    assert last < first * 0.9, (first, last)


@pytest.mark.parametrize(
    "overrides",
    [
        {"assigner.mode": "IoU"},
        {"assigner.mode": "SSC"},
        {"assigner.mode": "TOPK"},
        {"box_coding": "POINT"},
    ],
    ids=["IoU", "SSC", "TOPK", "POINT"],
)
def test_switches_train_and_infer(overrides):
    """Every assigner mode and the POINT coding train and infer."""
    model = tiny_model(**overrides)
    losses, _ = _train_losses(model, make_inputs(SIZES, _boxes()))
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        out = model(make_inputs(SIZES, _boxes()))
    assert len(out) == 2


def test_several_anchors_per_location():
    """#A = 9 (3 scales x 3 ratios) trains and infers; head channels follow #A."""
    sizes = [[8 * s * 2 ** (i / 3) for i in range(3)] for s in [8, 16, 32, 64, 128]]
    model = tiny_model(
        **{
            "anchor_generator.sizes": sizes,
            "anchor_generator.aspect_ratios": [0.5, 1.0, 2.0],
            "head.num_anchors": 9,
        }
    )
    assert model.anchors_per_location == 9
    losses, _ = _train_losses(model, make_inputs(SIZES, _boxes()))
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        model(make_inputs(SIZES, _boxes()))


def test_point_coding_rejects_several_anchors():
    """POINT is anchor-free: #A > 1 is refused with a clear message."""
    with pytest.raises(ValueError, match="POINT"):
        tiny_model(
            **{
                "box_coding": "POINT",
                "anchor_generator.aspect_ratios": [0.5, 1.0],
                "head.num_anchors": 2,
            }
        )


def test_non_finite_gt_box_is_reported_with_the_image():
    """A NaN GT coordinate fails early with the image id in the message."""
    boxes = _boxes()
    boxes[1] = torch.tensor([[30.0, float("nan"), 90.0, 80.0]])
    with pytest.raises(ValueError, match="image_id=1"):
        _train_losses(tiny_model(), make_inputs(SIZES, boxes))


def _decode(model, logits, deltas, ctr, image_size=(100, 120)):
    anchors = model.anchor_generator([torch.zeros(1, 1, 13, 15)])
    return model.inference_single_image(anchors, [logits], [deltas], [ctr], image_size)


def test_inference_scores_are_sqrt_p_times_c_and_threshold_on_p():
    """Scores = sqrt(p·c); a pair is a candidate only if the raw p > 0.05 (not p·c)."""
    model = tiny_model(
        num_classes=2,
        head_in_features=["p3"],
        **{"anchor_generator.sizes": [[64]], "anchor_generator.strides": [8]},
    )
    n = 13 * 15
    logits = torch.full((n, 2), -10.0)
    logits[20, 1] = 0.0  # p = 0.5
    logits[100, 0] = -2.5  # p = 0.076 > 0.05 but p·c tiny
    logits[150, 0] = -3.0  # p = 0.047 < 0.05: never a candidate
    ctr = torch.full((n, 1), -4.0)
    ctr[20] = 1.0
    res = _decode(model, logits, torch.zeros(n, 4), ctr)
    p, c = torch.tensor([0.5, torch.sigmoid(torch.tensor(-2.5))]), torch.sigmoid(
        torch.tensor([1.0, -4.0])
    )
    torch.testing.assert_close(res.scores, (p * c).sqrt())
    assert res.pred_classes.tolist() == [1, 0]


def test_inference_caps_detections_respects_nms_and_clips():
    """<= 100 detections, no same-class pair above IoU 0.6, boxes inside the image."""
    torch.manual_seed(0)
    model = tiny_model(num_classes=3)
    model.eval()
    n = 13 * 15
    anchors = model.anchor_generator([torch.zeros(1, 1, 13, 15)])
    res = model.inference_single_image(
        anchors, [torch.randn(n, 3) * 3], [torch.randn(n, 4)], [torch.randn(n, 1)], (90, 110)
    )
    assert 0 < len(res) <= 100
    b = res.pred_boxes.tensor
    assert bool((b[:, 0] >= 0).all() & (b[:, 2] <= 110).all() & (b[:, 3] <= 90).all())
    assert bool(((res.scores >= 0) & (res.scores <= 1)).all())
    for c in res.pred_classes.unique():
        same = res.pred_classes == c
        iou = pairwise_iou(Boxes(b[same]), Boxes(b[same]))
        iou.fill_diagonal_(0)
        assert iou.max() <= 0.6 + 1e-6


def test_inference_end_to_end_returns_instances_in_input_resolution():
    """model(inputs) in eval returns Instances rescaled to the requested height/width."""
    model = tiny_model()
    model.eval()
    inputs = make_inputs(SIZES, _boxes())
    inputs[0]["height"], inputs[0]["width"] = 256, 320
    model.test_score_thresh = 0.0
    with torch.no_grad():
        out = model(inputs)
    inst = out[0]["instances"]
    assert inst.image_size == (256, 320) and 0 < len(inst) <= 100
    assert bool((inst.pred_boxes.tensor[:, 2] <= 320).all())


def test_at_most_topk_candidates_per_level_enter_nms():
    """§11.18: each level contributes at most test_topk_candidates detections."""
    model = tiny_model(num_classes=2)
    model.test_topk_candidates = 5
    n = 13 * 15
    anchors = model.anchor_generator([torch.zeros(1, 1, 13, 15)])
    inst = model._decode_level(
        anchors[0], torch.zeros(n, 2), torch.zeros(n, 4), torch.zeros(n, 1), (100, 120)
    )
    assert len(inst) == 5


def test_losses_follow_the_authors_formulas():
    """§11.16: cls = Σfocal / max(#pos, 1); reg = 2·Σ ctr·(1-GIoU) / Σ ctr; ctr = ΣBCE / #pos."""
    from torch.nn import functional as F

    from atss.modeling.losses import centerness_targets, focal_loss
    from tests.atss_testing import reference_giou

    model = tiny_model()
    inputs = make_inputs(SIZES, _boxes())
    model.train()
    captured = {}
    real_losses = model.losses

    def spy(*args):
        captured["args"] = args
        return real_losses(*args)

    model.losses = spy
    with EventStorage():
        losses = model(inputs)
    anchors, logits, labels, deltas, gt_boxes, ctr = captured["args"]
    labels = torch.stack(labels)
    pos = (labels >= 0) & (labels < 3)
    n_pos = max(int(pos.sum()), 1)
    logits = torch.cat(logits, 1)
    cls = focal_loss(logits.reshape(-1, 3), labels.reshape(-1), 3, 0.25, 2.0) / n_pos
    a = Boxes.cat(anchors).tensor[None].expand(2, -1, -1)[pos]
    tgt = torch.stack(gt_boxes)[pos]
    pred = model.box2box_transform.apply_deltas(torch.cat(deltas, 1)[pos], a)
    c = centerness_targets(Boxes(a).get_centers(), tgt)
    # GIoU from its definition (not the package's giou): the reg loss must be 2·Σ c(1-GIoU)/Σ c
    gious = torch.tensor([reference_giou(p, t) for p, t in zip(pred.tolist(), tgt.tolist())])
    reg = 2.0 * ((1 - gious) * c).sum() / c.sum()
    ctr_logit = torch.cat(ctr, 1).squeeze(2)[pos]
    ctr_loss = F.binary_cross_entropy_with_logits(ctr_logit, c, reduction="sum") / n_pos
    torch.testing.assert_close(losses["loss_atss_cls"], cls)
    torch.testing.assert_close(losses["loss_atss_reg"], reg)
    torch.testing.assert_close(losses["loss_atss_ctr"], ctr_loss)
    assert bool((c > 0).all() & (c <= 1).all())


@pytest.mark.parametrize(
    "case",
    ["empty_list", "grayscale", "rgba", "tiny", "odd_sides", "large"],
)
def test_inference_inputs_give_valid_results(case):
    """Empty list, 1/4-channel, smaller-than-stride, odd-sized and large images all decode."""
    model = tiny_model(channels=64)  # GN(32) needs >1 value per group on 1x1 maps
    model.eval()
    g = torch.Generator().manual_seed(0)
    if case == "empty_list":
        with torch.no_grad():
            assert model([]) == []
        return
    shape = {
        "grayscale": (1, 150, 170),
        "rgba": (4, 150, 170),
        "tiny": (3, 20, 17),
        "odd_sides": (3, 157, 211),
        "large": (3, 1400, 1900),
    }[case]
    img = torch.randint(0, 256, shape, generator=g).float()
    model.test_score_thresh = 0.0
    with torch.no_grad():
        inst = model([{"image": img}])[0]["instances"]
    h, w = shape[1:]
    assert inst.image_size == (h, w) and len(inst) <= 100
    b = inst.pred_boxes.tensor
    assert bool(torch.isfinite(b).all() & (b[:, 2] <= w).all() & (b[:, 3] <= h).all())
    assert bool(((inst.scores >= 0) & (inst.scores <= 1)).all())


def test_bad_image_shapes_fail_clearly():
    """A 2-channel or 2-D image is refused with a message naming the shape."""
    model = tiny_model().eval()
    with pytest.raises(ValueError, match="2 channels"):
        model([{"image": torch.zeros(2, 64, 64)}])
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        model([{"image": torch.zeros(64, 64)}])
