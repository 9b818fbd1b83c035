"""Numerical safety: 10,000 randomised matcher + loss trials never produce NaN/inf or raise."""

import pytest
import torch

from atss import atss_match, build_box_transform
from atss.modeling.losses import (
    centerness_loss,
    centerness_targets,
    focal_loss,
    loss_normalizers,
    weighted_giou_loss,
)
from tests.atss_testing import grid_anchors

NUM_TRIALS = 10_000


def _random_gts(g, n, h, w):
    """Mix of normal, tiny, zero-size, inverted, out-of-image and huge boxes."""
    ctr = torch.rand(n, 2, generator=g) * torch.tensor([w, h]) * 1.4 - 0.2 * torch.tensor([w, h])
    wh = torch.rand(n, 2, generator=g) ** 3 * max(h, w) * 2
    boxes = torch.cat([ctr - wh / 2, ctr + wh / 2], dim=1)
    kind = torch.randint(0, 6, (n,), generator=g)
    boxes[kind == 0, 2:] = boxes[kind == 0, :2]  # zero size
    boxes[kind == 1] = boxes[kind == 1][:, [2, 3, 0, 1]]  # inverted
    boxes[kind == 2, 2:] = boxes[kind == 2, :2] + 0.5  # sub-pixel
    return boxes


@pytest.mark.slow
@torch.inference_mode()  # values only, no gradients: torch skips autograd's bookkeeping
def test_ten_thousand_random_trials_are_finite():
    """Random sizes, 0..500 GTs, degenerate boxes, random predictions: all finite, no error."""
    g = torch.Generator().manual_seed(1234)
    cache = {}
    coders = {c: build_box_transform(c) for c in ("BOX", "POINT")}
    num_with_pos = 0
    for trial in range(NUM_TRIALS):
        h, w = (int(v) for v in torch.randint(8, 320, (2,), generator=g) // 8 * 8)
        if (h, w) not in cache:
            cache[(h, w)] = grid_anchors(h, w)
        anchors, sizes, _ = cache[(h, w)]
        n = int(torch.randint(0, 501, (1,), generator=g)) if trial % 10 == 0 else trial % 12
        gt = _random_gts(g, n, h, w)
        matched = atss_match(anchors, gt, grid_sizes=sizes)
        assert matched.shape == (sum(len(a) for a in anchors),)
        flat = torch.cat(anchors)
        pos = matched >= 0
        num_with_pos += bool(pos.any())
        labels = torch.where(pos, torch.zeros_like(matched), torch.ones_like(matched))
        logits = torch.randn(len(flat), 1, generator=g) * 10
        coder = coders["BOX" if trial % 2 else "POINT"]
        deltas = torch.randn(int(pos.sum()), 4, generator=g) * 10  # incl. huge deltas
        pred = coder.apply_deltas(deltas, flat[pos])
        target = gt[matched[pos]]
        ctr = centerness_targets((flat[pos, :2] + flat[pos, 2:]) / 2, target)
        n_pos, s_ctr = loss_normalizers(pos.sum(), ctr.sum())
        losses = torch.stack(
            [
                focal_loss(logits, labels, 1, 0.25, 2.0) / n_pos,
                2.0 * weighted_giou_loss(pred, target, ctr) / s_ctr,
                centerness_loss(torch.randn(len(ctr), generator=g), ctr) / n_pos,
            ]
        )
        assert bool(torch.isfinite(losses).all()), (trial, h, w, n, losses)
        assert bool((ctr > 0).all() & (ctr <= 1).all()), trial  # positives are inside their GT
    assert num_with_pos > NUM_TRIALS // 2
