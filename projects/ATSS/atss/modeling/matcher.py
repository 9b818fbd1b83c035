"""Adaptive Training Sample Selection (ATSS, Zhang et al., CVPR 2020, Algorithm 1).

For every ground-truth box g:

1. on every pyramid level take the k·#A anchors whose centres are nearest to g's centre
   (the candidates C_g; k·#A is capped by the number of anchors on the level);
2. t_g = mean + unbiased std of IoU(C_g, g): the IoU threshold adapts to the object;
3. positives of g = candidates with IoU >= t_g whose centre lies inside g (by > 0.01 px);
4. an anchor claimed by several GTs goes to the GT with the highest IoU.

The implementation never builds an anchors x GTs matrix. Candidate search is per level:

* grid fast path: anchors from :class:`DefaultAnchorGenerator` lie on a regular grid, so
  the nearest anchors of a point lie in a window of (k+1) x (k+1) grid cells around it (see
  :func:`_grid_window_candidates` for why this window is exact, ties included);
* exact fallback for any other anchors: distances + top-k in chunks of GTs, memory bounded by
  :data:`CHUNK_ELEMENTS` per level.

IoU, the threshold (:func:`atss_candidates`, public so that tools explaining an assignment
read the same numbers) and the centre test then run on the <= sum_l k_l candidates of each GT,
and conflicts are resolved with two scatter reductions over the positive pairs only.

The geometry every assigner shares lives here once: :func:`centers_inside` (the authors' centre
test with its 0.01 margin), :func:`squared_distance`, and :func:`gt_chunks` (the element budget
of any dense GT x anchors block); centres and IoUs come from Detectron2's ``Boxes``.

Tie rules (deterministic on CPU and GPU): among anchors at equal distance the lower anchor index
is preferred; between GTs with equal IoU for one anchor, the lower GT index wins.
"""

from typing import Iterator, NamedTuple, Optional, Sequence, Tuple

import torch
from detectron2.structures import Boxes
from detectron2.structures.boxes import matched_pairwise_iou
from torch import Tensor

__all__ = [
    "atss_match",
    "atss_candidates",
    "ATSSCandidates",
    "candidate_anchors",
    "resolve_conflicts",
    "infer_grid_size",
    "centers_inside",
    "squared_distance",
    "gt_chunks",
    "BACKGROUND",
    "CENTER_MARGIN",
    "CHUNK_ELEMENTS",
]

# Matched index of an anchor that belongs to no GT.
BACKGROUND = -1
# Element budget of one dense (GT-chunk x anchors) block wherever a rule needs one (the exact
# candidate fallback here, the dense ablation assigners): 2**22 float32 values = 16 MiB,
# independent of the number of GTs.
CHUNK_ELEMENTS = 1 << 22
# A centre must be inside its GT by more than this margin on all four sides (authors' rule, used
# by all their assigners: ATSS, IoU, SSC and TOPK).
CENTER_MARGIN = 0.01


class ATSSCandidates(NamedTuple):
    """
    What ATSS decides on, per GT: the candidates, their IoUs and the adaptive threshold.
    G = number of GTs, K = sum_l min(k·#A, A_l) candidates per GT, level by level.
    """

    indices: Tensor  # (G, K) int64 indices into torch.cat(anchors_per_level)
    ious: Tensor  # (G, K) float32 IoU of each candidate with its GT
    mean: Tensor  # (G,) mean of the candidate IoUs
    std: Tensor  # (G,) unbiased std of the candidate IoUs; 0 when K = 1
    threshold: Tensor  # (G,) mean + std: a candidate is positive at IoU >= threshold


def atss_match(
    anchors_per_level: Sequence[Tensor],
    gt_boxes: Tensor,
    topk: int = 9,
    anchors_per_location: int = 1,
    grid_sizes: Optional[Sequence[Tuple[int, int]]] = None,
) -> Tensor:
    """
    Assign anchors to ground-truth boxes with ATSS.

    Args:
        anchors_per_level: list of L tensors of shape (A_l, 4), XYXY, level order P3..P7; within a
            level in Detectron2's anchor order (row-major locations, ``anchors_per_location``
            consecutive anchors per location). Levels may be empty.
        gt_boxes: (G, 4) XYXY ground-truth boxes of one image. G may be 0.
        topk: k, candidates per level and per anchor shape.
        anchors_per_location: #A, anchors sharing one location (k·#A candidates per level).
        grid_sizes: optional list of (H_l, W_l): the feature-map size of each level, when the
            anchors come from a grid anchor generator. Enables the windowed fast search
            (verified against the anchors, with one host sync; on mismatch the exact fallback
            runs). When omitted, the grid is inferred from the anchors.

    Returns:
        int64 tensor of shape (sum_l A_l,): index of the matched GT, or -1 (``BACKGROUND``).
    """
    device = gt_boxes.device
    # fp32 always: squared centre distances and areas overflow fp16 (300**2 > 65504).
    anchors_per_level = [a.reshape(-1, 4).float() for a in anchors_per_level]
    gt_boxes = gt_boxes.reshape(-1, 4).float()
    num_anchors = sum(len(a) for a in anchors_per_level)
    matched = torch.full((num_anchors,), BACKGROUND, dtype=torch.int64, device=device)
    if len(gt_boxes) == 0 or num_anchors == 0:
        return matched

    cand = atss_candidates(anchors_per_level, gt_boxes, topk, anchors_per_location, grid_sizes)
    is_pos = cand.ious >= cand.threshold[:, None]  # step 3: the adaptive IoU threshold ...
    anchors = torch.cat(anchors_per_level)
    cand_centers = Boxes(anchors[cand.indices.flatten()]).get_centers()
    is_pos &= centers_inside(  # ... and the centre inside the GT
        cand_centers.view(*cand.indices.shape, 2), gt_boxes[:, None, :]
    )
    # A GT with a NaN/inf coordinate has meaningless IoUs (e.g. all 0, passing a 0 threshold).
    is_pos &= torch.isfinite(gt_boxes).all(dim=1, keepdim=True)

    gt_idx = torch.arange(len(gt_boxes), device=device)[:, None].expand_as(cand.indices)
    return resolve_conflicts(
        cand.indices[is_pos], gt_idx[is_pos], cand.ious[is_pos], num_anchors, out=matched
    )


def atss_candidates(
    anchors_per_level: Sequence[Tensor],
    gt_boxes: Tensor,
    topk: int = 9,
    anchors_per_location: int = 1,
    grid_sizes: Optional[Sequence[Tuple[int, int]]] = None,
) -> ATSSCandidates:
    """
    Steps 1-2 of ATSS for every GT: the candidates (on each level the k·#A anchors nearest to
    the GT centre), their IoUs with the GT and the adaptive threshold t_g = mean + unbiased std
    (std 0 when there is a single candidate). :func:`atss_match` keeps the candidates with
    IoU >= t_g whose centre is inside the GT; tools that explain an assignment (the positives
    visualiser) read the same numbers here instead of re-deriving them.

    Args:
        anchors_per_level, gt_boxes, topk, anchors_per_location, grid_sizes: as
            :func:`atss_match`; G >= 1 and at least one anchor.

    Returns:
        :class:`ATSSCandidates` in float32, on the device of ``gt_boxes``.
    """
    anchors_per_level = [a.reshape(-1, 4).float() for a in anchors_per_level]  # no-op if done
    gt_boxes = gt_boxes.reshape(-1, 4).float()
    indices = candidate_anchors(
        anchors_per_level, gt_boxes, topk * anchors_per_location, anchors_per_location, grid_sizes
    )  # (G, K)
    num_gt, num_cand = indices.shape
    cand_boxes = torch.cat(anchors_per_level)[indices.flatten()]  # (G*K, 4)
    own_gt = gt_boxes[:, None, :].expand(num_gt, num_cand, 4).reshape(-1, 4)
    # matched_pairwise_iou divides by the union unguarded: 0/0 only for two empty boxes, which
    # overlap nowhere, so their IoU is 0.
    ious = torch.nan_to_num(matched_pairwise_iou(Boxes(cand_boxes), Boxes(own_gt)), nan=0.0)
    ious = ious.view(num_gt, num_cand)
    mean = ious.mean(dim=1)
    std = ious.std(dim=1) if num_cand > 1 else torch.zeros_like(mean)
    return ATSSCandidates(indices, ious, mean, std, mean + std)


def resolve_conflicts(
    anchor_idx: Tensor, gt_idx: Tensor, ious: Tensor, num_anchors: int, out: Optional[Tensor] = None
) -> Tensor:
    """
    Give each anchor to the GT with the highest IoU among its positive pairs; on equal IoU the
    lower GT index wins.

    Args:
        anchor_idx, gt_idx, ious: (P,) the positive (anchor, GT, IoU) pairs; (anchor, GT) unique.
        num_anchors: total number of anchors A.
        out: optional (A,) int64 tensor filled with ``BACKGROUND`` to write into.

    Returns:
        (A,) int64: matched GT index per anchor, ``out``'s value (default ``BACKGROUND``) where
        the anchor has no positive pair.
    """
    if out is None:
        out = torch.full((num_anchors,), BACKGROUND, dtype=torch.int64, device=ious.device)
    best_iou = ious.new_full((num_anchors,), -1.0)
    best_iou.scatter_reduce_(0, anchor_idx, ious, reduce="amax")
    is_best = ious == best_iou[anchor_idx]
    # Among the pairs at the best IoU take the lowest GT index (sentinel: no pair).
    sentinel = torch.iinfo(torch.int64).max
    winner = torch.full_like(out, sentinel)
    winner.scatter_reduce_(0, anchor_idx[is_best], gt_idx[is_best], reduce="amin")
    return torch.where(winner == sentinel, out, winner)


def candidate_anchors(
    anchors_per_level: Sequence[Tensor],
    gt_boxes: Tensor,
    k: int,
    anchors_per_location: int = 1,
    grid_sizes: Optional[Sequence[Tuple[int, int]]] = None,
) -> Tensor:
    """
    The ATSS candidates: on every level the min(k, A_l) anchors nearest (L2 between centres) to
    each GT centre, ties broken by the lower anchor index.

    Args:
        anchors_per_level: list of (A_l, 4) float XYXY tensors.
        gt_boxes: (G, 4) float XYXY.
        k: candidates per level (k·#A in ATSS terms).
        anchors_per_location, grid_sizes: see :func:`atss_match`.

    Returns:
        (G, K) int64 indices into ``torch.cat(anchors_per_level)``, K = sum_l min(k, A_l),
        level by level.
    """
    gt_centers = Boxes(gt_boxes).get_centers()
    if grid_sizes is None:
        grid_sizes = [infer_grid_size(a, anchors_per_location) for a in anchors_per_level]
    grids = _grid_params(anchors_per_level, grid_sizes, anchors_per_location)

    out, start = [], 0
    for anchors, grid in zip(anchors_per_level, grids):
        num = len(anchors)
        k_l = min(k, num)
        if k_l > 0:
            centers = Boxes(anchors).get_centers()
            if grid is not None:
                idx = _grid_window_candidates(centers, gt_centers, k_l, anchors_per_location, grid)
            else:
                idx = _chunked_nearest(centers, gt_centers, k_l)
            out.append(idx + start)
        start += num
    if not out:
        return torch.zeros((len(gt_boxes), 0), dtype=torch.int64, device=gt_boxes.device)
    return torch.cat(out, dim=1)


def infer_grid_size(anchors: Tensor, anchors_per_location: int = 1) -> Optional[Tuple[int, int]]:
    """
    Guess (H, W) of a level whose anchors are in Detectron2's grid order: W is the number of
    leading locations sharing the first location's y. Returns None when that does not divide
    the level. The guess is verified later, so a wrong guess only costs the fast path.
    """
    num_loc, rem = divmod(len(anchors), anchors_per_location)
    if rem or num_loc == 0:
        return None
    cy = (anchors[::anchors_per_location, 1] + anchors[::anchors_per_location, 3]) * 0.5
    differs = (cy != cy[0]).nonzero()
    width = int(differs[0, 0]) if len(differs) else num_loc
    if num_loc % width:
        return None
    return num_loc // width, width


def _grid_params(anchors_per_level, grid_sizes, anchors_per_location):
    """
    For each level return (H, W, x0, y0, sx, sy) if its anchors form the claimed grid (first
    location centre (x0, y0), spacing (sx, sy) > 0, #A anchors per location sharing a centre),
    else None. All levels are verified together with a single host sync.
    """
    n_a = anchors_per_location
    claims, errors = [], []
    for anchors, size in zip(anchors_per_level, grid_sizes):
        if size is None or len(anchors) == 0 or len(anchors) != size[0] * size[1] * n_a:
            claims.append(None)
            continue
        h, w = int(size[0]), int(size[1])
        c = Boxes(anchors).get_centers().view(h, w, n_a, 2)
        x0, y0 = c[0, 0, 0, 0], c[0, 0, 0, 1]
        sx = c[0, 1, 0, 0] - x0 if w > 1 else x0.new_tensor(1.0)
        sy = c[1, 0, 0, 1] - y0 if h > 1 else y0.new_tensor(1.0)
        expect_x = x0 + sx * torch.arange(w, device=c.device, dtype=c.dtype)
        expect_y = y0 + sy * torch.arange(h, device=c.device, dtype=c.dtype)
        err = torch.maximum(
            (c[..., 0] - expect_x[None, :, None]).abs().amax(),
            (c[..., 1] - expect_y[:, None, None]).abs().amax(),
        )
        # Relative tolerance: the grid arithmetic must reproduce the centres to ~1e-4 of a cell.
        tol = 1e-4 * torch.minimum(sx, sy).clamp(min=1e-6) + 1e-6 * (x0.abs() + y0.abs())
        errors.append((err <= tol) & (sx > 0) & (sy > 0))
        claims.append((h, w, x0, y0, sx, sy))
    if errors:
        ok = torch.stack(errors).tolist()  # the one host sync
        it = iter(ok)
        claims = [c if c is None else (c if next(it) else None) for c in claims]
    return claims


def _grid_window_candidates(centers, gt_centers, k, n_a, grid):
    """
    Nearest-k search on a regular grid, exact including ties.

    Why the window is exact: along x, the n = min(k'+1, W) columns nearest to the GT centre
    (k' = ceil(k / #A) locations are needed) form a contiguous run. For a column outside the run
    at |dx| = D, at least n-1 = k' columns of the run lie at |dx| <= D - 1 (they are the
    columns between it and the GT centre, one cell apart). So every anchor outside the run has,
    in its own row, k' locations (k anchors) closer to the GT centre by a clear margin, and
    cannot be among the k nearest whatever the tie-breaking or rounding of the centres. The
    same holds for rows: the k nearest anchors lie in the n x n' window. Inside the window the
    anchors are ranked by (distance, anchor index).

    Args:
        centers: (A_l, 2) anchor centres of the level; gt_centers: (G, 2).
        grid: (H, W, x0, y0, sx, sy) from :func:`_grid_params`.

    Returns:
        (G, k) int64 level-local anchor indices.
    """
    h, w, x0, y0, sx, sy = grid
    locs = -(-k // n_a)  # locations needed
    win_w, win_h = min(locs + 1, w), min(locs + 1, h)
    # Start of the run of nearest columns / rows, clamped so the window stays on the grid.
    # nan_to_num: a non-finite GT still gets a (useless) window instead of an invalid index.
    u = torch.nan_to_num((gt_centers[:, 0] - x0) / sx)
    v = torch.nan_to_num((gt_centers[:, 1] - y0) / sy)
    col0 = torch.floor(u - (win_w - 1) / 2 + 0.5).clamp_(0, w - win_w).long()
    row0 = torch.floor(v - (win_h - 1) / 2 + 0.5).clamp_(0, h - win_h).long()
    dev = centers.device
    cols = col0[:, None] + torch.arange(win_w, device=dev)  # (G, win_w)
    rows = row0[:, None] + torch.arange(win_h, device=dev)  # (G, win_h)
    loc = rows[:, :, None] * w + cols[:, None, :]  # (G, win_h, win_w), row-major = index order
    idx = (loc.reshape(len(gt_centers), -1, 1) * n_a + torch.arange(n_a, device=dev)).flatten(1)
    # idx is increasing along dim 1, so a stable sort on distance breaks ties by lower index.
    dist = squared_distance(centers[idx], gt_centers[:, None, :])
    order = torch.sort(dist, dim=1, stable=True).indices[:, :k]
    return idx.gather(1, order)


def _chunked_nearest(centers, gt_centers, k):
    """
    Exact nearest-k for arbitrary anchors, in GT chunks whose (chunk x A_l) distance block stays
    within :data:`CHUNK_ELEMENTS`. A stable sort orders ties by anchor index (``topk``'s tie
    order is unspecified). Returns (G, k) level-local indices.
    """
    out = []
    for lo, hi in gt_chunks(len(gt_centers), len(centers)):
        dist = squared_distance(centers[None, :, :], gt_centers[lo:hi, None, :])  # (C, A_l)
        out.append(torch.sort(dist, dim=1, stable=True).indices[:, :k])
    return torch.cat(out, dim=0)


def gt_chunks(num_gt: int, row_elements: int) -> Iterator[Tuple[int, int]]:
    """
    (start, end) ranges over ``num_gt`` GTs such that a dense (end - start, row_elements) block
    stays within :data:`CHUNK_ELEMENTS` (at least one GT per chunk). Rules that need a dense
    GT x anchors comparison walk these chunks instead of building the whole matrix.
    """
    step = max(1, CHUNK_ELEMENTS // max(row_elements, 1))
    for lo in range(0, num_gt, step):
        yield lo, min(lo + step, num_gt)


def squared_distance(a: Tensor, b: Tensor) -> Tensor:
    """
    Squared L2 distance between broadcastable (..., 2) points (same ranking as L2, no sqrt).
    Written the same way everywhere so that equal distances compare equal in every rule.
    """
    d = a - b
    return d[..., 0] * d[..., 0] + d[..., 1] * d[..., 1]


def centers_inside(points: Tensor, boxes: Tensor, margin: float = CENTER_MARGIN) -> Tensor:
    """
    Whether each point lies inside its box by more than ``margin`` on all four sides (the
    authors' centre test, strict: a point on an edge is outside).

    Args:
        points: (..., 2) x, y; boxes: (..., 4) XYXY, broadcastable with ``points``.

    Returns:
        (...) bool.
    """
    ltrb = torch.cat([points - boxes[..., :2], boxes[..., 2:] - points], dim=-1)
    return ltrb.amin(dim=-1) > margin
