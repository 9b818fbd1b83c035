"""The label-assignment strategies compared in the ATSS paper, behind one switch.

``AnchorAssigner(mode=...)``: ``"ATSS"`` (default, :func:`atss.atss_match`); ``"IoU"``
(RetinaNet's 0.5 / 0.4 rule with each GT's highest-IoU anchors, centres outside the GT ignored:
the authors' ``POSITIVE_TYPE 'IoU'``); ``"SSC"`` (FCOS's spatial and scale constraint, the
smallest GT wins); ``"TOPK"`` (the k highest-IoU anchors over all levels with their centre in
the GT: ATSS without the adaptive threshold). Every mode returns per anchor the matched GT
index, ``BACKGROUND`` (-1) or ``IGNORE`` (-2), shares the matcher's geometry
(:mod:`atss.modeling.matcher`: centre test, chunk budget, conflict rule) and, like
:func:`atss_match`, never materialises an anchors x GTs matrix.
"""

import math
from typing import List, Optional, Sequence, Tuple

import torch
from detectron2.structures import Boxes, pairwise_iou, pairwise_point_box_distance
from torch import Tensor

from .matcher import (
    BACKGROUND,
    CENTER_MARGIN,
    atss_match,
    centers_inside,
    gt_chunks,
    resolve_conflicts,
    squared_distance,
)

__all__ = ["AnchorAssigner", "iou_match", "ssc_match", "topk_match", "IGNORE", "BACKGROUND"]

# Matched index of an anchor that is neither positive nor negative (excluded from the loss).
IGNORE = -2


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
        self.scale_ranges = None if scale_ranges is None else _check_ranges(scale_ranges)

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
            (sum_l A_l,) int64: GT index, ``BACKGROUND`` (-1) or ``IGNORE`` (-2).
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


def iou_match(
    anchors_per_level: List[Tensor],
    gt_boxes: Tensor,
    thresholds: Tuple[float, float] = (0.4, 0.5),
    allow_low_quality_matches: bool = True,
) -> Tensor:
    """
    RetinaNet's max-IoU rule with the centre-in-box condition, as the authors' ``'IoU'`` type:

    * each anchor's best IoU over the GTs: >= ``thresholds[1]`` positive (matched to that GT),
      < ``thresholds[0]`` background, in between ignored;
    * low-quality matches: every anchor that reaches some GT's highest IoU becomes positive,
      matched to its own best GT (Detectron2's / maskrcnn-benchmark's ``Matcher``);
    * a positive whose centre is not inside its GT by more than ``CENTER_MARGIN`` is ignored.

    Equal IoUs go to the lower GT index. A GT whose best IoU is 0 (e.g. a degenerate box) gets
    no low-quality match, instead of matching every anchor at IoU 0.

    Returns:
        (A,) int64: GT index, ``BACKGROUND`` (-1) or ``IGNORE`` (-2).
    """
    anchors, gt_boxes, matched = _prepare(anchors_per_level, gt_boxes)
    num_gt, num_anchors = len(gt_boxes), len(anchors)
    if num_gt == 0 or num_anchors == 0:
        return matched
    neg_thresh, pos_thresh = thresholds
    anchor_boxes = Boxes(anchors)
    best_iou = anchors.new_full((num_anchors,), -1.0)
    best_gt = matched.clone()
    gt_best = anchors.new_zeros(num_gt)
    for lo, hi in gt_chunks(num_gt, num_anchors):
        iou = pairwise_iou(Boxes(gt_boxes[lo:hi]), anchor_boxes)  # (C, A)
        gt_best[lo:hi] = iou.amax(dim=1)
        chunk_best = iou.amax(dim=0)
        first = _first_index_of(iou == chunk_best[None], lo)
        better = chunk_best > best_iou  # strict: earlier (lower) GTs win ties
        best_gt = torch.where(better, first, best_gt)
        best_iou = torch.where(better, chunk_best, best_iou)

    matched = torch.where(best_iou >= pos_thresh, best_gt, matched)
    matched = torch.where((best_iou >= neg_thresh) & (best_iou < pos_thresh), IGNORE, matched)
    if allow_low_quality_matches:
        for lo, hi in gt_chunks(num_gt, num_anchors):
            iou = pairwise_iou(Boxes(gt_boxes[lo:hi]), anchor_boxes)
            is_lq = (iou == gt_best[lo:hi, None]) & (gt_best[lo:hi, None] > 0)
            # Like Detectron2's Matcher: the anchor is positive, matched to its best GT.
            matched = torch.where(is_lq.any(dim=0), best_gt, matched)
    pos = matched >= 0
    inside = centers_inside(anchor_boxes.get_centers(), gt_boxes[matched.clamp(min=0)])
    return torch.where(pos & ~inside, IGNORE, matched)


def ssc_match(
    anchors_per_level: List[Tensor],
    gt_boxes: Tensor,
    scale_ranges: Optional[Sequence[Tuple[float, float]]] = None,
) -> Tensor:
    """
    FCOS's spatial and scale constraint, as the authors' ``'SSC'`` type: an anchor is a
    candidate of a GT when its centre is inside the GT by more than ``CENTER_MARGIN`` (0.01)
    on all sides and the largest centre-to-side distance lies in the level's range (both ends
    inclusive); among its candidate GTs the smallest-area one wins, equal areas go to the lower
    GT index. Areas are w·h of the continuous boxes (the authors' ``BoxList.area`` adds the
    legacy +1 to each side, which can reorder two GTs of nearly equal area).

    Args:
        scale_ranges: (low, high) per level; default from the anchor sizes, see
            :class:`AnchorAssigner`.

    Returns:
        (A,) int64: GT index or ``BACKGROUND`` (-1).
    """
    if scale_ranges is None:
        scale_ranges = _default_scale_ranges(anchors_per_level)
    if len(scale_ranges) != len(anchors_per_level):
        raise ValueError(
            f"ssc_match: {len(scale_ranges)} scale ranges (model.assigner.scale_ranges) for "
            f"{len(anchors_per_level)} anchor levels: give one (low, high) per level"
        )
    anchors, gt_boxes, matched = _prepare(anchors_per_level, gt_boxes)
    num_gt, num_anchors = len(gt_boxes), len(anchors)
    if num_gt == 0 or num_anchors == 0:
        return matched
    sizes = [len(a) for a in anchors_per_level]
    lo_hi = anchors.new_tensor(scale_ranges).repeat_interleave(torch.tensor(sizes), dim=0)
    centers = Boxes(anchors).get_centers()
    areas = Boxes(gt_boxes).area()
    best_area = anchors.new_full((num_anchors,), math.inf)
    for lo, hi in gt_chunks(num_gt, num_anchors):
        ltrb = pairwise_point_box_distance(centers, Boxes(gt_boxes[lo:hi])).transpose(0, 1)
        max_dist = ltrb.amax(dim=-1)  # (C, A)
        ok = ltrb.amin(dim=-1) > CENTER_MARGIN
        ok &= (max_dist >= lo_hi[:, 0]) & (max_dist <= lo_hi[:, 1])
        area = torch.where(ok, areas[lo:hi, None], anchors.new_tensor(math.inf))
        chunk_best = area.amin(dim=0)
        first = _first_index_of(ok & (area == chunk_best[None]), lo)
        better = chunk_best < best_area
        matched = torch.where(better, first, matched)
        best_area = torch.where(better, chunk_best, best_area)
    return matched


def topk_match(anchors_per_level: List[Tensor], gt_boxes: Tensor, topk: int = 9) -> Tensor:
    """
    The authors' ``'TOPK'`` type: the k highest-IoU anchors of each GT over all levels
    together (equal IoU: nearer centre first, then lower index), kept when their centre is
    inside the GT by more than ``CENTER_MARGIN``; an anchor kept by several GTs goes to the
    highest IoU, equal IoU to the lower GT index.

    Returns:
        (A,) int64: GT index or ``BACKGROUND`` (-1).
    """
    anchors, gt_boxes, matched = _prepare(anchors_per_level, gt_boxes)
    num_gt, num_anchors = len(gt_boxes), len(anchors)
    if num_gt == 0 or num_anchors == 0:
        return matched
    k = min(topk, num_anchors)
    anchor_boxes = Boxes(anchors)
    centers = anchor_boxes.get_centers()
    gt_centers = Boxes(gt_boxes).get_centers()
    cand, cand_ious = [], []
    for lo, hi in gt_chunks(num_gt, num_anchors):
        iou = pairwise_iou(Boxes(gt_boxes[lo:hi]), anchor_boxes)  # (C, A)
        dist = squared_distance(centers[None], gt_centers[lo:hi, None])
        order = torch.sort(dist, dim=1, stable=True).indices  # by distance, then index
        by_iou = torch.sort(iou.gather(1, order), dim=1, descending=True, stable=True).indices
        chunk_cand = order.gather(1, by_iou[:, :k])
        cand.append(chunk_cand)
        cand_ious.append(iou.gather(1, chunk_cand))
    cand, ious = torch.cat(cand), torch.cat(cand_ious)  # (G, k)
    is_pos = centers_inside(centers[cand], gt_boxes[:, None])
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


def _check_ranges(scale_ranges):
    ranges = [tuple(float(v) for v in r) for r in scale_ranges]
    for i, r in enumerate(ranges):
        if len(r) != 2 or not r[0] <= r[1]:
            raise ValueError(
                f"AnchorAssigner: scale_ranges[{i}] = {r} (model.assigner.scale_ranges) must be "
                "(low, high) with low <= high"
            )
    return ranges
