"""
Score-weighted box voting: the merge step of multi-scale TTA (:mod:`.tta`) and of tiled
inference (:mod:`atss.inference.tiled_detector`), the authors' ``soft_bbox_vote`` /
``bbox_vote``.

Per class: repeatedly take the highest-scoring remaining box; every remaining box with IoU >=
``iou_threshold`` (0.66) joins its cluster; a cluster of one box is kept as it is, a larger
cluster becomes one box, the score-weighted mean of its members, with the highest member score;
with ``soft`` each member of a merged cluster is also kept as it was, with score
score·(1 - IoU with the cluster's top box), when that is >= ``soft_score_threshold`` (0.05).
IoUs use Detectron2's continuous box convention (widths x2 - x1; the authors add 1 pixel).
"""

from typing import Tuple

import numpy as np
import torch
from detectron2.structures import Boxes, pairwise_iou
from torch import Tensor

__all__ = ["box_voting", "batched_box_voting"]


def _greedy_clusters(member: Tensor) -> Tensor:
    """
    Greedy clustering of boxes sorted by decreasing score: box i, if still free, leads a cluster
    of every free box j with member[i, j]. Returns each box's leader index. The only sequential
    part of box voting; it runs on a boolean matrix (numpy), O(#clusters) vector steps.
    """
    m = member.cpu().numpy()
    n = m.shape[0]
    leader = np.full(n, -1, dtype=np.int64)
    for i in range(n):
        if leader[i] >= 0:
            continue
        free = m[i] & (leader < 0)
        free[i] = True
        leader[free] = i
    return torch.from_numpy(leader).to(member.device)


def box_voting(
    boxes: Tensor,
    scores: Tensor,
    iou_threshold: float = 0.66,
    soft: bool = True,
    soft_score_threshold: float = 0.05,
) -> Tuple[Tensor, Tensor]:
    """
    Score-weighted box voting of boxes of one class (the authors' ``soft_bbox_vote`` and, with
    ``soft=False``, ``bbox_vote``), see the module docstring.

    Args:
        boxes: (N, 4) XYXY; scores: (N,) in [0, 1].
        iou_threshold: IoU with the cluster's top box from which a box joins the cluster (>=).
        soft: keep the members of merged clusters with score·(1 - IoU) (soft-vote).
        soft_score_threshold: minimum decayed score of those kept members.

    Returns:
        boxes (M, 4), scores (M,), sorted by decreasing score.
    """
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"box_voting: iou_threshold must be in (0, 1], got {iou_threshold}")
    if len(boxes) == 0:
        return boxes.new_zeros((0, 4)), scores.new_zeros(0)
    scores, order = scores.sort(descending=True, stable=True)
    boxes = boxes[order]
    n = len(boxes)
    iou = pairwise_iou(Boxes(boxes), Boxes(boxes))
    idx = torch.arange(n, device=boxes.device)
    iou[idx, idx] = 1.0  # a box always belongs to its own cluster, even a degenerate one
    leader = _greedy_clusters(iou >= iou_threshold)

    leaders, cluster = torch.unique(leader, return_inverse=True)  # leaders in score order
    k = len(leaders)
    size = torch.bincount(cluster, minlength=k)
    weight_sum = scores.new_zeros(k).index_add_(0, cluster, scores)
    weighted = boxes.new_zeros((k, 4)).index_add_(0, cluster, boxes * scores[:, None])
    plain_mean = boxes.new_zeros((k, 4)).index_add_(0, cluster, boxes) / size[:, None]
    merged = torch.where(
        weight_sum[:, None] > 0, weighted / weight_sum.clamp(min=1e-30)[:, None], plain_mean
    )
    # Single-box clusters are kept bit-exact; a cluster's score is its top (first) box's score.
    merged = torch.where(size[:, None] == 1, boxes[leaders], merged)
    out_boxes, out_scores = [merged], [scores[leaders]]

    if soft:
        decayed = scores * (1.0 - iou[leader, idx])
        keep = (size[cluster] > 1) & (decayed >= soft_score_threshold)
        out_boxes.append(boxes[keep])
        out_scores.append(decayed[keep])
    out_boxes, out_scores = torch.cat(out_boxes), torch.cat(out_scores)
    out_scores, order = out_scores.sort(descending=True, stable=True)
    return out_boxes[order], out_scores


def batched_box_voting(
    boxes: Tensor,
    scores: Tensor,
    classes: Tensor,
    iou_threshold: float = 0.66,
    soft: bool = True,
    soft_score_threshold: float = 0.05,
) -> Tuple[Tensor, Tensor, Tensor]:
    """
    :func:`box_voting` per class (boxes of different classes never interact).

    Returns:
        boxes (M, 4), scores (M,), classes (M,), sorted by decreasing score.
    """
    out_b, out_s, out_c = [boxes.new_zeros((0, 4))], [scores.new_zeros(0)], [classes.new_zeros(0)]
    for c in torch.unique(classes):
        mask = classes == c
        b, s = box_voting(boxes[mask], scores[mask], iou_threshold, soft, soft_score_threshold)
        out_b.append(b)
        out_s.append(s)
        out_c.append(torch.full_like(s, int(c), dtype=classes.dtype))
    b, s, c = torch.cat(out_b), torch.cat(out_s), torch.cat(out_c)
    s, order = s.sort(descending=True, stable=True)
    return b[order], s, c[order]
