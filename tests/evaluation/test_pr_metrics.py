"""
Tests of ``atss.evaluation.pr_metrics``: the matching against pycocotools' own (COCOeval's
evaluateImg at one IoU threshold, maxDets large), the P/R/F1 curve and operating points against
hand counts, and the Detectron2 evaluator end to end (JSON, PNG, table, returned floats).
"""

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, BoxMode, Instances
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from atss.evaluation import (
    FieldMetricsEvaluator,
    best_f1_point,
    field_metrics,
    match_detections,
    operating_point,
    pr_curve,
)
from atss.evaluation.pr_metrics import FALSE_POSITIVE, IGNORED, TRUE_POSITIVE


# ------------------------------------------------------------------------------ pycocotools
def _xywh(b):
    return [b[0], b[1], b[2] - b[0], b[3] - b[1]]


def coco_statuses(images, iou_threshold):
    """
    Run pycocotools on ``images`` (list of {"gt": [(xyxy, class, crowd)], "dt": [(xyxy, class,
    score)]}) at one IoU threshold, area "all", 1000 detections, and return, per image, the
    status of each detection in input order (TP 1 / FP 0 / ignored -1) read from evaluateImg's
    dtMatches / dtIgnore.
    """
    gt = {"images": [], "annotations": [], "categories": [{"id": c} for c in (1, 2)]}
    dts = []
    for i, img in enumerate(images, start=1):
        gt["images"].append({"id": i, "width": 400, "height": 400})
        for b, c, crowd in img["gt"]:
            w, h = b[2] - b[0], b[3] - b[1]
            gt["annotations"].append(
                {
                    "id": len(gt["annotations"]) + 1,
                    "image_id": i,
                    "category_id": c + 1,
                    "bbox": _xywh(b),
                    "area": w * h,
                    "iscrowd": int(crowd),
                }
            )
        for b, c, s in img["dt"]:
            dts.append({"image_id": i, "category_id": c + 1, "bbox": _xywh(b), "score": s})
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(dts)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.params.iouThrs = np.array([iou_threshold])
        ev.params.maxDets = [1000]
        ev.params.areaRng = [[0, 1e10]]
        ev.params.areaRngLbl = ["all"]
        ev.evaluate()
    # loadRes gives detection ids 1..N in input order.
    status = {}
    for e in ev.evalImgs:
        if e is None:
            continue
        for did, m, ig in zip(e["dtIds"], e["dtMatches"][0], e["dtIgnore"][0]):
            status[did] = IGNORED if ig else (TRUE_POSITIVE if m > 0 else FALSE_POSITIVE)
    out, did = [], 1
    for img in images:
        out.append([status.get(did + k, FALSE_POSITIVE) for k in range(len(img["dt"]))])
        did += len(img["dt"])
    return out


def ours(images, iou_threshold):
    out = []
    for img in images:
        dt_b = np.array([d[0] for d in img["dt"]], dtype=float).reshape(-1, 4)
        dt_c = np.array([d[1] for d in img["dt"]], dtype=int)
        dt_s = np.array([d[2] for d in img["dt"]], dtype=float)
        gt_b = np.array([g[0] for g in img["gt"]], dtype=float).reshape(-1, 4)
        gt_c = np.array([g[1] for g in img["gt"]], dtype=int)
        gt_crowd = np.array([g[2] for g in img["gt"]], dtype=bool)
        status = np.full(len(dt_b), FALSE_POSITIVE)
        for c in (0, 1):
            d, g = dt_c == c, gt_c == c
            status[d] = match_detections(dt_b[d], dt_s[d], gt_b[g], gt_crowd[g], iou_threshold)
        out.append(status.tolist())
    return out


HAND_CASE = [
    {
        "gt": [
            ([10, 10, 50, 50], 0, False),
            ([40, 10, 80, 50], 0, False),  # overlaps the first: one detection between both
            ([200, 200, 300, 300], 0, True),  # crowd
            ([100, 100, 140, 140], 1, False),
        ],
        "dt": [
            ([12, 10, 52, 50], 0, 0.9),  # TP (first GT)
            ([11, 11, 51, 51], 0, 0.8),  # duplicate: FP (first GT taken, second IoU too low)
            ([30, 10, 70, 50], 0, 0.7),  # IoU 0.6 with the second GT -> TP at 0.4, FP at 0.7
            ([210, 210, 250, 250], 0, 0.6),  # inside the crowd: ignored
            ([400 - 50, 0, 400, 40], 0, 0.95),  # nothing: FP
            ([100, 100, 140, 140], 0, 0.5),  # right place, wrong class: FP
            ([102, 100, 142, 140], 1, 0.4),  # TP, class 1
            ([205, 205, 290, 290], 1, 0.3),  # crowd of the other class: FP
        ],
    },
    {
        "gt": [([0, 0, 20, 20], 1, False), ([300, 300, 350, 350], 0, False)],
        "dt": [([0, 0, 20, 20], 1, 0.9), ([0, 0, 20, 20], 1, 0.9), ([310, 300, 360, 350], 0, 0.2)],
    },
]


@pytest.mark.parametrize("iou_threshold", [0.4, 0.5, 0.7])
def test_matching_equals_pycocotools_on_a_hand_made_case(iou_threshold):
    """Duplicates, a detection between two GTs, a crowd GT, a wrong class, equal scores: every
    detection gets the status pycocotools gives it. Fails if crowd matches count as TP or FP,
    if a GT can be matched twice, or if classes are mixed."""
    assert ours(HAND_CASE, iou_threshold) == coco_statuses(HAND_CASE, iou_threshold)


def test_hand_case_statuses_written_out():
    """The hand case at IoU 0.5 by hand (independent of both implementations)."""
    assert ours(HAND_CASE, 0.5) == [[1, 0, 1, -1, 0, 0, 1, 0], [1, 0, 1]]


@pytest.mark.parametrize("seed", range(6))
def test_matching_equals_pycocotools_on_random_crowded_images(seed):
    """Random clustered boxes (many overlaps, ~15% crowd GTs, ties in score): statuses equal
    pycocotools'. Fails on any departure from COCO's greedy order (e.g. matching the first GT
    above the threshold instead of the best one, or letting a crowd win over a regular GT)."""
    rng = np.random.default_rng(seed)

    def boxes(n):
        ctr = rng.uniform(50, 150, (n, 2))
        wh = rng.uniform(10, 60, (n, 2))
        return np.round(np.concatenate([ctr - wh / 2, ctr + wh / 2], 1), 1).tolist()

    images = []
    for _ in range(3):
        ng, nd = rng.integers(0, 12), rng.integers(0, 25)
        gt = [(b, int(rng.integers(0, 2)), bool(rng.random() < 0.15)) for b in boxes(ng)]
        dt = [(b, int(rng.integers(0, 2)), float(rng.integers(1, 8)) / 8) for b in boxes(nd)]
        images.append({"gt": gt, "dt": dt})
    for t in (0.3, 0.5):
        assert ours(images, t) == coco_statuses(images, t)


def _one_class(gt, dt):
    """One image of class 0: ``gt`` [(xyxy, crowd)], ``dt`` [(xyxy, score)]."""
    return [{"gt": [(b, 0, crowd) for b, crowd in gt], "dt": [(b, 0, s) for b, s in dt]}]


def test_detection_at_exactly_the_iou_threshold_is_matched():
    """IoU >= threshold is a match, as COCO's: a detection [0, 0, 10, 10] on the GT [0, 0, 10, 5]
    has IoU 50 / 100 = 0.5 exactly, and one on a crowd box of the same shape has intersection /
    detection area 0.5 exactly; at threshold 0.5 the first is TP, the second ignored; at
    0.5 + 1e-9 both are false positives (by hand, and pycocotools' statuses). Fails if the
    comparison is strict (>), for the regular or the crowd box."""
    images = _one_class(
        gt=[([0, 0, 10, 5], False), ([100, 0, 110, 5], True)],
        dt=[([0, 0, 10, 10], 0.9), ([100, 0, 110, 10], 0.8)],
    )
    assert ours(images, 0.5) == [[TRUE_POSITIVE, IGNORED]] == coco_statuses(images, 0.5)
    assert ours(images, 0.5 + 1e-9) == [[FALSE_POSITIVE] * 2] == coco_statuses(images, 0.5 + 1e-9)


def test_iou_just_below_the_threshold_far_from_the_origin_is_no_match():
    """Overlaps are computed in double precision, as COCO's: at the coordinates of a large
    orthophoto (20000 px) a detection 0.0005 px taller than twice its GT, [20000, 20000, 20010,
    20010.0005] on [20000, 20000, 20010, 20005], has IoU 50 / 100.005 < 0.5: a false positive at
    threshold 0.5 (by hand, and pycocotools). Fails if the boxes are rounded to float32
    (Detectron2's ``Boxes()`` cast), which makes the detection 10 px tall and the IoU 0.5."""
    x = 20000.0
    images = _one_class(
        gt=[([x, x, x + 10, x + 5], False)], dt=[([x, x, x + 10, x + 10.0005], 0.9)]
    )
    assert ours(images, 0.5) == [[FALSE_POSITIVE]] == coco_statuses(images, 0.5)
    assert ours(images, 0.4999) == [[TRUE_POSITIVE]] == coco_statuses(images, 0.4999)


def test_threshold_one_is_capped_below_one_as_in_coco():
    """COCO caps the IoU threshold at 1 - 1e-10: at threshold 1 a detection equal to its GT up
    to 1e-9 px (IoU 1 - 1e-11) is a TP, one 1 px short (IoU 0.99) is not (by hand, and
    pycocotools). Fails if the cap is dropped (only bit-identical boxes would match)."""
    images = _one_class(
        gt=[([0, 0, 100, 100], False), ([200, 0, 300, 100], False)],
        dt=[([0, 0, 100, 100 + 1e-9], 0.9), ([200, 0, 300, 99], 0.8)],
    )
    assert ours(images, 1.0) == [[TRUE_POSITIVE, FALSE_POSITIVE]] == coco_statuses(images, 1.0)


@pytest.mark.parametrize("a_first", [True, False])
def test_tie_between_two_ground_truth_boxes_goes_to_the_later_one(a_first):
    """A detection [10, 0, 20, 10] (score 0.9) has IoU 100 / 200 = 0.5 with both A = [0, 0, 20,
    10] and B = [10, 0, 30, 10]; COCO gives it the later of the two in the GT list. A second
    detection [0, 0, 18, 10] (0.8) overlaps A by 0.9 and B by 80 / 300 < 0.4. Threshold 0.4,
    GTs (A, B): the first takes B, the second A: TP, TP. GTs (B, A): the first takes A, the
    second finds nothing: TP, FP (by hand, and pycocotools in both orders). Fails if a tie
    goes to the earlier GT."""
    a, b = [0, 0, 20, 10], [10, 0, 30, 10]
    images = _one_class(
        gt=[(g, False) for g in ([a, b] if a_first else [b, a])],
        dt=[([10, 0, 20, 10], 0.9), ([0, 0, 18, 10], 0.8)],
    )
    expected = [TRUE_POSITIVE, TRUE_POSITIVE if a_first else FALSE_POSITIVE]
    assert ours(images, 0.4) == [expected] == coco_statuses(images, 0.4)


def test_no_cap_on_the_number_of_detections_per_image():
    """150 trees, each found exactly, in one image: all 150 are TPs (COCO's evaluateImg with
    maxDets 1000 agrees). Fails if the detections are cut at COCO's default of 100 per image
    (the 50 lowest scores would be FPs and the recall 2/3)."""
    boxes = [[20.0 * (i % 15), 20.0 * (i // 15), 20.0 * (i % 15) + 15, 20.0 * (i // 15) + 15]
             for i in range(150)]  # fmt: skip
    images = _one_class(
        gt=[(b, False) for b in boxes], dt=[(b, 1 - i / 1000) for i, b in enumerate(boxes)]
    )
    assert ours(images, 0.5) == [[TRUE_POSITIVE] * 150] == coco_statuses(images, 0.5)


# ------------------------------------------------------------------------------ curves
def test_curve_and_operating_points_hand_counts():
    """Scores 0.9 TP, 0.8 FP, 0.8 TP, 0.5 ignored, 0.3 TP, 4 GTs. Thresholds 0.9 / 0.8 / 0.3
    (the tie at 0.8 counted together, the ignored one left out): P 1, 2/3, 3/4; R 1/4, 2/4, 3/4.
    Best F1 = 3/4 at 0.3. Fails if ties are split, ignored detections counted as FP, or the
    fixed threshold uses > instead of >=."""
    scores = np.array([0.8, 0.9, 0.3, 0.8, 0.5])
    status = np.array([FALSE_POSITIVE, TRUE_POSITIVE, TRUE_POSITIVE, TRUE_POSITIVE, IGNORED])
    c = pr_curve(scores, status, num_gt=4)
    assert c["threshold"].tolist() == [0.9, 0.8, 0.3]
    assert c["precision"].tolist() == pytest.approx([1, 2 / 3, 3 / 4])
    assert c["recall"].tolist() == pytest.approx([0.25, 0.5, 0.75])
    best = best_f1_point(c, 4)
    assert best["score_threshold"] == 0.3 and best["f1"] == pytest.approx(0.75)
    at = operating_point(c, 4, 0.8)
    assert (at["tp"], at["fp"], at["fn"]) == (2, 1, 2)
    assert operating_point(c, 4, 0.95)["precision"] == 0.0
    assert best_f1_point(pr_curve([], [], 3), 3)["score_threshold"] is None


def test_best_f1_tie_takes_the_highest_score_threshold():
    """2 GTs; 0.9 TP, 0.8 FP, 0.7 FP, 0.6 TP. F1 at 0.9: P 1, R 1/2 -> 2/3; at 0.6: P 1/2, R 1
    -> 2/3 as well (by hand; 0.8 and 0.7 are lower). The best point is the higher threshold,
    0.9, with TP 1, FP 0. Fails if a tie goes to the lowest threshold (the last maximum)."""
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    status = np.array([TRUE_POSITIVE, FALSE_POSITIVE, FALSE_POSITIVE, TRUE_POSITIVE])
    c = pr_curve(scores, status, num_gt=2)
    assert c["f1"][0] == c["f1"][3] == pytest.approx(2 / 3) and c["f1"].max() == c["f1"][0]
    best = best_f1_point(c, 2)
    assert (best["score_threshold"], best["tp"], best["fp"]) == (0.9, 1, 0)


def test_only_images_with_predictions_are_evaluated():
    """Ground truth of an image without a prediction entry is not counted: one image with its
    tree found (TP) and one image with two trees that has no entry give recall 1, 1 GT and one
    image (by hand). Fails if every ground-truth image is evaluated (recall 1/3, 3 GTs)."""
    box = np.array([[0.0, 0, 10, 10]])
    gts = {
        1: {"boxes": box, "classes": np.array([0]), "crowd": np.array([False])},
        2: {"boxes": np.array([[0.0, 0, 10, 10], [20, 20, 30, 30]]),
            "classes": np.array([0, 0]), "crowd": np.array([False, False])},
    }  # fmt: skip
    preds = [{"image_id": 1, "boxes": box, "scores": np.array([0.9]), "classes": np.array([0])}]
    r = field_metrics(preds, gts, ["tree"], iou_threshold=0.5)
    assert r["num_images"] == 1 and [im["image_id"] for im in r["images"]] == [1]
    assert r["overall"]["num_gt"] == 1 and r["overall"]["best_f1"]["recall"] == 1.0


def test_field_metrics_per_class_overall_and_images():
    """Overall pools the classes at one threshold (micro average); per-image rows count that
    image only. Checked against the statuses of the hand case at IoU 0.5 counted by hand."""
    preds, gts = [], {}
    for i, img in enumerate(HAND_CASE):
        preds.append(
            {
                "image_id": i,
                "boxes": np.array([d[0] for d in img["dt"]], float),
                "scores": np.array([d[2] for d in img["dt"]]),
                "classes": np.array([d[1] for d in img["dt"]]),
            }
        )
        gts[i] = {
            "boxes": np.array([g[0] for g in img["gt"]], float),
            "classes": np.array([g[1] for g in img["gt"]]),
            "crowd": np.array([g[2] for g in img["gt"]]),
            "file_name": f"{i}.png",
        }
    r = field_metrics(preds, gts, ["a", "b"], iou_threshold=0.5, score_threshold=0.0)
    # All detections kept: class a: TP 3 (0.9, 0.7, 0.2), FP 3 (0.95, 0.8, 0.5), 3 GTs (crowd
    # excluded); class b: TP 2, FP 2 (0.3, the duplicate 0.9), 2 GTs.
    a, b = r["classes"]["a"]["at_score_threshold"], r["classes"]["b"]["at_score_threshold"]
    assert (a["tp"], a["fp"], a["fn"]) == (3, 3, 0) and (b["tp"], b["fp"], b["fn"]) == (2, 2, 0)
    o = r["overall"]["at_score_threshold"]
    assert (o["tp"], o["fp"], o["fn"]) == (5, 5, 0) and o["precision"] == pytest.approx(0.5)
    assert [im["num_gt"] for im in r["images"]] == [3, 2]
    assert r["images"][1]["at_score_threshold"]["tp"] == 2


# ------------------------------------------------------------------------------ evaluator
def test_evaluator_writes_json_png_and_returns_floats(tmp_path):
    """The evaluator on a registered 2-image dataset, one tree each: a hit on one image and a
    miss (one false detection) on the other give P 0.5, R 0.5; JSON and PNG written; the
    returned values are floats (Detectron2's EvalHook refuses anything else). Fails if
    predictions are not mapped back to their image by image_id."""
    name = "pr_metrics_test_dataset"
    dicts = [
        {
            "file_name": f"im{i}.png",
            "image_id": 10 + i,
            "height": 100,
            "width": 100,
            "annotations": [
                {
                    "bbox": [5, 5, 20, 30],
                    "bbox_mode": BoxMode.XYWH_ABS,
                    "category_id": 0,
                    "iscrowd": 0,
                }
            ],
        }
        for i in range(2)
    ]
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).set(thing_classes=["tree"])
    ev = FieldMetricsEvaluator(
        name, iou_threshold=0.4, score_threshold=0.5, output_dir=str(tmp_path)
    )
    ev.reset()
    for image_id, boxes in ((10, [[5.0, 5, 25, 35]]), (11, [[60.0, 60, 90, 90]])):
        inst = Instances((100, 100))
        inst.pred_boxes = Boxes(torch.tensor(boxes))
        inst.scores = torch.tensor([0.8])
        inst.pred_classes = torch.tensor([0])
        ev.process([{"image_id": image_id}], [{"instances": inst}])
    res = ev.evaluate()["field_metrics"]
    assert all(isinstance(v, float) for v in res.values())
    assert res["P@thr"] == pytest.approx(0.5) and res["R@thr"] == pytest.approx(0.5)
    assert res["F1-tree"] == pytest.approx(0.5)  # per class as "F1-<name>"
    saved = json.loads((tmp_path / "field_metrics.json").read_text())
    assert saved["overall"]["best_f1"]["tp"] == 1 and saved["iou_threshold"] == 0.4
    assert (tmp_path / "field_metrics_pr.png").stat().st_size > 1000


@pytest.mark.parametrize("iou_threshold", [0.0, -0.1, 1.01])
def test_evaluator_refuses_an_iou_threshold_outside_0_1(iou_threshold):
    """test.iou_threshold must be in (0, 1]; 1 itself is allowed (capped as in COCO). Fails if
    0 (every touching detection would match) or a value above 1 is accepted, or 1 refused."""
    with pytest.raises(ValueError, match=r"test.iou_threshold must be in \(0, 1\]"):
        FieldMetricsEvaluator("any", iou_threshold=iou_threshold)
    assert FieldMetricsEvaluator("any", iou_threshold=1.0).iou_threshold == 1.0


def test_build_evaluator_adds_field_metrics_beside_the_configs_evaluator():
    """train_net's evaluator: the config's COCOEvaluator plus the field metrics on the same
    dataset, with test.iou_threshold / test.score_threshold / train.output_dir from the config.
    Fails if the overrides are not passed on, or the COCO evaluator is replaced."""
    from detectron2.config import LazyConfig
    from detectron2.evaluation import COCOEvaluator, DatasetEvaluators

    from atss.data import register_builtin_dataset
    from atss.evaluation import build_evaluator

    register_builtin_dataset("shapes_val")
    cfg = LazyConfig.load("configs/Shapes/atss_tiny_shapes.py")
    cfg = LazyConfig.apply_overrides(
        cfg,
        ["test.iou_threshold=0.4", "test.score_threshold=0.1", "train.output_dir=/tmp/x_out"],
    )
    ev = build_evaluator(cfg)
    assert isinstance(ev, DatasetEvaluators)
    coco, field = ev._evaluators
    assert isinstance(coco, COCOEvaluator) and isinstance(field, FieldMetricsEvaluator)
    assert field.dataset_name == cfg.dataloader.test.dataset.names
    assert (field.iou_threshold, field.score_threshold, field.output_dir) == (
        0.4,
        0.1,
        "/tmp/x_out",
    )
