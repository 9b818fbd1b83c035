"""End-to-end behaviour of the ATSS meta-architecture on a tiny model (on the CPU, and on CUDA)."""

import copy

import pytest
import torch
from detectron2.structures import Boxes, pairwise_iou
from detectron2.utils.events import EventStorage

from tests.atss_testing import (
    FIT_BOXES,
    FIT_SIZE,
    assert_detections_agree,
    fitted_tiny_model,
    make_inputs,
    record_head_dtypes,
    tiny_model,
)

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
    """
    More than 100 detections survive NMS here, and the output keeps the 100 best; no same-class
    pair above IoU 0.6; boxes inside the image. Fails if the cap is dropped or applied before
    NMS (fewer than 100 would remain), or keeps other than the highest scores.
    """
    torch.manual_seed(0)
    model = tiny_model(num_classes=3)
    model.eval()
    n = 13 * 15
    anchors = model.anchor_generator([torch.zeros(1, 1, 13, 15)])
    preds = [torch.randn(n, 3) * 3], [torch.randn(n, 4)], [torch.randn(n, 1)]
    model.max_detections_per_image = 10**6
    uncapped = model.inference_single_image(anchors, *preds, (90, 110))
    assert len(uncapped) > 100  # the cap below has something to cut
    model.max_detections_per_image = 100
    res = model.inference_single_image(anchors, *preds, (90, 110))
    assert len(res) == 100
    torch.testing.assert_close(res.scores, uncapped.scores.sort(descending=True).values[:100])
    b = res.pred_boxes.tensor
    assert bool((b[:, 0] >= 0).all() & (b[:, 2] <= 110).all() & (b[:, 3] <= 90).all())
    assert bool(((res.scores >= 0) & (res.scores <= 1)).all())
    for c in res.pred_classes.unique():
        same = res.pred_classes == c
        iou = pairwise_iou(Boxes(b[same]), Boxes(b[same]))
        iou.fill_diagonal_(0)
        assert iou.max() <= 0.6 + 1e-6


def test_inference_end_to_end_returns_instances_in_input_resolution():
    """
    model(inputs) in eval returns Instances rescaled to the requested height/width: the same
    detections as without height/width, boxes times (320/160, 256/128) = 2. Fails if the boxes
    are left in the input's resolution (only the image size changed) or scaled the wrong way.
    """
    model = tiny_model()
    model.eval()
    inputs = make_inputs(SIZES, _boxes())
    model.test_score_thresh = 0.0
    with torch.no_grad():
        native = model([{"image": inputs[0]["image"]}])[0]["instances"]
        scaled = model([{"image": inputs[0]["image"], "height": 256, "width": 320}])[0]["instances"]
    assert native.image_size == (128, 160) and scaled.image_size == (256, 320)
    assert 0 < len(scaled) == len(native) <= 100
    torch.testing.assert_close(scaled.scores, native.scores)
    torch.testing.assert_close(scaled.pred_boxes.tensor, native.pred_boxes.tensor * 2)
    assert bool((scaled.pred_boxes.tensor[:, 2] > 160).any())  # some box beyond the input size


def test_at_most_topk_candidates_per_level_enter_nms():
    """each level contributes at most test_topk_candidates detections."""
    model = tiny_model(num_classes=2)
    model.test_topk_candidates = 5
    n = 13 * 15
    anchors = model.anchor_generator([torch.zeros(1, 1, 13, 15)])
    inst = model._decode_level(
        anchors[0], torch.zeros(n, 2), torch.zeros(n, 4), torch.zeros(n, 1), (100, 120)
    )
    assert len(inst) == 5


def test_losses_follow_the_authors_formulas():
    """cls = Σfocal / max(#pos, 1); reg = 2·Σ ctr·(1-GIoU) / Σ ctr; ctr = ΣBCE / #pos."""
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


class _FixedHead(torch.nn.Module):
    """A head that predicts class 0 with certainty (p = c = 1) at the given P3 cells only, with
    zero deltas: each detection is its anchor, so the decoded boxes are known by hand."""

    def __init__(self, num_classes, cells):
        super().__init__()
        self.num_classes, self.cells = num_classes, cells

    def forward(self, features):
        logits = [
            f.new_full((f.shape[0], self.num_classes, *f.shape[-2:]), -30.0) for f in features
        ]
        for row, col in self.cells:
            logits[0][:, 0, row, col] = 30.0
        deltas = [f.new_zeros((f.shape[0], 4, *f.shape[-2:])) for f in features]
        ctr = [f.new_full((f.shape[0], 1, *f.shape[-2:]), 30.0) for f in features]
        return logits, deltas, ctr


# Input 96 x 128 (h x w); P3 cells (row 5, col 7) and (row 2, col 15): anchors of side 64 centred
# at (60, 44) and (124, 20), i.e. [28, 12, 92, 76] and [92, -12, 156, 52] (the second crosses
# the right and top borders). COCO results-file boxes (x, y, w, h) at output scale r:
# * ours: the anchor, clipped to [0, 128] x [0, 96], times r, w = x2 - x1;
# * the authors': anchor stored as centre ± (64 - 1) / 2 = [28.5, 12.5, 91.5, 75.5] and
#   [92.5, -11.5, 155.5, 51.5]; zero deltas decode to the same; clip_to_image clamps to
#   [0, 127] x [0, 95] -> [92.5, 0, 127, 51.5]; BoxList.resize multiplies by r; convert("xywh")
#   gives (x1, y1, x2 - x1 + 1, y2 - y1 + 1).
FILE_BOXES = {
    ("detectron2", 1.0): [[28.0, 12.0, 64.0, 64.0], [92.0, 0.0, 36.0, 52.0]],
    ("authors", 1.0): [[28.5, 12.5, 64.0, 64.0], [92.5, 0.0, 35.5, 52.5]],
    ("detectron2", 0.5): [[14.0, 6.0, 32.0, 32.0], [46.0, 0.0, 18.0, 26.0]],
    ("authors", 0.5): [[14.25, 6.25, 32.5, 32.5], [46.25, 0.0, 18.25, 26.75]],
}


@pytest.mark.parametrize("convention,scale", sorted(FILE_BOXES))
def test_results_file_boxes_follow_the_box_convention(convention, scale):
    """
    What COCOEvaluator writes for hand-computed detections, with box_convention "detectron2"
    (continuous boxes) and "authors" (their legacy "+1" boxes, worked out above from their
    BoxCoder.decode, BoxList.clip_to_image / resize / convert and coco_eval.py). Fails if the
    authors' mode shifts by 1 px or not at all, ignores their W - 1 clip, or scales their
    "+1" widths (x2 - x1 + 1)·r instead of (x2 - x1)·r + 1 (only visible at r != 1).
    """
    from detectron2.evaluation.coco_evaluation import instances_to_coco_json

    model = tiny_model(box_convention=convention)
    model.head = _FixedHead(model.num_classes, [(5, 7), (2, 15)])
    model.eval()
    image = torch.zeros(3, 96, 128)
    with torch.no_grad():
        (out,) = model([{"image": image, "height": int(96 * scale), "width": int(128 * scale)}])
    results = instances_to_coco_json(out["instances"], img_id=1)
    written = torch.tensor(sorted(r["bbox"] for r in results))
    torch.testing.assert_close(written, torch.tensor(FILE_BOXES[(convention, scale)]))


def test_results_file_boxes_with_unequal_x_and_y_scales():
    """Output 128 x 48 for the 128 x 96 input above (r_x = 1, r_y = 0.5; Detectron2's resize
    rounds the output size, so r_x and r_y differ a little in practice). The authors': their
    clipped boxes [28.5, 12.5, 91.5, 75.5] and [92.5, 0, 127, 51.5], resized x by 1 and y by
    0.5 -> [28.5, 6.25, 91.5, 37.75] and [92.5, 0, 127, 25.75], "+1" xywh -> (28.5, 6.25, 64,
    32.5) and (92.5, 0, 35.5, 26.75) (by hand, from their BoxList.resize / convert). Fails if
    the x and y scales are swapped in the "+1" correction (only visible when they differ)."""
    from detectron2.evaluation.coco_evaluation import instances_to_coco_json

    model = tiny_model(box_convention="authors")
    model.head = _FixedHead(model.num_classes, [(5, 7), (2, 15)])
    model.eval()
    with torch.no_grad():
        (out,) = model([{"image": torch.zeros(3, 96, 128), "height": 48, "width": 128}])
    written = torch.tensor(sorted(r["bbox"] for r in instances_to_coco_json(out["instances"], 1)))
    torch.testing.assert_close(
        written, torch.tensor([[28.5, 6.25, 64.0, 32.5], [92.5, 0.0, 35.5, 26.75]])
    )


def _authors_clip_reference(box, height, width):
    """Their side, written from maskrcnn-benchmark: the decoded box is ours shrunk by 0.5 px per
    side with inclusive x2, y2 (width x2 - x1 + 1); ``clip_to_image`` (TO_REMOVE = 1) clamps x1
    and x2 to [0, W - 1], y1 and y2 to [0, H - 1]; returned half-open (x2 + 1, y2 + 1)."""
    x1, y1, x2, y2 = box[0] + 0.5, box[1] + 0.5, box[2] - 0.5, box[3] - 0.5
    x1, x2 = (min(max(v, 0.0), width - 1.0) for v in (x1, x2))
    y1, y2 = (min(max(v, 0.0), height - 1.0) for v in (y1, y2))
    return [x1, y1, x2 + 1, y2 + 1]


def test_authors_clip_bounds_on_every_side():
    """96 x 128 input. Boxes wholly right of / below the image, wholly left of / above it,
    starting inside the last pixel, inside, and a sliver at the corner -> by hand [127, 95, 128,
    96], [0, 0, 1, 1], [127, 95, 128, 96], [10.5, 20.5, 30.5, 40.5], [0.3, 0, 1, 1]; equal to
    the reference from their clip_to_image. Fails if x1 / y1 may reach W / H (instead of
    W - 1 / H - 1), if x2 + 1 / y2 + 1 may drop below 1, or y2 + 1 is capped at H - 1."""
    from atss.modeling.meta_arch import authors_clip

    boxes = [
        [130.0, 100.0, 140.0, 110.0],
        [-20.0, -30.0, -10.0, -15.0],
        [127.8, 95.8, 140.0, 100.0],
        [10.0, 20.0, 30.0, 40.0],
        [-0.2, -0.7, 0.3, 0.2],
    ]
    by_hand = [
        [127.0, 95.0, 128.0, 96.0],
        [0.0, 0.0, 1.0, 1.0],
        [127.0, 95.0, 128.0, 96.0],
        [10.5, 20.5, 30.5, 40.5],
        [0.3, 0.0, 1.0, 1.0],
    ]
    reference = [_authors_clip_reference(b, 96, 128) for b in boxes]
    torch.testing.assert_close(torch.tensor(reference), torch.tensor(by_hand))
    got = authors_clip(torch.tensor(boxes, dtype=torch.float64), (96, 128))
    torch.testing.assert_close(got, torch.tensor(by_hand, dtype=torch.float64))


def test_unknown_box_convention_is_refused():
    with pytest.raises(ValueError, match="box_convention"):
        tiny_model(box_convention="legacy")


@pytest.mark.cuda
def test_detections_on_cuda_equal_those_on_the_cpu(cuda_device):
    """The fitted tiny model on the device finds the CPU's confident detections (score >= 0.3):
    each matched within its class by IoU > 0.99, scores within 1e-3 (kernels differ between
    devices, so near-equal scores may reorder). Fails on an inference step that depends on
    the device (anchors, decoding, NMS) or leaves a tensor on the wrong one."""
    cpu_model = _without_nms(fitted_tiny_model())
    model = copy.deepcopy(cpu_model).to(cuda_device)
    generator, compared = torch.Generator().manual_seed(1), 0
    for height, width in [(200, 264), (152, 136)]:
        image = torch.rand(3, height, width, generator=generator) * 255
        with torch.no_grad():
            on_cpu = cpu_model([{"image": image}])[0]["instances"]
            on_device = model([{"image": image.to(cuda_device)}])[0]["instances"].to("cpu")
        compared += assert_detections_agree(on_cpu, on_device, 0.99, 1e-3)
    assert compared > 0


# --- mixed precision: the network in bf16 / fp16, the mathematics after it in fp32 ---------
# bf16 rounds each value to 8 significant bits (2^-9 relative), fp16 to 11, and both accumulate
# convolutions in fp32: over the tiny model's ~20 layers the logits move by well under 1 %, so
# the fitted model's confident detections keep IoU >= 0.98 with their fp32 boxes and scores
# within 0.01.
AMP_MIN_IOU, AMP_MAX_SCORE_DIFF = 0.98, 0.01


def test_under_cpu_autocast_the_network_runs_in_bf16_and_what_follows_in_fp32():
    """A training step and an inference of the tiny model under bf16 autocast on the CPU (what
    ``train.amp.enabled=True`` runs on a CPU with native bf16): the head's outputs are bf16,
    while the losses' inputs (logits, deltas, centerness, matched boxes), the losses, the
    gradients and the decoded boxes and scores are fp32 and finite. (The matcher's inputs are
    Detectron2 ``Boxes``, fp32 whatever autocast does.) Fails if the head's outputs reach the
    losses or the decoding without the fp32 cast: the losses' inputs and the NMS scores then
    come in bf16."""
    model = tiny_model()
    head = record_head_dtypes(model)
    loss_inputs, losses_fn = [], model.losses

    def spy_losses(anchors, logits, labels, deltas, boxes, ctr):
        loss_inputs.append({t.dtype for t in [*logits, *deltas, *ctr, *boxes]})
        return losses_fn(anchors, logits, labels, deltas, boxes, ctr)

    model.losses = spy_losses
    inputs = make_inputs(SIZES, _boxes())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses, _ = _train_losses(model, inputs)
    assert head == [{torch.bfloat16}]
    assert loss_inputs == [{torch.float32}]
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)

    model.eval()
    model.test_score_thresh = 0.001  # detections from an untrained model
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        (out,) = model([{"image": inputs[0]["image"]}])
    assert head[-1] == {torch.bfloat16}
    inst = out["instances"]
    assert len(inst) > 0
    for values in (inst.pred_boxes.tensor, inst.scores):
        assert values.dtype == torch.float32 and torch.isfinite(values).all()


def test_what_follows_the_network_gives_the_same_numbers_under_autocast():
    """From the same fp32 head outputs, the losses of a batch (matcher, focal, GIoU,
    centerness) and the detections of an image (decoding, scores, NMS) are bitwise equal with
    and without bf16 autocast: everything after the network stays fp32 under
    ``train.amp.enabled=True``. Fails if an op there is lowered by autocast, or the boxes are
    rounded to the network's precision (a dtype check cannot see ``.bfloat16().float()``)."""
    model = fitted_tiny_model()
    calls = {}

    def spy(name):
        method = getattr(model, name)

        def record(*args):
            calls[name] = args
            return method(*args)

        return record

    model.forward_training = spy("forward_training")
    model.forward_inference = spy("forward_inference")
    inputs = make_inputs([FIT_SIZE], [FIT_BOXES])
    try:
        with torch.no_grad(), EventStorage():
            model.train()
            model(inputs)
            model.eval()
            model([{"image": inputs[0]["image"]}])
            results = {}
            for autocast in (False, True):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                    losses = type(model).forward_training(model, *calls["forward_training"])
                    (inst,) = type(model).forward_inference(model, *calls["forward_inference"])
                results[autocast] = (losses, inst)
    finally:
        del model.forward_training, model.forward_inference
        model.eval()
    (losses, inst), (amp_losses, amp_inst) = results[False], results[True]
    assert len(inst) > 0
    assert all(torch.equal(losses[k], amp_losses[k]) for k in losses), (losses, amp_losses)
    assert torch.equal(inst.pred_boxes.tensor, amp_inst.pred_boxes.tensor)
    assert torch.equal(inst.scores, amp_inst.scores)


def _without_nms(model):
    """A copy of ``model`` (the cached fitted model stays as it is) whose NMS keeps every box:
    NMS picks one of two nearly equal neighbours, and the rounding of another precision may
    pick the other (IoU ~0.75 between them), which says nothing about the precision of the
    boxes compared here."""
    model = copy.deepcopy(model)
    model.test_nms_thresh = 1.0
    return model


def test_bf16_inference_finds_the_fp32_detections_of_a_fitted_model():
    """The fitted tiny model on the image it was fitted on, in fp32 and under bf16 autocast:
    every confident fp32 detection (score >= 0.3) has a bf16 one of its class with IoU >=
    AMP_MIN_IOU and a score within AMP_MAX_SCORE_DIFF. Fails if the network's outputs lose
    more than bf16's rounding (checked: head outputs rounded to steps of 1/8), or a layer breaks
    in bf16. What follows the network is checked exactly by the test above."""
    model = _without_nms(fitted_tiny_model())
    head = record_head_dtypes(model)
    image = make_inputs([FIT_SIZE], [FIT_BOXES])[0]["image"]
    with torch.no_grad():
        fp32 = model([{"image": image}])[0]["instances"]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model([{"image": image}])[0]["instances"]
    assert head[-2:] == [{torch.float32}, {torch.bfloat16}]
    assert_detections_agree(fp32, bf16, AMP_MIN_IOU, AMP_MAX_SCORE_DIFF)


@pytest.mark.cuda
def test_amp_on_the_device_finds_the_fp32_detections(cuda_device):
    """The fitted tiny model under the device's autocast (``train.amp.enabled=True``: fp16 on
    CUDA, bf16 where the `cuda` tests run against the CPU) finds the CPU's fp32 detections
    within the mixed-precision tolerance. Fails on a layer that overflows or breaks in fp16,
    or on post-processing left in the network's precision."""
    from atss.engine.device import autocast, autocast_dtype

    dtype = autocast_dtype(str(cuda_device), {"enabled": True, "precision": None})
    dtype = dtype or torch.bfloat16  # a CPU without native bf16 still checks bf16
    cpu_model = _without_nms(fitted_tiny_model())
    model = copy.deepcopy(cpu_model).to(cuda_device)
    head = record_head_dtypes(model)
    image = make_inputs([FIT_SIZE], [FIT_BOXES])[0]["image"]
    with torch.no_grad():
        fp32 = cpu_model([{"image": image}])[0]["instances"]
        with autocast(str(cuda_device), dtype):
            amp = model([{"image": image.to(cuda_device)}])[0]["instances"].to("cpu")
    assert head == [{dtype}]
    assert amp.scores.dtype == torch.float32
    assert_detections_agree(fp32, amp, AMP_MIN_IOU, AMP_MAX_SCORE_DIFF)
