"""
The positives visualiser (tools/visualize_positives.py): it runs, and its per-GT numbers agree
with independent dense oracles of the ATSS and IoU rules (``tests/atss_testing.py``), not with
the functions it calls.
"""

import cv2
import numpy as np
import torch

from tests.atss_testing import (
    dense_atss,
    dense_atss_thresholds,
    dense_iou_assign,
    grid_anchors,
    load_script,
)

_positives = load_script("tools/visualize_positives.py")
main, visualize = _positives.main, _positives.visualize
explain_assignment = _positives.explain_assignment

BOXES = torch.tensor(
    [
        [20.0, 30.0, 44.0, 50.0],  # small
        [60.0, 40.0, 180.0, 150.0],  # large
        [150.0, 20.0, 290.0, 60.0],  # wide
        [10.0, 120.0, 30.0, 190.0],  # tall, against the left border
        [100.0, 100.0, 103.0, 103.0],  # tiny: may end up without positive
    ]
)


def _image(tmp_path, h=200, w=300):
    path = tmp_path / "scene.png"
    rng = np.random.default_rng(0)
    cv2.imwrite(str(path), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    return path


def _per_level_counts(matched, anchors):
    """(G, L) positives of each GT on each level, from an oracle's assignment."""
    level = torch.cat([torch.full((len(a),), i) for i, a in enumerate(anchors)])
    num_gt = int(matched.max()) + 1 if len(matched) else 0
    counts = np.zeros((max(num_gt, 0), len(anchors)), dtype=np.int64)
    for g in range(num_gt):
        for lvl in range(len(anchors)):
            counts[g, lvl] = int(((matched == g) & (level == lvl)).sum())
    return counts


def test_reported_positives_equal_the_oracles(tmp_path):
    """
    On the model's anchors (padded 224 x 320 input, P3-P7, offset 0.5, built here), the
    visualiser's ATSS and IoU-assigner positives per GT equal the dense oracles, its thresholds
    equal the oracle's mean + std, and the table prints those counts. Fails if the visualiser
    recomputes a rule differently (another IoU, std, candidate count) or mislabels GTs.
    """
    out = tmp_path / "positives.png"
    explanation, drawn, table = visualize(str(_image(tmp_path)), BOXES, str(out), max_gts=3)
    assert out.stat().st_size > 10_000 and cv2.imread(str(out)) is not None
    assert len(drawn) == 3

    anchors, _, _ = grid_anchors(224, 320)
    oracle_atss = dense_atss(anchors, BOXES)
    oracle_iou = dense_iou_assign(torch.cat(anchors), BOXES)
    assert torch.equal(explanation.matched_atss, oracle_atss)
    assert torch.equal(explanation.matched_iou, oracle_iou)
    thresholds = dense_atss_thresholds(anchors, BOXES)
    for g, sel in enumerate(explanation.per_gt):
        assert sel.num_positives == int((oracle_atss == g).sum()), g
        assert abs(sel.threshold - float(thresholds[g])) < 1e-6, g
        assert abs(sel.threshold - (sel.iou_mean + sel.iou_std)) < 1e-6
        assert len(sel.candidates) == sum(min(9, len(a)) for a in anchors)
        # ATSS positives are candidates at or above the threshold.
        is_pos = torch.isin(sel.candidates, sel.positives)
        assert bool(torch.isin(sel.positives, sel.candidates).all())
        assert bool((sel.candidate_ious[is_pos] >= sel.threshold).all())
    for g in drawn:  # the table reports those counts
        row = next(r for r in table.splitlines() if r.split()[0] == str(g))
        assert int(row.split()[-3]) == int((oracle_atss == g).sum())
        assert int(row.split()[-2]) == int((oracle_iou == g).sum())


def test_positives_per_level_equal_the_oracle_level_by_level():
    """
    positives_per_level gives, for every GT and every level, the oracle's count on that level
    (GTs of very different sizes, so the positives spread over several levels). Fails on a
    per-level attribution that is shifted by one level or mixes GTs, even if each GT's total
    is right.
    """
    anchors, _, _ = grid_anchors(320, 320)
    boxes = torch.tensor(
        [[10.0, 10.0, 60.0, 70.0], [40.0, 30.0, 220.0, 200.0], [150.0, 20.0, 310.0, 300.0]]
    )
    ex = explain_assignment(anchors, boxes)
    expected_atss = _per_level_counts(dense_atss(anchors, boxes), anchors)
    expected_iou = _per_level_counts(dense_iou_assign(torch.cat(anchors), boxes), anchors)
    assert (expected_atss.sum(axis=0) > 0).sum() >= 2  # the check spans several levels
    np.testing.assert_array_equal(ex.positives_per_level("atss"), expected_atss)
    np.testing.assert_array_equal(ex.positives_per_level("iou"), expected_iou)


def test_cli(tmp_path, capsys):
    image = _image(tmp_path)
    out = tmp_path / "cli.png"
    assert (
        main(
            [
                "--image",
                str(image),
                "--boxes",
                "20,30,44,50; 60,40,180,150",
                "--output",
                str(out),
                "--gts",
                "1",
            ]
        )
        == 0
    )
    assert out.exists() and "wrote" in capsys.readouterr().out
    assert main(["--image", str(image), "--boxes", "1,2,3", "--output", str(out)]) == 2
    assert "4 numbers" in capsys.readouterr().err
    assert main(["--image", str(tmp_path / "none.png"), "--boxes", "1,2,3,4"]) == 2
    assert "none.png: cannot read image" in capsys.readouterr().err
