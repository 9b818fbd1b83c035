"""
The label-assignment strategies compared in the ATSS paper, behind one switch.

``AnchorAssigner(mode=...)`` with mode

* ``"ATSS"`` (default): adaptive training sample selection, :func:`atss.atss_match`;
* ``"IoU"``: RetinaNet's rule, IoU >= 0.5 positive, < 0.4 negative, in between ignored, plus
  each GT's highest-IoU anchors; positives whose centre is outside their GT are ignored
  (the authors' ``POSITIVE_TYPE 'IoU'``);
* ``"SSC"``: FCOS's spatial and scale constraint: the anchor centre inside the GT and the GT's
  largest centre-to-side distance within the level's range; the smallest GT wins;
* ``"TOPK"``: the k anchors with the highest IoU over all levels, kept when their centre is
  inside the GT (the authors' ablation without the adaptive threshold).

Every mode returns, per anchor, the matched GT index, -1 for background or -2 for "ignore".
Like :func:`atss_match`, none of them materialises an anchors x GTs matrix: the dense modes
walk over chunks of GTs with a bounded element budget.
"""

import math
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .matcher import (
    _aligned_iou,
    _centers,
    _centers_inside,
    _sq_dist,
    atss_match,
    resolve_conflicts,
)

__all__ = ["AnchorAssigner", "iou_match", "ssc_match", "topk_match", "IGNORE", "BACKGROUND"]

BACKGROUND = -1
IGNORE = -2
_CHUNK_ELEMENTS = 1 << 22


class AnchorAssigner:
    """
    Callable label assigner; ``mode`` is the one switch between the paper's strategies.
    """

    MODES = ("ATSS", "IoU", "SSC", "TOPK")

    def __init__(
        self,
        mode: str = "ATSS",
        topk: int = 9,
        iou_thresholds: Tuple[float, float] = (0.4, 0.5),
        allow_low_quality_matches: bool = True,
        scale_ranges: Optional[Sequence[Tuple[float, float]]] = None,
    ):
        """
        Args:
            mode: one of ``MODES``.
            topk: k of ATSS (per level) and of TOPK (over all levels).
            iou_thresholds: (negative below, positive from) of the IoU mode.
            allow_low_quality_matches: IoU mode: each GT also gets its highest-IoU anchors.
            scale_ranges: SSC mode: (low, high) of the largest centre-to-side distance per level;
                default (0, s], (s, 2s], ... derived from the anchor sizes (= FCOS's
                [0,64], [64,128], [128,256], [256,512], [512,inf] for 8·stride anchors).
        """
        if mode not in self.MODES:
            raise ValueError(f"AnchorAssigner: unknown mode {mode!r}; choose one of {self.MODES}")
        self.mode = mode
        self.topk = int(topk)
        self.iou_thresholds = tuple(float(t) for t in iou_thresholds)
        self.allow_low_quality_matches = bool(allow_low_quality_matches)
        self.scale_ranges = None if scale_ranges is None else [tuple(r) for r in scale_ranges]

    def __call__(
        self,
        anchors_per_level: List[Tensor],
        gt_boxes: Tensor,
        anchors_per_location: int = 1,
        grid_sizes: Optional[Sequence[Tuple[int, int]]] = None,
    ) -> Tensor:
        """
        Args:
            anchors_per_level: list of (A_l, 4) XYXY tensors, level order P3..P7.
            gt_boxes: (G, 4) XYXY.
            anchors_per_location: #A.
            grid_sizes: optional (H_l, W_l) per level (enables ATSS's fast candidate search).

        Returns:
            (sum_l A_l,) int64: GT index, -1 background, -2 ignore.
        """
        if self.mode == "ATSS":
            return atss_match(
                anchors_per_level, gt_boxes, self.topk, anchors_per_location, grid_sizes
            )
        if self.mode == "IoU":
            return iou_match(
                anchors_per_level, gt_boxes, self.iou_thresholds, self.allow_low_quality_matches
            )
        if self.mode == "SSC":
            return ssc_match(anchors_per_level, gt_boxes, self.scale_ranges)
        return topk_match(anchors_per_level, gt_boxes, self.topk)

    def __repr__(self):
        return f"AnchorAssigner(mode={self.mode!r}, topk={self.topk})"


def _prepare(anchors_per_level, gt_boxes):
    anchors = torch.cat([a.reshape(-1, 4).float() for a in anchors_per_level])
    gt_boxes = gt_boxes.reshape(-1, 4).float()
    matched = torch.full((len(anchors),), BACKGROUND, dtype=torch.int64, device=gt_boxes.device)
    return anchors, gt_boxes, matched


def _chunks(num_gt: int, num_anchors: int):
    step = max(1, _CHUNK_ELEMENTS // max(num_anchors, 1))
    for g in range(0, num_gt, step):
        yield g, min(g + step, num_gt)


def iou_match(
    anchors_per_level: List[Tensor],
    gt_boxes: Tensor,
    thresholds: Tuple[float, float] = (0.4, 0.5),
    allow_low_quality_matches: bool = True,
) -> Tensor:
    """
    RetinaNet's max-IoU rule with the centre-in-box condition (see module docstring).
    Equal IoUs go to the lower GT index. A GT whose best IoU is 0 (e.g. a degenerate box) gets no
    low-quality match, instead of matching every anchor at IoU 0.

    Returns:
        (A,) int64: GT index, -1 background, -2 ignore.
    """
    anchors, gt_boxes, matched = _prepare(anchors_per_level, gt_boxes)
    num_gt, num_anchors = len(gt_boxes), len(anchors)
    if num_gt == 0 or num_anchors == 0:
        return matched
    neg_thresh, pos_thresh = thresholds
    best_iou = anchors.new_full((num_anchors,), -1.0)
    best_gt = matched.clone()
    gt_best = anchors.new_zeros(num_gt)
    for lo, hi in _chunks(num_gt, num_anchors):
        iou = _aligned_iou(anchors[None], gt_boxes[lo:hi, None])  # (C, A)
        gt_best[lo:hi] = iou.amax(dim=1)
        chunk_best = iou.amax(dim=0)
        first = _first_index_of(iou == chunk_best[None], lo)
        better = chunk_best > best_iou  # strict: earlier (lower) GTs win ties
        best_gt = torch.where(better, first, best_gt)
        best_iou = torch.where(better, chunk_best, best_iou)

    matched = torch.where(best_iou >= pos_thresh, best_gt, matched)
    matched = torch.where((best_iou >= neg_thresh) & (best_iou < pos_thresh), IGNORE, matched)
    if allow_low_quality_matches:
        for lo, hi in _chunks(num_gt, num_anchors):
            iou = _aligned_iou(anchors[None], gt_boxes[lo:hi, None])
            is_lq = (iou == gt_best[lo:hi, None]) & (gt_best[lo:hi, None] > 0)
            # Like Detectron2's Matcher: the anchor is positive, matched to its best GT.
            matched = torch.where(is_lq.any(dim=0), best_gt, matched)
    pos = matched >= 0
    inside = _centers_inside(anchors, gt_boxes[matched.clamp(min=0)])
    return torch.where(pos & ~inside, IGNORE, matched)


def ssc_match(
    anchors_per_level: List[Tensor],
    gt_boxes: Tensor,
    scale_ranges: Optional[Sequence[Tuple[float, float]]] = None,
) -> Tensor:
    """
    FCOS's spatial and scale constraint (see module docstring); the smallest-area GT wins, equal
    areas go to the lower GT index.

    Returns:
        (A,) int64: GT index or -1.
    """
    if scale_ranges is None:
        scale_ranges = _default_scale_ranges(anchors_per_level)
    if len(scale_ranges) != len(anchors_per_level):
        raise ValueError(
            f"ssc_match: {len(scale_ranges)} scale ranges for {len(anchors_per_level)} levels"
        )
    anchors, gt_boxes, matched = _prepare(anchors_per_level, gt_boxes)
    num_gt, num_anchors = len(gt_boxes), len(anchors)
    if num_gt == 0 or num_anchors == 0:
        return matched
    sizes = [len(a) for a in anchors_per_level]
    lo_hi = anchors.new_tensor(scale_ranges).repeat_interleave(torch.tensor(sizes), dim=0)
    centers = _centers(anchors)
    areas = (gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1])
    best_area = anchors.new_full((num_anchors,), math.inf)
    for lo, hi in _chunks(num_gt, num_anchors):
        g = gt_boxes[lo:hi, None]  # (C, 1, 4)
        ltrb = torch.cat([centers[None] - g[..., :2], g[..., 2:] - centers[None]], dim=-1)
        max_dist = ltrb.amax(dim=-1)
        ok = (ltrb.amin(dim=-1) > 0) & (max_dist >= lo_hi[:, 0]) & (max_dist <= lo_hi[:, 1])
        area = torch.where(ok, areas[lo:hi, None], anchors.new_tensor(math.inf))
        chunk_best = area.amin(dim=0)
        first = _first_index_of(ok & (area == chunk_best[None]), lo)
        better = chunk_best < best_area
        matched = torch.where(better, first, matched)
        best_area = torch.where(better, chunk_best, best_area)
    return matched


def topk_match(anchors_per_level: List[Tensor], gt_boxes: Tensor, topk: int = 9) -> Tensor:
    """
    The k highest-IoU anchors of each GT over all levels (equal IoU: nearer centre first, then
    lower index), kept when their centre is inside the GT; conflicts by the highest IoU.

    Returns:
        (A,) int64: GT index or -1.
    """
    anchors, gt_boxes, matched = _prepare(anchors_per_level, gt_boxes)
    num_gt, num_anchors = len(gt_boxes), len(anchors)
    if num_gt == 0 or num_anchors == 0:
        return matched
    k = min(topk, num_anchors)
    centers = _centers(anchors)
    cand = []
    for lo, hi in _chunks(num_gt, num_anchors):
        g = gt_boxes[lo:hi, None]
        iou = _aligned_iou(anchors[None], g)
        dist = _sq_dist(centers[None], _centers(g))
        order = torch.sort(dist, dim=1, stable=True).indices  # by distance, then index
        by_iou = torch.sort(iou.gather(1, order), dim=1, descending=True, stable=True).indices
        cand.append(order.gather(1, by_iou[:, :k]))
    cand = torch.cat(cand)  # (G, k)
    cand_boxes = anchors[cand]
    ious = _aligned_iou(cand_boxes, gt_boxes[:, None])
    is_pos = _centers_inside(cand_boxes, gt_boxes[:, None])
    gt_idx = torch.arange(num_gt, device=cand.device)[:, None].expand_as(cand)
    return resolve_conflicts(cand[is_pos], gt_idx[is_pos], ious[is_pos], num_anchors, out=matched)


def _first_index_of(mask: Tensor, offset: int) -> Tensor:
    """For a (C, A) boolean mask, the lowest row index (+offset) that is True in each column."""
    rows = torch.arange(mask.shape[0], device=mask.device)[:, None] + offset
    big = torch.iinfo(torch.int64).max
    return torch.where(mask, rows, torch.full_like(rows, big)).amin(dim=0)


def _default_scale_ranges(anchors_per_level):
    """(anchor_size/2, anchor_size] per level, first from 0 and last to infinity (FCOS)."""
    sizes = []
    for a in anchors_per_level:
        sizes.append(float(a[0, 2] - a[0, 0]) if len(a) else math.nan)
    ranges = [(s / 2, s) for s in sizes]
    ranges[0] = (0.0, ranges[0][1])
    ranges[-1] = (ranges[-1][0], math.inf)
    return ranges
