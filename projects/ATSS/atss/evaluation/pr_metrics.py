"""Field metrics: precision, recall and F1 of detections at one IoU threshold, at the score
threshold that maximises F1 and at a fixed one, per class, over all classes and per image (what
ecology and remote-sensing users report); what they mean for a user: docs/large_images.md.

Matching (:func:`match_detections`) is COCO's ``evaluateImg`` at one IoU threshold (area "all",
no cap): per image and class, detections by decreasing score each take the unmatched GT of
highest IoU >= the threshold (ties: the later box); one that matches no regular box but covers
a crowd box by >= the threshold of its own area is ignored. Curves (:func:`pr_curve`) pool the
non-ignored detections in decreasing score order: precision TP / (TP + FP) (0 with no
detection), recall TP / #GT. :class:`FieldMetricsEvaluator` runs beside COCOEvaluator
(:func:`atss.evaluation.build_evaluator`; keys ``test.iou_threshold``, ``test.score_threshold``).
"""

import copy
import itertools
import json
import logging
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.structures import Boxes, BoxMode, pairwise_ioa, pairwise_iou
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from tabulate import tabulate

__all__ = [
    "TRUE_POSITIVE",
    "FALSE_POSITIVE",
    "IGNORED",
    "match_detections",
    "pr_curve",
    "operating_point",
    "best_f1_point",
    "field_metrics",
    "format_table",
    "plot_pr_curves",
    "FieldMetricsEvaluator",
]

logger = logging.getLogger(__name__)

TRUE_POSITIVE, FALSE_POSITIVE, IGNORED = 1, 0, -1


# ----------------------------------------------------------------------------- matching
def match_detections(
    det_boxes: np.ndarray,
    det_scores: np.ndarray,
    gt_boxes: np.ndarray,
    gt_crowd: np.ndarray,
    iou_threshold: float,
) -> np.ndarray:
    """
    COCO's greedy matching of one image's detections of one class (see the module docstring).

    Args:
        det_boxes: (D, 4) XYXY; det_scores: (D,).
        gt_boxes: (G, 4) XYXY; gt_crowd: (G,) bool, True for crowd boxes.
        iou_threshold: minimum IoU of a match (>=, as COCO, capped at 1 - 1e-10).

    Returns:
        (D,) int8 status of each detection, in the input order: TRUE_POSITIVE,
        FALSE_POSITIVE or IGNORED (matched to a crowd box only).
    """
    num_dets = len(det_boxes)
    status = np.full(num_dets, FALSE_POSITIVE, dtype=np.int8)
    if num_dets == 0 or len(gt_boxes) == 0:
        return status
    gt_crowd = np.asarray(gt_crowd, dtype=bool)
    dets, gts = _boxes_float64(det_boxes), _boxes_float64(gt_boxes)
    # COCO: IoU against regular boxes, intersection over the detection's area against crowds.
    overlap = np.where(
        gt_crowd[None, :], pairwise_ioa(gts, dets).T.numpy(), pairwise_iou(dets, gts).numpy()
    )
    threshold = min(float(iou_threshold), 1 - 1e-10)
    matched = np.zeros(len(gt_boxes), dtype=bool)
    for d in np.argsort(-np.asarray(det_scores), kind="mergesort"):
        regular = ~gt_crowd & ~matched & (overlap[d] >= threshold)
        crowd = gt_crowd & (overlap[d] >= threshold)
        for candidates, result in ((regular, TRUE_POSITIVE), (crowd, IGNORED)):
            if candidates.any():
                best = np.where(candidates, overlap[d], -1.0)
                g = np.flatnonzero(best == best.max())[-1]  # COCO keeps the later of ties
                status[d] = result
                matched[g] |= result == TRUE_POSITIVE
                break
    return status


def _boxes_float64(boxes) -> Boxes:
    """(N, 4) XYXY as Detectron2 ``Boxes`` holding float64: ``Boxes()`` casts to float32, whose
    IoUs (and a threshold compared with them) are rounded to ~1e-7, so decisions at the
    threshold would differ from COCO's double precision (and the 1 - 1e-10 cap would be 1)."""
    out = Boxes(torch.zeros(0, 4))
    out.tensor = torch.as_tensor(np.asarray(boxes, dtype=np.float64)).reshape(-1, 4)
    return out


# ----------------------------------------------------------------------------- curves
def pr_curve(scores: np.ndarray, status: np.ndarray, num_gt: int) -> Dict[str, np.ndarray]:
    """
    Precision / recall / F1 at every distinct score threshold.

    Args:
        scores: (D,) detection scores; status: (D,) from :func:`match_detections` (ignored
            detections are left out); num_gt: number of (non-crowd) ground-truth boxes.

    Returns:
        dict of (K,) arrays, K distinct scores in decreasing order: "threshold", "tp", "fp",
        "precision", "recall", "f1"; entry k counts the detections with score >= threshold[k].
    """
    scores, status = np.asarray(scores, dtype=np.float64), np.asarray(status)
    keep = status != IGNORED
    scores, status = scores[keep], status[keep]
    order = np.argsort(-scores, kind="mergesort")
    scores, status = scores[order], status[order]
    tp = np.cumsum(status == TRUE_POSITIVE)
    fp = np.cumsum(status == FALSE_POSITIVE)
    # The last detection of each run of equal scores: a threshold keeps all of them or none.
    last = np.flatnonzero(np.append(scores[1:] != scores[:-1], True)) if len(scores) else []
    tp, fp = tp[last].astype(np.int64), fp[last].astype(np.int64)
    precision, recall, f1 = _prf(tp, fp, num_gt)
    return {
        "threshold": scores[last],
        "tp": tp,
        "fp": fp,
        "precision": precision,
        "recall": recall,
        "f1": f1,
    }


def _prf(tp, fp, num_gt):
    tp, fp = np.asarray(tp, dtype=np.float64), np.asarray(fp, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = tp / num_gt if num_gt > 0 else np.zeros_like(tp)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return precision, recall, f1


def _point(curve, k: Optional[int], num_gt: int, threshold) -> Dict:
    """One operating point as plain numbers (k: index into the curve, None = nothing kept)."""
    tp = int(curve["tp"][k]) if k is not None else 0
    fp = int(curve["fp"][k]) if k is not None else 0
    p, r, f = (float(v[0]) for v in _prf([tp], [fp], num_gt))
    return {
        "score_threshold": None if threshold is None else float(threshold),
        "precision": p,
        "recall": r,
        "f1": f,
        "tp": tp,
        "fp": fp,
        "fn": int(num_gt - tp),
    }


def operating_point(curve: Dict[str, np.ndarray], num_gt: int, score_threshold: float) -> Dict:
    """P / R / F1 (and TP, FP, FN counts) keeping the detections with score >= threshold."""
    kept = np.flatnonzero(curve["threshold"] >= score_threshold)
    return _point(curve, int(kept[-1]) if len(kept) else None, num_gt, score_threshold)


def best_f1_point(curve: Dict[str, np.ndarray], num_gt: int) -> Dict:
    """The operating point of highest F1 (the highest such threshold on ties); with no
    detection at all: zeros and threshold None."""
    if len(curve["f1"]) == 0:
        return _point(curve, None, num_gt, None)
    k = int(np.argmax(curve["f1"]))
    return _point(curve, k, num_gt, curve["threshold"][k])


# ----------------------------------------------------------------------------- whole dataset
def field_metrics(
    predictions: Sequence[Dict],
    ground_truths: Dict[int, Dict],
    class_names: Sequence[str],
    iou_threshold: float = 0.5,
    score_threshold: Optional[float] = None,
) -> Dict:
    """
    Match and summarise a dataset.

    Args:
        predictions: one dict per image: "image_id", "boxes" (D, 4) XYXY, "scores" (D,),
            "classes" (D,) contiguous ids.
        ground_truths: image_id -> {"boxes" (G, 4) XYXY, "classes" (G,), "crowd" (G,) bool,
            "file_name"}. Only images with predictions are evaluated.
        class_names: names of the contiguous ids.
        iou_threshold, score_threshold: see the module docstring (score_threshold None: only
            the F1-best point).

    Returns:
        dict with "iou_threshold", "score_threshold", "num_images", "classes" (name -> summary),
        "overall" (all classes pooled) and "images" (list of per-image summaries); each summary
        has "num_gt", "num_dets", "best_f1" and, with a score threshold, "at_score_threshold"
        (points as :func:`operating_point`); "curves" holds the per-class and overall curves
        (numpy, for plotting; not written to JSON).
    """
    num_classes = len(class_names)
    per_class = [{"scores": [], "status": [], "num_gt": 0} for _ in range(num_classes)]
    per_image = []
    for pred in predictions:
        image_id = pred["image_id"]
        if image_id not in ground_truths:
            raise KeyError(f"field_metrics: image_id {image_id} has no ground truth")
        gt = ground_truths[image_id]
        scores = np.asarray(pred["scores"], dtype=np.float64)
        status = np.full(len(scores), FALSE_POSITIVE, dtype=np.int8)
        for c in range(num_classes):
            d = np.asarray(pred["classes"]) == c
            g = np.asarray(gt["classes"]) == c
            status[d] = match_detections(
                np.asarray(pred["boxes"])[d],
                scores[d],
                gt["boxes"][g],
                gt["crowd"][g],
                iou_threshold,
            )
            per_class[c]["scores"].append(scores[d])
            per_class[c]["status"].append(status[d])
            per_class[c]["num_gt"] += int((g & ~gt["crowd"]).sum())
        num_gt = int((~gt["crowd"]).sum())
        per_image.append(
            {"image_id": image_id, "file_name": gt.get("file_name", ""), "num_gt": num_gt}
        )
        per_image[-1]["_curve"] = pr_curve(scores, status, num_gt)

    def summary(curve, num_gt, num_dets):
        out = {"num_gt": num_gt, "num_dets": num_dets, "best_f1": best_f1_point(curve, num_gt)}
        if score_threshold is not None:
            out["at_score_threshold"] = operating_point(curve, num_gt, score_threshold)
        return out

    result = {
        "iou_threshold": float(iou_threshold),
        "score_threshold": None if score_threshold is None else float(score_threshold),
        "num_images": len(per_image),
        "classes": {},
        "curves": {},
    }
    all_scores, all_status, all_gt = [], [], 0
    for name, acc in zip(class_names, per_class):
        scores = np.concatenate(acc["scores"]) if acc["scores"] else np.zeros(0)
        status = np.concatenate(acc["status"]) if acc["status"] else np.zeros(0, np.int8)
        curve = pr_curve(scores, status, acc["num_gt"])
        result["classes"][name] = summary(curve, acc["num_gt"], int((status != IGNORED).sum()))
        result["curves"][name] = curve
        all_scores.append(scores)
        all_status.append(status)
        all_gt += acc["num_gt"]
    scores, status = np.concatenate(all_scores), np.concatenate(all_status)
    curve = pr_curve(scores, status, all_gt)
    result["overall"] = summary(curve, all_gt, int((status != IGNORED).sum()))
    result["curves"]["all"] = curve
    best = result["overall"]["best_f1"]["score_threshold"]
    for img in per_image:
        c = img.pop("_curve")
        img.update(summary(c, img["num_gt"], int(c["tp"][-1] + c["fp"][-1]) if len(c["tp"]) else 0))
        if best is not None:
            img["at_overall_best_f1_threshold"] = operating_point(c, img["num_gt"], best)
    result["images"] = per_image
    return result


def format_table(result: Dict) -> str:
    """The per-class and overall rows as a text table (fractions, 3 decimals)."""
    fixed = result["score_threshold"] is not None
    headers = ["class", "GT", "dets", "thr@bestF1", "P", "R", "F1"]
    if fixed:
        headers += [f"P@{result['score_threshold']:g}", "R", "F1"]

    def row(name, s):
        b = s["best_f1"]
        thr = "-" if b["score_threshold"] is None else f"{b['score_threshold']:.3f}"
        cells = [name, s["num_gt"], s["num_dets"], thr, b["precision"], b["recall"], b["f1"]]
        if fixed:
            a = s["at_score_threshold"]
            cells += [a["precision"], a["recall"], a["f1"]]
        return cells

    rows = [row(n, s) for n, s in result["classes"].items()]
    if len(rows) > 1 or not rows:
        rows.append(row("all", result["overall"]))
    title = f"Precision / recall / F1 at IoU {result['iou_threshold']:g}"
    return title + ":\n" + tabulate(rows, headers=headers, floatfmt=".3f", tablefmt="pipe")


def plot_pr_curves(result: Dict, path: str, title: str = "") -> None:
    """Write the precision-recall curves (per class, and all classes pooled when there are
    several) with the F1-best point of each marked, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = result["curves"]
    names = list(result["classes"])
    shown = names + (["all"] if len(names) > 1 else [])
    fig, ax = plt.subplots(figsize=(6, 5), dpi=100)
    for name in shown:
        c = curves[name]
        summ = result["overall"] if name == "all" else result["classes"][name]
        b = summ["best_f1"]
        style = dict(lw=2.5, color="k") if name == "all" else dict(lw=1)
        (line,) = ax.plot(c["recall"], c["precision"], label=f"{name} (F1 {b['f1']:.2f})", **style)
        if b["score_threshold"] is not None:
            ax.plot([b["recall"]], [b["precision"]], "o", color=line.get_color())
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title or f"Precision-recall at IoU {result['iou_threshold']:g} (o: best F1)")
    if len(shown) <= 12:
        ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with PathManager.open(path, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)


def _json_ready(result: Dict) -> Dict:
    out = {k: v for k, v in result.items() if k != "curves"}
    return copy.deepcopy(out)


# ----------------------------------------------------------------------------- evaluator
def ground_truth_from_dataset(dataset_dicts: Sequence[Dict]) -> Dict[int, Dict]:
    """image_id -> {"boxes" (G, 4) XYXY_ABS, "classes" (G,), "crowd" (G,), "file_name"} from
    Detectron2 dataset dicts (contiguous ``category_id``)."""
    out = {}
    for d in dataset_dicts:
        anns = d.get("annotations", [])
        boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns]
        out[d["image_id"]] = {
            "boxes": np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
            "classes": np.asarray([a["category_id"] for a in anns], dtype=np.int64),
            "crowd": np.asarray([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool),
            "file_name": os.path.basename(d.get("file_name", "")),
        }
    return out


class FieldMetricsEvaluator(DatasetEvaluator):
    """
    Precision / recall / F1 at ``iou_threshold`` (see the module docstring) for a registered
    dataset. ``evaluate`` prints the table, writes ``field_metrics.json`` and
    ``field_metrics_pr.png`` into ``output_dir`` (if given), and returns
    ``{"field_metrics": {"P", "R", "F1", "score_thr", ...}}`` (overall, fractions; per class as
    "F1-<name>"; with a score threshold also "P@thr", "R@thr", "F1@thr").
    """

    def __init__(
        self,
        dataset_name: str,
        iou_threshold: float = 0.5,
        score_threshold: Optional[float] = None,
        output_dir: Optional[str] = None,
        distributed: bool = True,
    ):
        if not 0.0 < float(iou_threshold) <= 1.0:
            raise ValueError(f"test.iou_threshold must be in (0, 1], got {iou_threshold}")
        self.dataset_name = dataset_name
        self.iou_threshold = float(iou_threshold)
        self.score_threshold = None if score_threshold is None else float(score_threshold)
        self.output_dir = output_dir
        self.distributed = distributed
        self._predictions: List[Dict] = []

    def reset(self):
        self._predictions = []

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            inst = out["instances"].to("cpu")
            self._predictions.append(
                {
                    "image_id": inp["image_id"],
                    "boxes": inst.pred_boxes.tensor.numpy(),
                    "scores": inst.scores.numpy(),
                    "classes": inst.pred_classes.numpy(),
                }
            )

    def evaluate(self):
        predictions = self._predictions
        if self.distributed:
            comm.synchronize()
            predictions = list(itertools.chain(*comm.gather(predictions, dst=0)))
            if not comm.is_main_process():
                return {}
        if not predictions:
            logger.warning("[FieldMetricsEvaluator] no predictions: nothing to evaluate")
            return {}
        ground_truths = ground_truth_from_dataset(DatasetCatalog.get(self.dataset_name))
        classes = MetadataCatalog.get(self.dataset_name).get("thing_classes")
        if classes is None:
            num = 1 + max(int(c) for g in ground_truths.values() for c in g["classes"])
            classes = [str(i) for i in range(num)]
        result = field_metrics(
            predictions, ground_truths, classes, self.iou_threshold, self.score_threshold
        )
        table = f"Field metrics on {self.dataset_name}:\n" + format_table(result)
        print(table, flush=True)  # printed: this module's logger is not set up by default_setup
        logger.info(table)
        if self.output_dir:
            PathManager.mkdirs(self.output_dir)
            json_path = os.path.join(self.output_dir, "field_metrics.json")
            with PathManager.open(json_path, "w") as f:
                json.dump({"dataset": self.dataset_name, **_json_ready(result)}, f, indent=1)
            png_path = os.path.join(self.output_dir, "field_metrics_pr.png")
            plot_pr_curves(
                result, png_path, title=f"{self.dataset_name}, IoU {self.iou_threshold:g}"
            )
            logger.info(f"Field metrics written to {json_path} and {png_path}")
        return {"field_metrics": _flat_summary(result)}


def _flat_summary(result: Dict) -> Dict[str, float]:
    """The returned metrics: floats only (Detectron2's EvalHook and print_csv_format)."""
    best = result["overall"]["best_f1"]
    out = {
        "P": best["precision"],
        "R": best["recall"],
        "F1": best["f1"],
        "score_thr": float("nan") if best["score_threshold"] is None else best["score_threshold"],
    }
    if result["score_threshold"] is not None:
        fixed = result["overall"]["at_score_threshold"]
        out.update({"P@thr": fixed["precision"], "R@thr": fixed["recall"], "F1@thr": fixed["f1"]})
    for name, s in result["classes"].items():
        out[f"F1-{name}"] = s["best_f1"]["f1"]
    return out
