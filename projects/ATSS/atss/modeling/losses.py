"""
ATSS losses as pure functions (all computed in float32, also under mixed precision).

* classification: sigmoid focal loss (alpha 0.25, gamma 2), summed, divided by N_pos;
* regression: 2 x sum_pos ctr_i (1 - GIoU_i) / S_ctr, the GIoU loss weighted by the
  centerness target of each positive;
* centerness: BCE-with-logits against the centerness target, summed, divided by N_pos;

with N_pos = max(all-reduce-sum(#positives) / world_size, 1) and
S_ctr = all-reduce-sum(sum_pos ctr_i) / world_size (guarded against 0). The all-reduce runs on
every process at every step, also when a process has no positive, so no rank can wait forever.
"""

from typing import Tuple

import torch
import torch.distributed as dist
from fvcore.nn import sigmoid_focal_loss_jit
from torch import Tensor
from torch.nn import functional as F

__all__ = [
    "centerness_targets",
    "giou",
    "focal_loss",
    "weighted_giou_loss",
    "centerness_loss",
    "reduce_mean_across_processes",
    "loss_normalizers",
]


def centerness_targets(points: Tensor, boxes: Tensor) -> Tensor:
    """
    sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)) of points inside boxes.

    Args:
        points: (P, 2) anchor centres; boxes: (P, 4) XYXY boxes containing them.

    Returns:
        (P,) values in (0, 1] for points strictly inside; 0 for points on or outside an edge
        (never NaN, so a caller's bug cannot poison the loss).
    """
    points, boxes = points.float(), boxes.float()
    lr = torch.stack([points[:, 0] - boxes[:, 0], boxes[:, 2] - points[:, 0]], dim=1)
    tb = torch.stack([points[:, 1] - boxes[:, 1], boxes[:, 3] - points[:, 1]], dim=1)
    # Each factor is clamped at 0 separately: two negative factors must not multiply to a
    # positive value for a point outside the box.
    ratio_lr = (lr.amin(1) / lr.amax(1).clamp(min=1e-12)).clamp(min=0)
    ratio_tb = (tb.amin(1) / tb.amax(1).clamp(min=1e-12)).clamp(min=0)
    return (ratio_lr * ratio_tb).sqrt()


def giou(pred: Tensor, target: Tensor, eps: float = 1e-7) -> Tensor:
    """
    Generalised IoU of aligned (P, 4) XYXY boxes. Predicted boxes are made valid by clamping
    x2 >= x1, y2 >= y1 (as the authors do) instead of asserting it, which would force a host
    sync on every step. Returns (P,) values in [-1, 1].
    """
    pred, target = pred.float(), target.float()
    x1, y1 = pred[:, 0], pred[:, 1]
    x2, y2 = torch.maximum(pred[:, 2], x1), torch.maximum(pred[:, 3], y1)
    area_p = (x2 - x1) * (y2 - y1)
    area_t = (target[:, 2] - target[:, 0]) * (target[:, 3] - target[:, 1])
    iw = (torch.minimum(x2, target[:, 2]) - torch.maximum(x1, target[:, 0])).clamp(min=0)
    ih = (torch.minimum(y2, target[:, 3]) - torch.maximum(y1, target[:, 1])).clamp(min=0)
    inter = iw * ih
    union = area_p + area_t - inter + eps
    ew = torch.maximum(x2, target[:, 2]) - torch.minimum(x1, target[:, 0])
    eh = torch.maximum(y2, target[:, 3]) - torch.minimum(y1, target[:, 1])
    enclose = ew * eh + eps
    return inter / union - (enclose - union) / enclose


def focal_loss(logits: Tensor, labels: Tensor, num_classes: int, alpha: float, gamma: float):
    """
    Sigmoid focal loss summed over anchors and classes.

    Args:
        logits: (R, C) class logits; labels: (R,) in [0, C) for positives, C for background and
            -1 for ignored anchors (excluded).
    """
    valid = labels >= 0
    target = F.one_hot(labels[valid], num_classes=num_classes + 1)[:, :num_classes]
    return sigmoid_focal_loss_jit(
        logits[valid].float(), target.float(), alpha=alpha, gamma=gamma, reduction="sum"
    )


def weighted_giou_loss(pred_boxes: Tensor, target_boxes: Tensor, weights: Tensor) -> Tensor:
    """sum_i w_i (1 - GIoU_i) over aligned (P, 4) boxes and (P,) weights (0 when P = 0)."""
    return ((1.0 - giou(pred_boxes, target_boxes)) * weights.float()).sum()


def centerness_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """BCE-with-logits summed over (P,) centerness logits and targets."""
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="sum")


def reduce_mean_across_processes(x: Tensor) -> Tensor:
    """Sum over processes divided by the world size; identity for a single process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    x = x.detach().clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x / dist.get_world_size()


def loss_normalizers(num_pos: Tensor, ctr_sum: Tensor) -> Tuple[Tensor, Tensor]:
    """
    The authors' normalisers from this process's positive count and centerness-target sum.
    One all-reduce carries both numbers. Returns (N_pos, S_ctr) as float32 scalar tensors, with
    N_pos >= 1 and S_ctr >= machine epsilon (a batch without positives gives zero losses).
    """
    both = reduce_mean_across_processes(torch.stack([num_pos.float(), ctr_sum.float().detach()]))
    return both[0].clamp(min=1.0), both[1].clamp(min=torch.finfo(torch.float32).eps)
