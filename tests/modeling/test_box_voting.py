"""
Tests of ``atss.modeling.box_voting``: box voting as pure functions, against a slow loop written
from the authors' description.
"""

import pytest
import torch

from atss.modeling.box_voting import batched_box_voting, box_voting


# ------------------------------------------------------------------------------ reference
def _iou(a, b):
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(iw, 0.0) * max(ih, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if inter > 0 else 0.0


def _reference_voting(boxes, scores, thr=0.66, soft=True, soft_thr=0.05):
    """The authors' (soft_)bbox_vote restated as a plain loop, continuous IoU, float64."""
    dets = sorted(zip(scores.tolist(), boxes.tolist()), key=lambda d: -d[0])
    out = []
    while dets:
        top = dets[0][1]
        ious = [_iou(top, b) for _, b in dets]
        ious[0] = 1.0
        members = [(d, o) for d, o in zip(dets, ious) if o >= thr]
        dets = [d for d, o in zip(dets, ious) if o < thr]
        if len(members) == 1:
            out.append((members[0][0][0], members[0][0][1]))
            continue
        wsum = sum(s for (s, _), _ in members)
        merged = [sum(s * b[i] for (s, b), _ in members) / wsum for i in range(4)]
        out.append((max(s for (s, _), _ in members), merged))
        if soft:
            for (s, b), o in members:
                if s * (1 - o) >= soft_thr:
                    out.append((s * (1 - o), b))
    out.sort(key=lambda d: -d[0])
    boxes = torch.tensor([b for _, b in out], dtype=torch.float64).reshape(-1, 4)
    return boxes, torch.tensor([s for s, _ in out], dtype=torch.float64)


def _clustered_boxes(n, generator, num_clusters=6):
    """Random boxes jittered around a few centres, so that clusters of every size appear."""
    centres = torch.rand(num_clusters, 2, generator=generator) * 200
    sizes = 20 + torch.rand(num_clusters, 2, generator=generator) * 60
    pick = torch.randint(0, num_clusters, (n,), generator=generator)
    ctr = centres[pick] + torch.randn(n, 2, generator=generator) * 4
    wh = sizes[pick] * (1 + 0.15 * torch.randn(n, 2, generator=generator)).clamp(min=0.3)
    boxes = torch.cat([ctr - wh / 2, ctr + wh / 2], dim=1)
    scores = 0.05 + 0.95 * torch.rand(n, generator=generator)
    return boxes, scores


# ------------------------------------------------------------------------------ box voting
def test_identical_duplicates_vote_to_one_box_with_the_same_score():
    box = torch.tensor([[10.0, 20.0, 50.0, 80.0]])
    for soft in (True, False):
        b, s = box_voting(box.repeat(5, 1), torch.full((5,), 0.7), soft=soft)
        assert b.shape == (1, 4) and s.shape == (1,)
        torch.testing.assert_close(b, box)
        torch.testing.assert_close(s, torch.tensor([0.7]))


def test_two_overlapping_boxes_merge_by_score_and_soft_keep_the_other():
    boxes = torch.tensor([[0.0, 0.0, 100.0, 100.0], [0.0, 0.0, 100.0, 80.0]])  # IoU 0.8
    scores = torch.tensor([0.9, 0.6])
    b, s = box_voting(boxes, scores, iou_threshold=0.66, soft=True, soft_score_threshold=0.05)
    merged = (0.9 * boxes[0] + 0.6 * boxes[1]) / 1.5
    torch.testing.assert_close(b, torch.stack([merged, boxes[1]]))
    torch.testing.assert_close(s, torch.tensor([0.9, 0.6 * (1 - 0.8)]))
    # Plain voting drops the merged-away box; a high soft threshold does too.
    b, s = box_voting(boxes, scores, soft=False)
    torch.testing.assert_close(b, merged[None])
    b, s = box_voting(boxes, scores, soft=True, soft_score_threshold=0.2)
    assert len(b) == 1


def test_boxes_below_the_vote_threshold_and_other_classes_stay_apart():
    boxes = torch.tensor([[0.0, 0.0, 100.0, 100.0], [0.0, 0.0, 100.0, 60.0]])  # IoU 0.6
    scores = torch.tensor([0.5, 0.8])
    b, s = box_voting(boxes, scores)
    torch.testing.assert_close(b, boxes.flip(0))
    torch.testing.assert_close(s, scores.flip(0))
    same = torch.tensor([[5.0, 5.0, 50.0, 50.0]] * 2)
    b, s, c = batched_box_voting(same, torch.tensor([0.3, 0.4]), torch.tensor([2, 7]))
    assert c.tolist() == [7, 2] and s.tolist() == pytest.approx([0.4, 0.3])
    torch.testing.assert_close(b, same)


def test_empty_and_single_inputs():
    b, s = box_voting(torch.zeros(0, 4), torch.zeros(0))
    assert b.shape == (0, 4) and s.shape == (0,)
    b, s, c = batched_box_voting(
        torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long)
    )
    assert b.shape == (0, 4) and s.shape == (0,) and c.shape == (0,)
    one = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    b, s = box_voting(one, torch.tensor([0.2]))
    assert torch.equal(b, one) and s.tolist() == pytest.approx([0.2])
    with pytest.raises(ValueError):
        box_voting(one, torch.tensor([0.2]), iou_threshold=0.0)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("soft", [True, False])
def test_box_voting_matches_the_reference_loop(seed, soft):
    g = torch.Generator().manual_seed(seed)
    boxes, scores = _clustered_boxes(120, g)
    b, s = box_voting(boxes, scores, 0.66, soft, 0.05)
    rb, rs = _reference_voting(boxes.double(), scores.double(), 0.66, soft, 0.05)
    assert len(b) < len(boxes)  # something was merged
    assert torch.all(s[:-1] >= s[1:])
    torch.testing.assert_close(s.double(), rs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.double(), rb, rtol=1e-5, atol=1e-3)


def test_batched_box_voting_is_per_class_voting():
    g = torch.Generator().manual_seed(7)
    boxes, scores = _clustered_boxes(150, g, num_clusters=4)
    classes = torch.randint(0, 3, (150,), generator=g)
    b, s, c = batched_box_voting(boxes, scores, classes)
    assert torch.all(s[:-1] >= s[1:])
    for k in range(3):
        rb, rs = box_voting(boxes[classes == k], scores[classes == k])
        torch.testing.assert_close(s[c == k], rs)
        torch.testing.assert_close(b[c == k], rb)
