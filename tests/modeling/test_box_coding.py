"""Encode/decode round trips of the two box codings (BOX and POINT)."""

import pytest
import torch

from atss import PointBoxTransform, build_box_transform
from tests.atss_testing import grid_anchors, random_boxes


def _anchor_box_pairs(n=500):
    g = torch.Generator().manual_seed(0)
    anchors = torch.cat(grid_anchors(512, 512)[0])
    anchors = anchors[torch.randint(0, len(anchors), (n,), generator=g)]
    # GTs around each anchor, sizes within the decode clamp (ratio <= 1000/16)
    ctr = (anchors[:, :2] + anchors[:, 2:]) / 2
    side = anchors[:, 2:] - anchors[:, :2]
    gt_ctr = ctr + (torch.rand(n, 2, generator=g) - 0.5) * side * 0.5
    gt_wh = side * (0.1 + 3 * torch.rand(n, 2, generator=g))
    return anchors, torch.cat([gt_ctr - gt_wh / 2, gt_ctr + gt_wh / 2], dim=1)


def test_box_coding_round_trip_and_weights():
    """BOX: decode(encode(gt)) == gt; the authors' weights (10, 10, 5, 5)."""
    t = build_box_transform("BOX")
    assert tuple(t.weights) == (10.0, 10.0, 5.0, 5.0)
    anchors, gt = _anchor_box_pairs()
    torch.testing.assert_close(
        t.apply_deltas(t.get_deltas(anchors, gt), anchors), gt, rtol=0, atol=1e-3
    )
    assert t.get_deltas(anchors, anchors).abs().max() < 1e-5


def test_box_coding_clamps_dw_dh_at_log_1000_over_16():
    """BOX decoding caps the predicted log-scale at log(1000/16): dw = 100 (/ weight 5 = 20)
    on the anchor [0, 0, 64, 64] gives a box 64 x 1000/16 = 4000 wide around x = 32, i.e.
    [-1968, 0, 2032, 64] (by hand). Fails if the clamp is another value (e.g. log(1000))
    or dropped (the width would be 64 e^20)."""
    t = build_box_transform("BOX")
    box = t.apply_deltas(torch.tensor([[0.0, 0.0, 100.0, 0.0]]), torch.tensor([[0.0, 0, 64, 64]]))
    torch.testing.assert_close(box, torch.tensor([[-1968.0, 0.0, 2032.0, 64.0]]))


def test_point_coding_is_distance_over_stride():
    """POINT: deltas are (l, t, r, b) / stride for 8-stride anchors, and round-trip."""
    t = build_box_transform("POINT", anchor_scale=8.0)
    assert isinstance(t, PointBoxTransform)
    anchor = torch.tensor([[-28.0, -28.0, 36.0, 36.0]])  # stride 8, centre (4, 4)
    gt = torch.tensor([[0.0, 2.0, 20.0, 44.0]])
    torch.testing.assert_close(t.get_deltas(anchor, gt), torch.tensor([[0.5, 0.25, 2.0, 5.0]]))
    anchors, gt = _anchor_box_pairs()
    inside = _centres_inside(anchors, gt)
    torch.testing.assert_close(
        t.apply_deltas(t.get_deltas(anchors[inside], gt[inside]), anchors[inside]),
        gt[inside],
        rtol=0,
        atol=1e-3,
    )
    # the anchor itself is (4, 4, 4, 4) strides away from its centre
    torch.testing.assert_close(t.get_deltas(anchor, anchor), torch.full((1, 4), 4.0))


def test_point_decoding_never_inverts_boxes():
    """Negative POINT predictions decode to empty boxes (ReLU), never inverted ones."""
    t = build_box_transform("POINT")
    anchors = torch.cat(grid_anchors(64, 64)[0])
    boxes = t.apply_deltas(-torch.rand(len(anchors), 4) * 10, anchors)
    assert bool((boxes[:, 2:] >= boxes[:, :2]).all())


def test_unknown_coding_is_rejected():
    """A typo in the switch fails loudly, naming the choices."""
    with pytest.raises(ValueError, match="BOX"):
        build_box_transform("box")


def test_random_gts_round_trip():
    """BOX round trip on random GTs matched to the nearest-size anchor level."""
    g = torch.Generator().manual_seed(3)
    gt = random_boxes(100, 400, 400, g, min_size=8, max_size=200)
    anchors = gt.clone()
    anchors[:, 2:] = anchors[:, :2] + 64  # any anchor within the clamp range
    t = build_box_transform("BOX")
    torch.testing.assert_close(
        t.apply_deltas(t.get_deltas(anchors, gt), anchors), gt, rtol=0, atol=1e-3
    )


def _centres_inside(anchors, gt):
    c = (anchors[:, :2] + anchors[:, 2:]) / 2
    return (c > gt[:, :2]).all(1) & (c < gt[:, 2:]).all(1)
