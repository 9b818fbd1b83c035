"""
The ablation assigners (IoU, SSC, TOPK) against oracles written in ``tests/atss_testing.py`` from
the authors' rules (sfzhang15/ATSS, atss_core/modeling/rpn/atss/loss.py), and on hand-computed
cases; the switch's errors.
"""

import math

import pytest
import torch

import atss.modeling.matcher as matcher_module
from atss.modeling.assigners import (
    BACKGROUND,
    IGNORE,
    AnchorAssigner,
    iou_match,
    ssc_match,
    topk_match,
)
from tests.atss_testing import (
    FCOS_SCALE_RANGES,
    dense_iou_assign,
    dense_ssc_assign,
    dense_topk_assign,
    grid_anchors,
    random_boxes,
)

BG, IG = BACKGROUND, IGNORE


def _cases(num, seed=0):
    """Random small images with P3-P7 anchors and 1-12 GTs, some against the border."""
    g = torch.Generator().manual_seed(seed)
    for i in range(num):
        h, w = (int(x) for x in torch.randint(48, 260, (2,), generator=g))
        anchors, sizes, _ = grid_anchors(h, w)
        n = int(torch.randint(1, 13, (1,), generator=g))
        gt = random_boxes(n, h, w, g, min_size=4, max_size=max(h, w), border=bool(i % 2))
        if i % 5 == 0:  # a duplicated GT: equal IoUs / areas between two GTs
            gt = torch.cat([gt, gt[:1]])
        yield anchors, gt


@pytest.fixture(params=["default", "one_gt_per_chunk"])
def chunking(request, monkeypatch):
    """Run with the default chunk budget and with one GT per dense block (cross-chunk ties)."""
    if request.param == "one_gt_per_chunk":
        monkeypatch.setattr(matcher_module, "CHUNK_ELEMENTS", 1)
    return request.param


# ---------------------------------------------------------------------------------------- IoU
def test_iou_mode_equals_the_authors_rule_on_random_images(chunking):
    """
    IoU mode == the dense anchor-by-anchor oracle (0.5 / 0.4 band, low-quality matches to the
    anchor's own best GT, centre-outside ignore, lower GT on equal IoU), through the switch,
    with and without low-quality matches. Fails on a wrong band edge, a low-quality match to
    the wrong GT, a missing centre rule, or a chunk-boundary tie going to the higher GT.
    """
    positives = ignored = 0
    for anchors, gt in _cases(25):
        flat = torch.cat(anchors)
        got = AnchorAssigner("IoU")(anchors, gt)
        assert torch.equal(got, dense_iou_assign(flat, gt))
        no_lq = iou_match(anchors, gt, allow_low_quality_matches=False)
        assert torch.equal(no_lq, dense_iou_assign(flat, gt, low_quality=False))
        positives += int((got >= 0).sum())
        ignored += int((got == IG).sum())
    assert positives > 50 and ignored > 50, (positives, ignored)


def test_iou_thresholds_and_ignore_band_on_hand_computed_ious():
    """
    GT 10x20 at the origin; anchors of IoU 0.5, 0.4, 0.395, 0.49 (exact areas / 200): the
    bounds are inclusive as in the Matcher (>= 0.5 positive, [0.4, 0.5) ignored, < 0.4
    background). Fails if an inequality is flipped (0.5 or 0.4 exactly on the wrong side).
    """
    gt = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    anchors = [
        torch.tensor(
            [
                [0.0, 0.0, 10.0, 10.0],  # IoU 100/200 = 0.5
                [0.0, 0.0, 10.0, 8.0],  # 80/200 = 0.4
                [0.0, 0.0, 10.0, 7.9],  # 0.395
                [0.0, 0.0, 10.0, 9.8],  # 0.49
            ]
        )
    ]
    got = iou_match(anchors, gt, allow_low_quality_matches=False)
    assert got.tolist() == [0, IG, BG, IG]
    # custom thresholds are honoured
    assert iou_match(anchors, gt, (0.3, 0.45), False).tolist() == [0, IG, IG, 0]


def test_low_quality_match_goes_to_the_anchors_own_best_gt():
    """
    a0 is GT1's best anchor (IoU 100/350 = 0.286) but overlaps GT0 more (100/300 = 0.333): the
    low-quality rule makes a0 positive *for GT0* (Detectron2's and the authors' Matcher), so
    GT1 ends without a positive. Without low-quality matches a0 is background. Fails on an
    implementation that matches a0 to GT1, or that skips low-quality matches.
    """
    anchors = [
        torch.tensor(
            [
                [0.0, 0.0, 10.0, 10.0],  # a0
                [20.0, 0.0, 30.0, 10.0],  # a1: IoU 1/3 with GT0, its only overlap
                [0.0, 0.0, 25.0, 10.0],  # a2: IoU 250/300 with GT0 (GT0's best)
            ]
        )
    ]
    gt = torch.tensor([[0.0, 0.0, 30.0, 10.0], [0.0, 0.0, 10.0, 35.0]])
    assert iou_match(anchors, gt).tolist() == [0, BG, 0]
    assert iou_match(anchors, gt, allow_low_quality_matches=False).tolist() == [BG, BG, 0]
    # A GT whose best anchor is below 0.4 gets it as a (low-quality) positive.
    lone = torch.tensor([[0.0, 0.0, 10.0, 40.0]])  # a0 IoU 0.25, a2 IoU 100/(250+400-100)
    assert iou_match(anchors, lone).tolist() == [0, BG, BG]


@pytest.mark.parametrize(
    "x2, expected",
    [(5.0, IG), (5.005, IG), (5.02, 0)],
    ids=["centre_on_edge", "inside_by_0.005", "inside_by_0.02"],
)
def test_iou_positive_with_centre_outside_its_gt_is_ignored(x2, expected):
    """
    Anchor (0,0,10,10), centre (5,5); GT (0,0,x2,10) reaches IoU >= 0.5 while the centre is
    on its right edge / 0.005 / 0.02 inside: only the last passes the authors' > 0.01 test,
    the others are ignored (not background). Fails without the centre rule or with margin 0.
    """
    got = iou_match([torch.tensor([[0.0, 0.0, 10.0, 10.0]])], torch.tensor([[0.0, 0.0, x2, 10.0]]))
    assert got.tolist() == [expected]


# ---------------------------------------------------------------------------------------- SSC
def test_ssc_mode_equals_the_authors_rule_on_random_images(chunking):
    """
    SSC mode with its default ranges == the oracle with the authors' literal FCOS table
    ([-1, 64], [64, 128], ..., [512, INF]) on P3-P7 8·stride anchors. Fails if the default
    ranges drift from FCOS's, if the centre margin is not 0.01, or if the winner is not the
    smallest area (lower GT on equal areas, also across chunks).
    """
    positives = 0
    for anchors, gt in _cases(25, seed=1):
        got = AnchorAssigner("SSC")(anchors, gt)
        assert torch.equal(got, dense_ssc_assign(anchors, gt, FCOS_SCALE_RANGES))
        positives += int((got >= 0).sum())
    assert positives > 200, positives


def _concentric_levels(centre=1000.0):
    """Five levels, one square anchor each (sides 64..1024 as 8·stride), all centred alike."""
    return [
        torch.tensor([[centre - s / 2, centre - s / 2, centre + s / 2, centre + s / 2]])
        for s in (64.0, 128.0, 256.0, 512.0, 1024.0)
    ]


@pytest.mark.parametrize(
    "half, levels",
    [(10.0, [0]), (64.0, [0, 1]), (64.5, [1]), (128.0, [1, 2]), (300.0, [3]), (600.0, [4])],
)
def test_ssc_scale_ranges_pick_the_level(half, levels):
    """
    A square GT of half-side d around the shared anchor centre has largest centre-to-side
    distance d: it is positive on the levels whose FCOS range [low, high] contains d, both ends
    inclusive (d = 64 on P3 and P4). Fails on exclusive bounds or shifted ranges.
    """
    gt = torch.tensor([[1000.0 - half, 1000.0 - half, 1000.0 + half, 1000.0 + half]])
    got = ssc_match(_concentric_levels(), gt)
    assert [i for i, m in enumerate(got.tolist()) if m == 0] == levels


@pytest.mark.parametrize(
    "x1, expected", [(1000.0 - 0.005, BG), (1000.0 - 0.02, 0)], ids=["0.005", "0.02"]
)
def test_ssc_centre_margin_is_the_authors_0_01(x1, expected):
    """
    The anchor centre 0.005 px inside the GT's left edge is not inside by the authors' 0.01
    margin; at 0.02 px it is. Fails with the former margin 0 (the first case would match).
    """
    gt = torch.tensor([[x1, 980.0, 1040.0, 1020.0]])  # largest distance 40: P3's range
    assert ssc_match(_concentric_levels(), gt).tolist()[0] == expected


def test_ssc_smallest_area_wins_and_equal_areas_go_to_the_lower_index():
    """
    Two GTs contain the P3 anchor centre within range: the smaller area wins whatever the GT
    order; two different shapes of equal area (100x40, 40x100): the lower index. Fails on
    "largest wins", "first GT wins" or "last GT wins".
    """
    levels = _concentric_levels()
    big = torch.tensor([940.0, 940.0, 1060.0, 1060.0])  # 120x120, largest distance 60
    small = torch.tensor([950.0, 980.0, 1050.0, 1020.0])  # 100x40
    tall = torch.tensor([980.0, 950.0, 1020.0, 1050.0])  # 40x100, same area as small
    assert ssc_match(levels, torch.stack([big, small]))[0].item() == 1
    assert ssc_match(levels, torch.stack([small, big]))[0].item() == 0
    assert ssc_match(levels, torch.stack([small, tall]))[0].item() == 0
    assert ssc_match(levels, torch.stack([tall, small]))[0].item() == 0


def test_ssc_custom_scale_ranges_are_used():
    """Explicit ranges replace the defaults (here everything on P4)."""
    gt = torch.tensor([[990.0, 990.0, 1010.0, 1010.0]])  # largest distance 10
    ranges = [(100.0, 200.0), (0.0, math.inf), (1e4, 1e5), (1e4, 1e5), (1e4, 1e5)]
    assert AnchorAssigner("SSC", scale_ranges=ranges)(_concentric_levels(), gt).tolist() == [
        BG,
        0,
        BG,
        BG,
        BG,
    ]


# --------------------------------------------------------------------------------------- TOPK
def test_topk_mode_equals_the_authors_rule_on_random_images(chunking):
    """
    TOPK mode == the oracle (k highest IoUs over all levels together, equal IoU: nearer centre
    then lower index; centre inside by > 0.01; conflicts by IoU then lower GT), k = 9 and 3.
    Fails on per-level top-k, a missing centre test or a wrong conflict rule.
    """
    positives = multi_level = 0
    for anchors, gt in _cases(20, seed=2):
        level = torch.cat([torch.full((len(a),), i) for i, a in enumerate(anchors)])
        for k in (9, 3):
            got = AnchorAssigner("TOPK", topk=k)(anchors, gt)
            assert torch.equal(got, dense_topk_assign(anchors, gt, k)), k
            positives += int((got >= 0).sum())
            multi_level += sum(len(level[got == g].unique()) > 1 for g in range(len(gt)))
    assert positives > 100 and multi_level > 0, (positives, multi_level)


def test_topk_takes_k_over_all_levels_not_per_level():
    """
    A GT containing the centres of more than k anchors on both P3 and P4 keeps exactly k
    positives in all; a per-level top-k would give up to k per level (18 here).
    """
    anchors, _, _ = grid_anchors(256, 256, strides=[8, 16])
    gt = torch.tensor([[20.0, 20.0, 160.0, 150.0]])
    for level in anchors:
        centres = (level[:, :2] + level[:, 2:]) / 2
        inside = (centres > gt[0, :2] + 0.01).all(1) & (centres < gt[0, 2:] - 0.01).all(1)
        assert int(inside.sum()) > 9
    assert int((topk_match(anchors, gt, topk=9) == 0).sum()) == 9


def test_topk_equal_iou_prefers_the_nearer_centre():
    """
    Two anchors with IoU exactly 2/3 (80/120 and 100/150) but centre distances 2 and 2.5:
    with k = 1 the nearer one is kept although it has the higher index. Fails on index order.
    """
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    anchors = [torch.tensor([[0.0, 0.0, 10.0, 15.0], [2.0, 0.0, 12.0, 10.0]])]
    assert topk_match(anchors, gt, topk=1).tolist() == [BG, 0]


# ------------------------------------------------------------------------------------- switch
def test_unknown_mode_and_bad_scale_ranges_fail_clearly():
    """An unknown mode names itself and the choices; mismatched or inverted scale ranges name
    the counts / the config key."""
    with pytest.raises(ValueError, match=r"unknown mode 'atss'.*'ATSS', 'IoU', 'SSC', 'TOPK'"):
        AnchorAssigner("atss")
    anchors, _, _ = grid_anchors(64, 64)
    gt = torch.tensor([[0.0, 0.0, 30.0, 30.0]])
    four = AnchorAssigner("SSC", scale_ranges=FCOS_SCALE_RANGES[:4])
    with pytest.raises(
        ValueError, match=r"4 scale ranges .*model.assigner.scale_ranges.* 5 anchor"
    ):
        four(anchors, gt)
    with pytest.raises(ValueError, match=r"scale_ranges\[1\].*low <= high"):
        AnchorAssigner("SSC", scale_ranges=[(0, 64), (128, 64)])


@pytest.mark.parametrize("mode", ["IoU", "SSC", "TOPK"])
def test_no_gt_gives_background_everywhere(mode):
    """Zero GTs: every anchor is background (no ignore, no crash)."""
    anchors, _, _ = grid_anchors(64, 96)
    got = AnchorAssigner(mode)(anchors, torch.zeros(0, 4))
    assert got.shape == (sum(len(a) for a in anchors),) and bool((got == BG).all())
