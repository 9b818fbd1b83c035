"""Loss functions: centerness targets, GIoU, focal, normalisers (the formulas of the paper and
the authors' code, as projects/ATSS/README.md "How ATSS works" states them)."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from atss.modeling.losses import (
    centerness_loss,
    centerness_targets,
    focal_loss,
    giou,
    loss_normalizers,
    weighted_giou_loss,
)
from tests.atss_testing import reference_giou


def test_centerness_is_one_at_the_centre_and_in_range():
    """Centerness target = 1 at the GT centre, in (0, 1] inside, symmetric under swaps."""
    box = torch.tensor([[0.0, 0.0, 40.0, 20.0]])
    assert centerness_targets(torch.tensor([[20.0, 10.0]]), box).item() == 1.0
    p = torch.tensor([[5.0, 3.0]])
    val = centerness_targets(p, box).item()
    assert 0 < val < 1
    assert math.isclose(val, math.sqrt((5 / 35) * (3 / 17)), rel_tol=1e-6)
    mirrored = torch.tensor([[35.0, 17.0]])
    assert math.isclose(centerness_targets(mirrored, box).item(), val, rel_tol=1e-6)


def test_centerness_never_nan_outside_or_on_the_edge():
    """Points on or outside the box edge give 0, never NaN (two negatives do not multiply)."""
    box = torch.tensor([[0.0, 0.0, 10.0, 10.0]]).expand(3, 4)
    pts = torch.tensor([[0.0, 5.0], [-1.0, -1.0], [20.0, 30.0]])
    out = centerness_targets(pts, box)
    assert torch.equal(out, torch.zeros(3))


GIOU_CASES = {
    # name: (pred, target, GIoU worked out by hand: IoU - (hull - union) / hull)
    "partial_overlap": ((0, 0, 10, 10), (5, 5, 15, 15), 25 / 175 - 50 / 225),  # -5/63
    "containment": ((2, 2, 6, 6), (0, 0, 10, 10), 16 / 100),
    "disjoint": ((0, 0, 10, 10), (20, 0, 30, 10), -100 / 300),
    "identical": ((5, 5, 30, 9), (5, 5, 30, 9), 1.0),
    # x2 < x1, y2 < y1: collapsed to the point (10, 10), no area: IoU 0, hull = target
    "inverted_pred": ((10, 10, 0, 0), (0, 0, 10, 10), 0.0),
}


def test_giou_at_hand_computed_values():
    """
    GIoU on partial overlap (-5/63), containment (0.16), disjoint (-1/3), identical (1) and an
    inverted prediction (0). Fails on a missing enclosing-box term (disjoint would be 0), a
    wrong hull, or an unclamped inverted box: its "area" (-10)·(-10) = 100 would make it score
    GIoU 1, a perfect match.
    """
    pred = torch.tensor([c[0] for c in GIOU_CASES.values()], dtype=torch.float32)
    target = torch.tensor([c[1] for c in GIOU_CASES.values()], dtype=torch.float32)
    expected = torch.tensor([c[2] for c in GIOU_CASES.values()])
    torch.testing.assert_close(giou(pred, target), expected, rtol=0, atol=1e-6)
    # the test oracle agrees with the hand values
    for p, t, value in GIOU_CASES.values():
        assert math.isclose(reference_giou(p, t), value, abs_tol=1e-12)


def test_weighted_giou_loss_is_the_weighted_sum_of_one_minus_giou():
    """sum_i w_i (1 - GIoU_i) with hand values: 0.5·(1 + 5/63) + 2·(1 + 1/3) + 3·(1 - 1).
    Fails if the weights are dropped, normalised, or applied to GIoU instead of 1 - GIoU."""
    names = ["partial_overlap", "disjoint", "identical"]
    pred = torch.tensor([GIOU_CASES[n][0] for n in names], dtype=torch.float32)
    target = torch.tensor([GIOU_CASES[n][1] for n in names], dtype=torch.float32)
    loss = weighted_giou_loss(pred, target, torch.tensor([0.5, 2.0, 3.0]))
    assert math.isclose(loss.item(), 0.5 * (1 + 5 / 63) + 2 * (1 + 1 / 3), rel_tol=1e-6)


def test_giou_of_disjoint_boxes_and_inverted_predictions_stay_finite():
    """Inverted predictions are clamped, not NaN, and score below a perfect match."""
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    inverted = torch.tensor([[10.0, 10.0, 0.0, 0.0]])
    value = giou(inverted, a)
    assert torch.isfinite(value).all() and value.item() < 0.5


def test_focal_loss_ignores_ignored_anchors_and_matches_formula():
    """Focal loss sums over valid anchors; labels -1 are excluded; C = background."""
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.3], [9.0, 9.0]])
    labels = torch.tensor([0, 2, -1])
    p = logits[:2].sigmoid()
    expected = (
        -0.25 * (1 - p[0, 0]) ** 2 * torch.log(p[0, 0])
        - 0.75 * p[0, 1] ** 2 * torch.log(1 - p[0, 1])
        - 0.75 * p[1, 0] ** 2 * torch.log(1 - p[1, 0])
        - 0.75 * p[1, 1] ** 2 * torch.log(1 - p[1, 1])
    )
    torch.testing.assert_close(focal_loss(logits, labels, 2, 0.25, 2.0), expected)


def test_normalizers_single_process():
    """Single process: N_pos = max(#pos, 1), S_ctr = sum of targets, guarded against 0."""
    n, s = loss_normalizers(torch.tensor(7), torch.tensor(3.5))
    assert n.item() == 7 and s.item() == 3.5
    n, s = loss_normalizers(torch.tensor(0), torch.tensor(0.0))
    assert n.item() == 1.0 and s.item() > 0


def test_empty_positive_losses_are_zero_and_connected():
    """No positives: GIoU and centerness losses are 0 and still part of the graph."""
    pred = torch.zeros(0, 4, requires_grad=True)
    ctr = torch.zeros(0, requires_grad=True)
    reg = weighted_giou_loss(pred * 2, torch.zeros(0, 4), torch.zeros(0))
    cl = centerness_loss(ctr * 2, torch.zeros(0))
    assert reg.item() == 0 and cl.item() == 0
    (reg + cl).backward()
    assert pred.grad is not None and ctr.grad is not None


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(0, 50))
def test_random_boxes_give_finite_losses(seed, n):
    """Randomised boxes (degenerate ones included) never produce NaN/inf in GIoU/centerness."""
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(n, 4, generator=g) * 1000 - 100
    b = torch.rand(n, 4, generator=g) * 1000 - 100
    b[:, 2:] = torch.maximum(b[:, 2:], b[:, :2])  # targets valid, maybe zero-size
    assert torch.isfinite(giou(a, b)).all()
    assert torch.isfinite(centerness_targets(a[:, :2], b)).all()
