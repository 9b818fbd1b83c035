"""
Draw which anchors ATSS selects as positives for each ground-truth box, beside the IoU assigner
(RetinaNet's 0.5 / 0.4 rule), and print the per-GT statistics (candidate IoU mean, std, the
threshold mean + std, positives per level).

    # boxes on the command line (XYXY pixels, ';' between boxes)
    python tools/visualize_positives.py --image street.jpg --boxes "10,20,200,300; 50,60,90,80"
    # boxes from a JSON file: [[x1, y1, x2, y2], ...] or {"boxes": [...]}
    python tools/visualize_positives.py --image street.jpg --boxes-json boxes.json
    # an image of a registered dataset (treecrowns_*, shapes_* are registered on demand)
    python tools/visualize_positives.py --dataset treecrowns_val --index 0 --max-gts 5

Anchors are those of the ATSS config (one 8·stride square per location on P3-P7, centres at
(i + 0.5)·stride) on the image padded to a multiple of 32, or those of ``--config-file``'s
``model.anchor_generator``. ``--short-edge`` resizes image and boxes first, as a test loader
would. The picture goes to ``--output`` (PNG).

The assignments come from the matchers (:func:`atss.modeling.matcher.atss_match`,
:func:`atss.modeling.assigners.iou_match`); the per-GT statistics (candidates, their IoUs, the
threshold mean + std) from :func:`atss.modeling.matcher.atss_candidates`, the function
``atss_match`` itself uses. Nothing here decides an assignment or recomputes a piece of the rule.
"""

import argparse
import json
import os
import sys
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
import torch
from detectron2.structures import Boxes, pairwise_iou
from torch import Tensor

from atss.modeling import atss_anchor_generator
from atss.modeling.assigners import IGNORE, iou_match
from atss.modeling.matcher import atss_candidates, atss_match

# One colour per pyramid level, P3..P7 (matplotlib's tab10 blue, green, orange, red, purple).
LEVEL_COLORS = ["#1f77b4", "#2ca02c", "#ff7f0e", "#d62728", "#9467bd"]


@dataclass
class GTSelection:
    """ATSS's view of one ground-truth box. Anchor indices refer to the concatenated levels."""

    gt_index: int
    box: Tensor  # (4,) XYXY
    candidates: Tensor  # (K,) the k·#A nearest anchors of every level, level by level
    candidate_levels: Tensor  # (K,) level of each candidate (0 = first level)
    candidate_ious: Tensor  # (K,) IoU of each candidate with the GT
    iou_mean: float
    iou_std: float  # unbiased; 0 with a single candidate
    threshold: float  # iou_mean + iou_std
    positives: Tensor  # (P,) anchors atss_match gives to this GT (after conflicts)

    @property
    def num_positives(self) -> int:
        return int(self.positives.numel())


@dataclass
class Explanation:
    """Both assignments of one image, with the per-GT ATSS statistics."""

    anchors: Tensor  # (A, 4) all levels concatenated
    levels: Tensor  # (A,) level of each anchor
    gt_boxes: Tensor  # (G, 4)
    matched_atss: Tensor  # (A,) GT index or -1 (atss_match)
    matched_iou: Tensor  # (A,) GT index, -1 background or -2 ignored (iou_match)
    per_gt: List[GTSelection]

    def positives_per_level(self, which: str = "atss") -> np.ndarray:
        """(G, L) number of positives of each GT on each level, for ``"atss"`` or ``"iou"``."""
        matched = self.matched_atss if which == "atss" else self.matched_iou
        num_levels = int(self.levels.max()) + 1 if len(self.levels) else 0
        counts = np.zeros((len(self.gt_boxes), num_levels), dtype=np.int64)
        pos = matched >= 0
        np.add.at(counts, (matched[pos].numpy(), self.levels[pos].numpy()), 1)
        return counts


def explain_assignment(
    anchors_per_level: Sequence[Tensor],
    gt_boxes: Tensor,
    topk: int = 9,
    anchors_per_location: int = 1,
    iou_thresholds=(0.4, 0.5),
) -> Explanation:
    """
    Run ATSS and the IoU assigner on one image and collect, for every GT, the ATSS candidates,
    their IoUs and the adaptive threshold.

    Args:
        anchors_per_level: L tensors (A_l, 4) XYXY, in Detectron2's order.
        gt_boxes: (G, 4) XYXY.
        topk: k of ATSS (k·#A candidates per level).
        anchors_per_location: #A.
        iou_thresholds: (negative below, positive from) of the IoU assigner.

    Returns:
        :class:`Explanation` (CPU tensors).
    """
    anchors_per_level = [a.reshape(-1, 4).float().cpu() for a in anchors_per_level]
    gt_boxes = gt_boxes.reshape(-1, 4).float().cpu()
    anchors = torch.cat(anchors_per_level)
    sizes = torch.tensor([len(a) for a in anchors_per_level])
    levels = torch.repeat_interleave(torch.arange(len(sizes)), sizes)

    matched_atss = atss_match(anchors_per_level, gt_boxes, topk, anchors_per_location)
    matched_iou = iou_match(anchors_per_level, gt_boxes, tuple(iou_thresholds))

    per_gt = []
    if len(gt_boxes) and len(anchors):
        stats = atss_candidates(anchors_per_level, gt_boxes, topk, anchors_per_location)
        for g in range(len(gt_boxes)):
            per_gt.append(
                GTSelection(
                    gt_index=g,
                    box=gt_boxes[g],
                    candidates=stats.indices[g],
                    candidate_levels=levels[stats.indices[g]],
                    candidate_ious=stats.ious[g],
                    iou_mean=float(stats.mean[g]),
                    iou_std=float(stats.std[g]),
                    threshold=float(stats.threshold[g]),
                    positives=torch.nonzero(matched_atss == g).flatten(),
                )
            )
    return Explanation(anchors, levels, gt_boxes, matched_atss, matched_iou, per_gt)


def pick_gts(gt_boxes: Tensor, num: int) -> List[int]:
    """Up to ``num`` GT indices spread over the range of box sizes (smallest to largest)."""
    if len(gt_boxes) <= num:
        return list(range(len(gt_boxes)))
    areas = (gt_boxes[:, 2:] - gt_boxes[:, :2]).clamp(min=0).prod(dim=1)
    order = torch.argsort(areas, stable=True)
    picks = np.linspace(0, len(order) - 1, num).round().astype(int)
    return [int(order[i]) for i in picks]


def _crop_window(box, image_shape, margin: float = 1.0, min_half: float = 24.0):
    """A square window around ``box``: the box fills the middle of it."""
    cx, cy = float(box[0] + box[2]) / 2, float(box[1] + box[3]) / 2
    half = max(float(box[2] - box[0]), float(box[3] - box[1])) * (0.5 + margin) + 8
    half = max(half, min_half)
    return cx - half, cx + half, cy - half, cy + half


def _show_crop(ax, image, window):
    x0, x1, y0, y1 = window
    # Only the pixels in view, placed at their image coordinates (pixel i covers [i-0.5, i+0.5]).
    c0, r0 = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
    c1 = min(int(np.ceil(x1)) + 1, image.shape[1])
    r1 = min(int(np.ceil(y1)) + 1, image.shape[0])
    if c1 > c0 and r1 > r0:
        ax.imshow(image[r0:r1, c0:c1], extent=(c0 - 0.5, c1 - 0.5, r1 - 0.5, r0 - 0.5))
    ax.set_xlim(x0, x1)
    ax.set_ylim(y1, y0)
    ax.set_xticks([])
    ax.set_yticks([])


def _inside(points, window):
    x0, x1, y0, y1 = window
    return (points[:, 0] >= x0) & (points[:, 0] <= x1) & (points[:, 1] >= y0) & (points[:, 1] <= y1)


def _draw_box(ax, box, **kwargs):
    import matplotlib.patches as patches

    x1, y1, x2, y2 = [float(v) for v in box]
    ax.add_patch(patches.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, **kwargs))


def _level_names(num_levels, first_level):
    return [f"P{first_level + i}" for i in range(num_levels)]


def _show_gt(ax_img, image, ex: Explanation, sel: GTSelection):
    """Show the crop around one GT with its box; the anchor centres and the crop window."""
    centers = Boxes(ex.anchors).get_centers()
    window = _crop_window(sel.box, image.shape)
    _show_crop(ax_img, image, window)
    _draw_box(ax_img, sel.box, edgecolor="white", linewidth=2.0)
    _draw_box(ax_img, sel.box, edgecolor="black", linewidth=0.8, linestyle="--")
    return centers, window


def _plot_atss_gt(ax_img, ax_bar, image, ex: Explanation, sel: GTSelection, names, label):
    centers, window = _show_gt(ax_img, image, ex, sel)
    is_pos = torch.isin(sel.candidates, sel.positives)
    cand_centers = centers[sel.candidates]
    shown = _inside(cand_centers, window)
    for k in range(len(sel.candidates)):
        if not shown[k]:
            continue
        color = LEVEL_COLORS[int(sel.candidate_levels[k]) % len(LEVEL_COLORS)]
        x, y = float(cand_centers[k, 0]), float(cand_centers[k, 1])
        if is_pos[k]:
            ax_img.plot(x, y, "o", ms=7, mfc=color, mec="white", mew=1.2)
        else:
            ax_img.plot(x, y, "o", ms=6, mfc="none", mec=color, mew=1.5)
    for a in sel.positives:  # the positive anchors themselves, thin, in their level's colour
        color = LEVEL_COLORS[int(ex.levels[a]) % len(LEVEL_COLORS)]
        _draw_box(ax_img, ex.anchors[a], edgecolor=color, linewidth=0.8, alpha=0.8)
    hidden = int((~shown).sum())
    note = f", {hidden} outside view" if hidden else ""
    ax_img.set_title(
        f"{label} ATSS: {sel.num_positives} positives{note}\n"
        f"{len(sel.candidates)} candidates (o), positives filled",
        fontsize=8,
    )

    # Bars: candidate IoUs level by level, nearest first within a level.
    ious = sel.candidate_ious.numpy()
    colors = [LEVEL_COLORS[int(lv) % len(LEVEL_COLORS)] for lv in sel.candidate_levels]
    above = ious >= sel.threshold
    x = np.arange(len(ious))
    for k in range(len(ious)):
        ax_bar.bar(
            x[k],
            ious[k],
            color=colors[k],
            alpha=1.0 if is_pos[k] else (0.6 if above[k] else 0.3),
            edgecolor="black" if is_pos[k] else "none",
            hatch="//" if above[k] and not is_pos[k] else None,
            width=0.85,
        )
    ax_bar.axhline(sel.threshold, color="crimson", lw=1.5, label=f"mean+std {sel.threshold:.2f}")
    ax_bar.axhline(sel.iou_mean, color="gray", lw=1.0, ls="--", label=f"mean {sel.iou_mean:.2f}")
    levels = sel.candidate_levels.numpy()
    starts = [int(np.argmax(levels == lv)) for lv in np.unique(levels)]
    ax_bar.set_xticks([s + (np.sum(levels == levels[s]) - 1) / 2 for s in starts])
    ax_bar.set_xticklabels([names[levels[s]] for s in starts], fontsize=7)
    ax_bar.set_ylim(0, 1)
    ax_bar.tick_params(axis="y", labelsize=7)
    ax_bar.set_ylabel("IoU", fontsize=7)
    ax_bar.legend(fontsize=6, loc="upper right")
    ax_bar.set_title("candidate IoUs (hatched: >= thr, lost)", fontsize=8)


def _plot_iou_gt(ax_img, ax_bar, image, ex: Explanation, sel: GTSelection, names, thresholds):
    centers, window = _show_gt(ax_img, image, ex, sel)
    ious = pairwise_iou(Boxes(ex.anchors), Boxes(sel.box[None]))[:, 0]  # (A,), one GT: O(A)
    mine = torch.nonzero(ex.matched_iou == sel.gt_index).flatten()
    # Ignored anchors that overlap this GT (the IoU assigner does not say for which GT).
    ignored = torch.nonzero((ex.matched_iou == IGNORE) & (ious >= thresholds[0] * 0.5)).flatten()
    for a in ignored:
        if _inside(centers[a][None], window)[0]:
            ax_img.plot(float(centers[a, 0]), float(centers[a, 1]), "x", ms=5, color="0.6")
    for a in mine:
        color = LEVEL_COLORS[int(ex.levels[a]) % len(LEVEL_COLORS)]
        ax_img.plot(float(centers[a, 0]), float(centers[a, 1]), "o", ms=7, mfc=color, mec="white")
        _draw_box(ax_img, ex.anchors[a], edgecolor=color, linewidth=0.8, alpha=0.8)
    low_quality = int((ious[mine] < thresholds[1]).sum())
    lq = f"\n{low_quality} of them best-IoU matches < {thresholds[1]:g}" if low_quality else ""
    ax_img.set_title(f"IoU assigner: {len(mine)} positives, x = ignored{lq}", fontsize=8)

    # Bars: the anchors that overlap this GT most, whatever their fate.
    order = torch.argsort(ious, descending=True, stable=True)
    top = order[: max(20, len(mine))]
    top = top[(ious[top] > 0) | torch.isin(top, mine)]
    for k, a in enumerate(top):
        status = int(ex.matched_iou[a])
        color = LEVEL_COLORS[int(ex.levels[a]) % len(LEVEL_COLORS)]
        ax_bar.bar(
            k,
            float(ious[a]),
            color=color,
            alpha=1.0 if status == sel.gt_index else (0.6 if status == IGNORE else 0.3),
            edgecolor="black" if status == sel.gt_index else "none",
            hatch="xx" if status == IGNORE else None,
            width=0.85,
        )
    ax_bar.axhline(thresholds[1], color="crimson", lw=1.5, label=f"positive >= {thresholds[1]:g}")
    ax_bar.axhline(
        thresholds[0], color="gray", lw=1.0, ls="--", label=f"negative < {thresholds[0]:g}"
    )
    ax_bar.set_xticks([])
    ax_bar.set_ylim(0, 1)
    ax_bar.tick_params(axis="y", labelsize=7)
    ax_bar.legend(fontsize=6, loc="upper right")
    ax_bar.set_title(f"{len(top)} highest-IoU anchors (colour = level)", fontsize=8)


def _plot_overview(ax_img, ax_lv, image, ex: Explanation, shown: List[int], names):
    ax_img.imshow(image)
    ax_img.set_xticks([])
    ax_img.set_yticks([])
    for g, box in enumerate(ex.gt_boxes):
        _draw_box(ax_img, box, edgecolor="yellow", linewidth=0.6, alpha=0.8)
    for row, g in enumerate(shown):
        box = ex.gt_boxes[g]
        _draw_box(ax_img, box, edgecolor="white", linewidth=1.6)
        ax_img.text(
            float(box[0]),
            float(box[1]) - 2,
            f"#{row + 1}",
            color="white",
            fontsize=8,
            fontweight="bold",
            va="bottom",
            bbox=dict(facecolor="black", alpha=0.6, pad=1, lw=0),
        )
    ax_img.set_title(f"{len(ex.gt_boxes)} ground-truth boxes; numbered rows below", fontsize=9)

    atss = ex.positives_per_level("atss").sum(axis=0)
    iou = ex.positives_per_level("iou").sum(axis=0)
    x = np.arange(len(names))
    ax_lv.bar(
        x - 0.2, atss, width=0.4, color=LEVEL_COLORS[: len(names)], edgecolor="black", label="ATSS"
    )
    ax_lv.bar(
        x + 0.2,
        iou,
        width=0.4,
        color=LEVEL_COLORS[: len(names)],
        alpha=0.4,
        hatch="..",
        label="IoU",
    )
    ax_lv.set_xticks(x)
    ax_lv.set_xticklabels(names, fontsize=8)
    ax_lv.tick_params(axis="y", labelsize=7)
    ax_lv.legend(fontsize=7)
    no_pos = sum(1 for s in ex.per_gt if s.num_positives == 0)
    ax_lv.set_title(
        f"positives per level, all GTs: ATSS {int(atss.sum())} (solid), IoU {int(iou.sum())} "
        f"(dotted)\nGTs without an ATSS positive: {no_pos}",
        fontsize=9,
    )


def draw_positives(
    image: np.ndarray,
    explanation: Explanation,
    gt_indices: Sequence[int],
    output_path: str,
    first_level: int = 3,
    iou_thresholds=(0.4, 0.5),
    title: Optional[str] = None,
) -> str:
    """
    Draw, for each GT in ``gt_indices``, a row with: the ATSS candidates and positives on an
    image crop, the candidate IoUs as bars with the threshold mean + std, then the same crop and
    bars for the IoU assigner. A first row shows the whole image and the positives per level.

    Args:
        image: (H, W, 3) uint8 RGB, in the coordinates of the anchors and boxes.
        explanation: from :func:`explain_assignment`.
        gt_indices: GTs to draw, one row each.
        output_path: PNG to write.
        first_level: pyramid level of the first anchor level (3 for P3).
        iou_thresholds: those given to :func:`explain_assignment`, for the lines.

    Returns:
        ``output_path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    num_levels = int(explanation.levels.max()) + 1 if len(explanation.levels) else 0
    names = _level_names(num_levels, first_level)
    rows = 1 + len(gt_indices)
    height = 3.1 * rows + 0.6
    fig = plt.figure(figsize=(15, height))
    grid = fig.add_gridspec(
        rows,
        4,
        width_ratios=[1, 1.6, 1, 1.6],
        hspace=0.5,
        wspace=0.25,
        top=1 - 0.7 / height,
        bottom=0.2 / height,
    )
    _plot_overview(
        fig.add_subplot(grid[0, :2]),
        fig.add_subplot(grid[0, 2:]),
        image,
        explanation,
        list(gt_indices),
        names,
    )
    for row, g in enumerate(gt_indices, start=1):
        sel = explanation.per_gt[g]
        axes = [fig.add_subplot(grid[row, column]) for column in range(4)]
        _plot_atss_gt(*axes[:2], image, explanation, sel, names, f"#{row}")
        _plot_iou_gt(*axes[2:], image, explanation, sel, names, iou_thresholds)
    fig.suptitle(
        title or "ATSS (left) vs IoU assigner (right): which anchors become positives",
        fontsize=12,
        y=1 - 0.15 / height,
    )
    fig.savefig(output_path, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return output_path


def format_table(
    explanation: Explanation, gt_indices: Optional[Sequence[int]] = None, first_level: int = 3
) -> str:
    """
    One line per GT (all, or ``gt_indices``): box, ATSS candidate IoU mean / std / threshold,
    number of positives of ATSS and of the IoU assigner, ATSS positives per level; then totals.
    """
    atss = explanation.positives_per_level("atss")
    iou = explanation.positives_per_level("iou")
    names = _level_names(atss.shape[1], first_level)
    lines = [
        f"{'gt':>4} {'box (x1,y1,x2,y2)':>26} {'mean':>5} {'std':>5} {'thr':>5} "
        f"{'ATSS pos':>8} {'IoU pos':>7}  ATSS per level ({'/'.join(names)})"
    ]
    rows = range(len(explanation.per_gt)) if gt_indices is None else gt_indices
    for g in rows:
        sel = explanation.per_gt[g]
        box = ",".join(f"{float(v):.0f}" for v in sel.box)
        lines.append(
            f"{g:>4} {box:>26} {sel.iou_mean:5.2f} {sel.iou_std:5.2f} {sel.threshold:5.2f} "
            f"{sel.num_positives:>8} {int(iou[g].sum()):>7}  {'/'.join(map(str, atss[g]))}"
        )
    lines.append(
        f"all {len(atss)} GTs: ATSS {int(atss.sum())} positives "
        f"({'/'.join(map(str, atss.sum(axis=0)))} per level), "
        f"{int((atss.sum(axis=1) == 0).sum())} GTs without one; IoU assigner {int(iou.sum())} "
        f"({'/'.join(map(str, iou.sum(axis=0)))}), {int((iou.sum(axis=1) == 0).sum())} without"
    )
    return "\n".join(lines)


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = parser.add_argument_group("input (an image with --boxes/--boxes-json, or --dataset)")
    src.add_argument("--image", help="image file")
    src.add_argument("--boxes", help="'x1,y1,x2,y2; x1,y1,x2,y2; ...' in pixels")
    src.add_argument("--boxes-json", help="JSON: [[x1,y1,x2,y2], ...] or {'boxes': [...]}")
    src.add_argument("--dataset", help="registered dataset name, e.g. treecrowns_val")
    src.add_argument("--index", type=int, default=0, help="image index in --dataset")
    parser.add_argument("--output", default="output/positives.png", help="PNG to write")
    parser.add_argument("--topk", type=int, default=9, help="ATSS k (candidates per level)")
    parser.add_argument("--max-gts", type=int, default=4, help="GT rows drawn (spread by size)")
    parser.add_argument("--gts", help="comma-separated GT indices to draw instead")
    parser.add_argument("--short-edge", type=int, help="resize so the shorter side is this")
    parser.add_argument("--config-file", help="take model.anchor_generator from this LazyConfig")
    return parser


def parse_boxes(text):
    """'x1,y1,x2,y2; ...' -> (G, 4) float tensor."""
    rows = [r for r in text.replace("\n", ";").split(";") if r.strip()]
    try:
        boxes = [[float(v) for v in r.split(",")] for r in rows]
    except ValueError as e:
        raise ValueError(f"--boxes: cannot parse {text!r} ({e})") from e
    if any(len(b) != 4 for b in boxes):
        raise ValueError(f"--boxes: every box needs 4 numbers x1,y1,x2,y2: {text!r}")
    return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)


def load_boxes_json(path):
    with open(path) as f:
        data = json.load(f)
    if isinstance(data, dict):
        data = data.get("boxes")
    try:
        boxes = torch.tensor(data, dtype=torch.float32).reshape(-1, 4)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{path}: expected [[x1, y1, x2, y2], ...] or {{'boxes': [...]}}") from e
    return boxes


def load_from_dataset(name, index):
    """(image path, (G, 4) XYXY boxes) of image ``index`` of a registered dataset."""
    from detectron2.data import DatasetCatalog
    from detectron2.structures import BoxMode

    if name not in DatasetCatalog.list():
        from atss.data.builtin import register_builtin_dataset

        register_builtin_dataset(name)  # the project's datasets: built on first read
    dicts = DatasetCatalog.get(name)
    if not 0 <= index < len(dicts):
        raise ValueError(f"--index {index}: dataset {name} has {len(dicts)} images")
    record = dicts[index]
    boxes = [
        BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
        for a in record.get("annotations", [])
    ]
    return record["file_name"], torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)


def make_anchors(height, width, config_file=None, size_divisibility=32):
    """Anchors per level for an input of (height, width), padded like the model pads it."""
    if config_file:
        from detectron2.config import instantiate

        from atss.engine.config import load_config

        generator = instantiate(load_config(config_file).model.anchor_generator)
    else:
        generator = atss_anchor_generator()
    pad_h = -(-height // size_divisibility) * size_divisibility
    pad_w = -(-width // size_divisibility) * size_divisibility
    # P3-P5 divide the padded size exactly; P6/P7 come from stride-2 convs (ceil).
    features = [torch.zeros(1, 1, -(-pad_h // s), -(-pad_w // s)) for s in generator.strides]
    return [b.tensor for b in generator(features)], int(generator.num_cell_anchors[0])


def visualize(
    image_path, boxes, output, topk=9, max_gts=4, gts=None, short_edge=None, config_file=None
):
    """
    Returns:
        (Explanation, drawn GT indices, table text); writes the PNG to ``output``.
    """
    from detectron2.data.detection_utils import read_image

    try:
        image = read_image(image_path, format="RGB")
    except Exception as e:
        raise ValueError(f"{image_path}: cannot read image ({type(e).__name__}: {e})") from e
    if short_edge:
        from detectron2.data import transforms as T

        h, w = image.shape[:2]
        scale = short_edge / min(h, w)
        new_h, new_w = round(h * scale), round(w * scale)
        image = T.ResizeTransform(h, w, new_h, new_w).apply_image(image)
        boxes = boxes * torch.tensor([new_w / w, new_h / h] * 2)
    anchors, per_location = make_anchors(image.shape[0], image.shape[1], config_file)
    explanation = explain_assignment(anchors, boxes, topk, per_location)
    if gts is None:
        gts = pick_gts(explanation.gt_boxes, max_gts)
    bad = [g for g in gts if not 0 <= g < len(boxes)]
    if bad:
        raise ValueError(f"--gts {bad}: the image has {len(boxes)} boxes")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    title = (
        f"{os.path.basename(image_path)} ({image.shape[1]}x{image.shape[0]}): ATSS k={topk} "
        f"(left) vs IoU assigner 0.5/0.4 (right)"
    )
    draw_positives(np.ascontiguousarray(image), explanation, gts, output, title=title)
    return explanation, gts, format_table(explanation, gts)


def main(argv=None):
    args = get_parser().parse_args(argv)
    try:
        if args.dataset:
            image_path, boxes = load_from_dataset(args.dataset, args.index)
        elif args.image and (args.boxes or args.boxes_json):
            image_path = args.image
            boxes = parse_boxes(args.boxes) if args.boxes else load_boxes_json(args.boxes_json)
        else:
            raise ValueError("give --image with --boxes or --boxes-json, or --dataset")
        if len(boxes) == 0:
            raise ValueError(f"{image_path}: no ground-truth box to explain")
        gts = [int(g) for g in args.gts.split(",")] if args.gts else None
        _, _, table = visualize(
            image_path,
            boxes,
            args.output,
            args.topk,
            args.max_gts,
            gts,
            args.short_edge,
            args.config_file,
        )
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
