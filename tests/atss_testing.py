"""Shared builders for the tests: anchors, random GT boxes, a tiny ATSS model and inputs, and
the entry-point scripts as modules."""

import csv
import dataclasses
import functools
import importlib.util
import os
import runpy
import shutil
import socket
import subprocess
import sys

import torch
from detectron2.structures import Boxes, pairwise_iou

# The builders the repository's tools also use live in the library (tests re-use them here).
from atss.utils.testing import (  # noqa: F401
    FIT_BOXES,
    FIT_SIZE,
    STRIDES,
    fit_briefly,
    grid_anchors,
    make_inputs,
    random_boxes,
    random_matcher_case,
    tiny_model,
    tiny_model_cfg,
)

R50_CONFIG = "configs/COCO/atss_R_50_FPN_1x.py"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script(relpath):
    """Import an entry-point script (``train_net.py``, ``tools/export_model.py``, ...: a path
    relative to the repository) as a module, without running its ``__main__`` block."""
    name = "_entry_" + relpath.replace("/", "_").replace(".py", "")
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, relpath))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY_CONFIG_FILE = """\
from atss.utils.testing import tiny_model_cfg

_cfg = tiny_model_cfg(num_classes=3)
model = _cfg.model
dataloader = _cfg.dataloader
train = _cfg.train
train.device = "cpu"
dataloader.test.dataset.names = "shapes_val"
dataloader.test.mapper.augmentations[0].short_edge_length = {short_edge_length}
dataloader.test.mapper.augmentations[0].max_size = {max_size}
"""


def run_script(relpath, *argv):
    """Run an entry-point script (a path relative to the repository) as ``python relpath
    *argv`` would, its ``__main__`` block included, but in this process; returns its exit
    status (0 when it returns without ``sys.exit``)."""
    saved = sys.argv
    sys.argv = [relpath, *map(str, argv)]
    try:
        runpy.run_path(os.path.join(ROOT, relpath), run_name="__main__")
    except SystemExit as e:
        return 0 if e.code is None else e.code
    finally:
        sys.argv = saved
    return 0


def write_tiny_config(path, short_edge_length, max_size, *extra_lines):
    """
    Write a config file of :func:`tiny_model_cfg` (3 classes, BGR input, on the CPU) for the
    entry points that take ``--config-file``: its test loader reads ``shapes_val`` resized to
    ``short_edge_length`` (longer side <= ``max_size``); ``extra_lines`` are appended. Returns
    ``path``.
    """
    text = TINY_CONFIG_FILE.format(short_edge_length=short_edge_length, max_size=max_size)
    path.write_text(text + "".join(line + "\n" for line in extra_lines))
    return path


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@functools.lru_cache(maxsize=None)
def fitted_tiny_model(use_dcn=False):
    """A tiny model fitted for a few steps on one batch (:func:`fit_briefly`), so that it has
    confident detections, in eval mode on the CPU. Cached: copy it before changing it."""
    model = tiny_model(**{"head.use_dcn": use_dcn})
    return fit_briefly(model, make_inputs([FIT_SIZE, FIT_SIZE], [FIT_BOXES] * 2))


def record_head_dtypes(model):
    """A list that receives, at each forward of ``model.head``, the set of its output dtypes:
    {torch.bfloat16} where the network ran under bf16 autocast, {torch.float32} where not."""
    seen = []
    model.head.register_forward_hook(
        lambda module, args, out: seen.append({t.dtype for level in out for t in level})
    )
    return seen


def assert_detections_agree(reference, other, min_iou, max_score_diff, min_score=0.3):
    """Each detection of ``reference`` (Instances) scoring >= ``min_score`` has one of its class
    in ``other`` with IoU >= ``min_iou`` and a score within ``max_score_diff``. Returns how many
    were compared (> 0)."""
    confident = reference[reference.scores >= min_score]
    assert len(confident) > 0 and len(other) > 0
    iou = pairwise_iou(confident.pred_boxes, other.pred_boxes)
    iou[confident.pred_classes[:, None] != other.pred_classes[None, :]] = -1.0
    best_iou, best = iou.max(dim=1)
    assert bool((best_iou >= min_iou).all()), best_iou
    score_diff = (confident.scores - other.scores[best]).abs().max()
    assert float(score_diff) <= max_score_diff, score_diff
    return len(confident)


def run_python(code, *argv, env=None, timeout=900):
    """``python -c code *argv`` in a fresh process at the repository root (``env``: its whole
    environment, default this one's); returns the completed process, output captured as text."""
    return subprocess.run(
        [sys.executable, "-c", code, *argv],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ if env is None else env,
    )


def write_coco_example(folder, num_train, num_val, size=(160, 256), seed=0):
    """The example COCO folder of ``tools/make_coco_example.py`` (categories 3 = rectangle and
    7 = ellipse, every third image grey): ``{"train_json", "val_json", "image_root"}``."""
    tool = load_script("tools/make_coco_example.py")
    return tool.write_coco_example(str(folder), num_train, num_val, size, seed)


def train_net_args(config, *opts, eval_only=False, resume=False):
    """train_net.py's parsed command line: ``--config-file config [--eval-only] [--resume]
    *opts``."""
    import train_net

    argv = ["--config-file", config] + ["--eval-only"] * eval_only + ["--resume"] * resume
    return train_net.default_argument_parser().parse_args([*argv, *opts])


def coco_json_overrides(paths, train_json=None, test_json=None):
    """The four ``dataset.{train,test}.{json_file,image_root}=...`` overrides of a configs/Custom
    config for a folder from :func:`write_coco_example` (``paths``: its return value);
    ``train_json`` / ``test_json`` replace its JSON files."""
    return [
        f"dataset.train.json_file={train_json or paths['train_json']}",
        f"dataset.train.image_root={paths['image_root']}",
        f"dataset.test.json_file={test_json or paths['val_json']}",
        f"dataset.test.image_root={paths['image_root']}",
    ]


# ------------------------------------------------------------------------------------------
# The example run: one run folder that the end-to-end tests share (tests/conftest.py's
# `example_run` fixture, trained once per test run), instead of each training its own.

EXAMPLE_CONFIG = "configs/Custom/atss_MNV2_FPN_coco_json.py"
EXAMPLE_ITERS = 8
# Inputs near the example's 64-96 px images; a low score threshold and few candidates, so that
# the briefly trained model has detections to compare; deterministic batches (seeded, no aspect
# grouping), so that a run resumed from any checkpoint ends with the uninterrupted weights; a
# checkpoint every second iteration, all kept; the evaluation after the last iteration.
EXAMPLE_OVERRIDES = [
    "dataloader.train.mapper.augmentations.0.short_edge_length=[96,128]",
    "dataloader.test.mapper.augmentations.0.short_edge_length=96",
    "model.test_score_thresh=0.001",
    "model.test_topk_candidates=50",
    "train.seed=0",
    "dataloader.train.aspect_ratio_grouping=False",
    f"train.max_iter={EXAMPLE_ITERS}",
    "train.checkpointer.period=2",
    "train.checkpointer.max_to_keep=null",
    "train.log_period=1",
]


@dataclasses.dataclass
class ExampleRun:
    """A run folder of :data:`EXAMPLE_CONFIG` trained with :data:`EXAMPLE_OVERRIDES` on
    :func:`write_coco_example`'s folder (8 training and 3 validation images of 64-96 px,
    category ids 3 and 7); the data it was trained on are gone, so the folder stands alone.

    Attributes:
        work: the folder holding ``output/mine`` (the run, where the README's snippets expect
            it) and ``data`` (the same example folder, written again).
        data: ``data``'s paths (:func:`write_coco_example`).
    """

    work: str
    data: dict

    folder = property(lambda self: os.path.join(self.work, "output", "mine"))
    config = property(lambda self: os.path.join(self.folder, "config.yaml"))
    weights = property(lambda self: os.path.join(self.folder, "model_final.pth"))

    def training(self, *opts):
        """The overrides of the run's training (on ``data``), then ``opts``."""
        return [*coco_json_overrides(self.data), *EXAMPLE_OVERRIDES, *opts]


def warm_torchscript():
    """Run the loss's TorchScript function (fvcore's ``sigmoid_focal_loss_jit``) once with
    gradients. TorchScript runs a function's first call unoptimised, which rounds differently
    from its later calls, and training amplifies the difference: a run compared with a rerun
    in this process (or with a process that warms too: :data:`WARM_TRAIN_NET`) warms first."""
    from atss.modeling.losses import focal_loss

    logits = torch.zeros(4, 2, requires_grad=True)
    focal_loss(logits, torch.zeros(4, dtype=torch.long), 2, 0.25, 2.0).backward()


# ``python -c WARM_TRAIN_NET ARGS``: ``python train_net.py ARGS`` after :func:`warm_torchscript`.
WARM_TRAIN_NET = (
    "import os, runpy, sys; from tests.atss_testing import ROOT, warm_torchscript; "
    "warm_torchscript(); sys.argv[0] = os.path.join(ROOT, 'train_net.py'); "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)


def train_example_run(work):
    """Train the :class:`ExampleRun` in ``work`` (TorchScript warmed: reruns in this process
    are then deterministic)."""
    import train_net

    warm_torchscript()
    gone = write_coco_example(os.path.join(work, "gone"), 8, 3, size=(64, 96))
    run = ExampleRun(work, gone)
    train_net.main(train_net_args(EXAMPLE_CONFIG, *run.training(f"train.output_dir={run.folder}")))
    shutil.rmtree(os.path.join(work, "gone"))
    run.data = write_coco_example(os.path.join(work, "data"), 8, 3, size=(64, 96))
    return run


# ------------------------------------------------------------------------------------------
# Test oracles: the assignment rules written densely and directly from their definitions
# (ATSS paper Algorithm 1; the authors' sfzhang15/ATSS atss_core/modeling/rpn/atss/loss.py for
# the IoU / SSC / TOPK ablations). They share no code with atss.modeling; they are slow and
# memory-hungry on purpose. Background is -1, ignore is -2.

ORACLE_BACKGROUND, ORACLE_IGNORE = -1, -2
# The authors' SSC table (object_sizes_of_interest), for P3..P7.
FCOS_SCALE_RANGES = [(-1.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, 512.0), (512.0, 1e8)]
# Float64 centre distances computed as differences (cdist's matrix-product shortcut rounds).
EXACT = "donot_use_mm_for_euclid_dist"


def _centres(boxes):
    return torch.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], dim=1)


def _margin_to_sides(points, boxes):
    """(P, B) smallest distance from each point to the four sides of each box (< 0 outside)."""
    x, y = points[:, 0:1], points[:, 1:2]
    return torch.stack(
        [x - boxes[None, :, 0], y - boxes[None, :, 1], boxes[None, :, 2] - x, boxes[None, :, 3] - y]
    ).amin(dim=0)


def _nearest_k(dist, k):
    """
    (C, k) column indices of the k smallest values of each row of ``dist``; of values equal to
    the k-th smallest, the lowest indices (the spec's tie rule).
    """
    if k == dist.shape[1]:
        return torch.arange(k).expand(len(dist), k)
    values, out = dist.topk(k + 1, dim=1, largest=False)  # ascending
    out = out[:, :k].clone()
    tied = (values[:, k - 1] == values[:, k]).nonzero()[:, 0]
    for row in tied.tolist():  # a tie across the k-th place: the lowest indices win it
        d = dist[row]
        less, equal = d < values[row, k - 1], d == values[row, k - 1]
        chosen = less | (equal & (equal.cumsum(0) <= k - int(less.sum())))
        out[row] = chosen.nonzero()[:, 0]
    return out


def _dense_candidates(anchors_per_level, gt, k):
    """(G, K) per level the k nearest anchor centres to each GT centre (lower index on equal
    distance), from a full GT x anchors float64 distance matrix."""
    anchors = torch.cat(anchors_per_level).float()
    dist = torch.cdist(_centres(gt).double(), _centres(anchors).double(), compute_mode=EXACT)
    cand, start = [], 0
    for a in anchors_per_level:
        if min(k, len(a)):
            cand.append(_nearest_k(dist[:, start : start + len(a)], min(k, len(a))) + start)
        start += len(a)
    return torch.cat(cand, dim=1)


def _mean_plus_std(ious):
    return float(ious.mean()) + (float(ious.std()) if len(ious) > 1 else 0.0)


def dense_atss(anchors_per_level, gt, topk=9, n_a=1, gt_chunk=64):
    """
    ATSS Algorithm 1 with a dense GT x anchors distance matrix (GTs in chunks of ``gt_chunk`` to
    bound the oracle's memory), then GT by GT: candidates = per level the k·#A nearest centres;
    threshold mean + unbiased std of their IoUs (std 0 for one candidate); positives =
    candidates at or above it whose centre is strictly inside by > 0.01; an anchor wanted by
    several GTs goes to the highest IoU, equal IoU to the lower GT index.
    """
    anchors = torch.cat(anchors_per_level).float()
    gt = gt.float()
    best_iou = torch.full((len(anchors),), -float("inf"))
    best_gt = torch.full((len(anchors),), ORACLE_BACKGROUND, dtype=torch.int64)
    if len(gt) == 0 or len(anchors) == 0:
        return best_gt
    ac = _centres(anchors)
    for lo in range(0, len(gt), gt_chunk):
        cand = _dense_candidates(anchors_per_level, gt[lo : lo + gt_chunk], topk * n_a)
        for j, c in enumerate(cand):  # ascending GT index: strict > keeps the lower on ties
            g = lo + j
            c_iou = pairwise_iou(Boxes(anchors[c]), Boxes(gt[g : g + 1]))[:, 0]
            inside = _margin_to_sides(ac[c], gt[g : g + 1])[:, 0] > 0.01
            pos = (c_iou >= _mean_plus_std(c_iou)) & inside
            better = c_iou[pos] > best_iou[c[pos]]
            best_iou[c[pos][better]] = c_iou[pos][better]
            best_gt[c[pos][better]] = g
    return best_gt


def dense_atss_thresholds(anchors_per_level, gt, topk=9, n_a=1):
    """(G,) float64: the ATSS threshold mean + std of each GT's candidate IoUs, densely."""
    anchors = torch.cat(anchors_per_level).float()
    cand = _dense_candidates(anchors_per_level, gt.float(), topk * n_a)
    ious = [
        pairwise_iou(Boxes(anchors[c]), Boxes(gt[g : g + 1].float()))[:, 0]
        for g, c in enumerate(cand)
    ]
    return torch.tensor([_mean_plus_std(x) for x in ious], dtype=torch.float64)


def dense_iou_assign(anchors, gt, thresholds=(0.4, 0.5), low_quality=True):
    """
    The authors' 'IoU' type, anchor by anchor (maskrcnn-benchmark's Matcher + centre rule):
    best IoU >= 0.5 positive, < 0.4 background, else ignored (first GT on equal IoU); with
    low-quality matches every anchor reaching some GT's highest IoU (> 0 here, a documented
    deviation for degenerate GTs) is positive with its own best GT; a positive whose centre is not
    inside its GT by > 0.01 is ignored.
    """
    anchors, gt = anchors.float(), gt.float()
    out = [ORACLE_BACKGROUND] * len(anchors)
    if len(gt) == 0:
        return torch.tensor(out, dtype=torch.int64)
    iou = pairwise_iou(Boxes(anchors), Boxes(gt)).tolist()  # rows: anchors
    best = [max(row) for row in iou]
    arg = [row.index(b) for row, b in zip(iou, best)]  # first (lowest) GT at the max
    neg, pos = thresholds
    for a in range(len(anchors)):
        if best[a] >= pos:
            out[a] = arg[a]
        elif best[a] >= neg:
            out[a] = ORACLE_IGNORE
    if low_quality:
        for g in range(len(gt)):
            gt_best = max(row[g] for row in iou)
            for a in range(len(anchors)):
                if gt_best > 0 and iou[a][g] == gt_best:
                    out[a] = arg[a]
    margins = _margin_to_sides(_centres(anchors), gt).tolist()
    for a in range(len(anchors)):
        if out[a] >= 0 and not margins[a][out[a]] > 0.01:
            out[a] = ORACLE_IGNORE
    return torch.tensor(out, dtype=torch.int64)


def dense_ssc_assign(anchors_per_level, gt, scale_ranges=FCOS_SCALE_RANGES):
    """
    The authors' 'SSC' type, anchor by anchor: GTs whose box contains the anchor centre by
    > 0.01 on all sides and whose largest centre-to-side distance is within the level's
    [low, high] (both inclusive) are eligible; the smallest area (w·h) wins, lower index on ties.
    """
    out = []
    gt = gt.float()
    areas = ((gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])).tolist()
    for level, anchors in enumerate(anchors_per_level):
        low, high = scale_ranges[level]
        for cx, cy in _centres(anchors.float()).tolist():
            winner, winner_area = ORACLE_BACKGROUND, float("inf")
            for g, (x1, y1, x2, y2) in enumerate(gt.tolist()):
                ltrb = [cx - x1, cy - y1, x2 - cx, y2 - cy]
                if min(ltrb) > 0.01 and low <= max(ltrb) <= high and areas[g] < winner_area:
                    winner, winner_area = g, areas[g]
            out.append(winner)
    return torch.tensor(out, dtype=torch.int64)


def dense_topk_assign(anchors_per_level, gt, topk=9):
    """
    The authors' 'TOPK' type: per GT the k anchors of all levels together with the highest IoU
    (equal IoU: nearer centre, then lower index), kept when the centre is inside by > 0.01; an
    anchor kept by several GTs goes to the highest IoU, the lower GT index on equal IoU.
    """
    anchors = torch.cat(anchors_per_level).float()
    gt = gt.float()
    out = [ORACLE_BACKGROUND] * len(anchors)
    if len(gt) == 0:
        return torch.tensor(out, dtype=torch.int64)
    iou = pairwise_iou(Boxes(anchors), Boxes(gt)).t().tolist()  # rows: GTs
    centres = _centres(anchors).tolist()
    gt_centres = _centres(gt).tolist()
    margins = _margin_to_sides(_centres(anchors), gt).tolist()
    kept = {}  # anchor -> (iou, gt)
    for g in range(len(gt)):
        gx, gy = gt_centres[g]

        def rank(a):
            return (-iou[g][a], (centres[a][0] - gx) ** 2 + (centres[a][1] - gy) ** 2, a)

        for a in sorted(range(len(anchors)), key=rank)[:topk]:
            if margins[a][g] > 0.01 and (a not in kept or iou[g][a] > kept[a][0]):
                kept[a] = (iou[g][a], g)
    for a, (_, g) in kept.items():
        out[a] = g
    return torch.tensor(out, dtype=torch.int64)


def reference_giou(pred, target):
    """
    GIoU of one pair of XYXY boxes from its definition (Rezatofighi et al. 2019), in Python
    floats; a predicted box with x2 < x1 or y2 < y1 is first collapsed to x2 = x1 / y2 = y1
    (the authors' clamp), so it covers no area.
    """
    px1, py1, px2, py2 = (float(v) for v in pred)
    px2, py2 = max(px2, px1), max(py2, py1)
    tx1, ty1, tx2, ty2 = (float(v) for v in target)
    inter = max(0.0, min(px2, tx2) - max(px1, tx1)) * max(0.0, min(py2, ty2) - max(py1, ty1))
    union = (px2 - px1) * (py2 - py1) + (tx2 - tx1) * (ty2 - ty1) - inter
    hull = (max(px2, tx2) - min(px1, tx1)) * (max(py2, ty2) - min(py1, ty1))
    return inter / union - (hull - union) / hull


def free_port() -> int:
    """A TCP port free on the loopback now, for a test's --dist-url: Detectron2's default port
    is the same for every run of one user, so two distributed runs at once would collide."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_detections_csv(path):
    """The rows of a detections CSV (atss.inference.detection_files), typed back (floats, int
    class id)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in ("x0", "y0", "x1", "y1", "score"):
            r[k] = float(r[k])
        r["class_id"] = int(r["class_id"])
    return rows
