"""The positives visualiser: it runs, and its per-GT numbers agree with the matchers."""

import cv2
import numpy as np
import torch

from atss import atss_match
from atss.modeling.assigners import iou_match
from atss.utils import explain_assignment
from scripts.visualize_positives import main, visualize
from tests.atss_testing import grid_anchors

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


def test_reported_positives_equal_the_matchers(tmp_path):
    """Counts per GT equal atss_match / iou_match on the model's anchors; stats explain them."""
    out = tmp_path / "positives.png"
    explanation, drawn, table = visualize(str(_image(tmp_path)), BOXES, str(out), max_gts=3)
    assert out.stat().st_size > 10_000 and cv2.imread(str(out)) is not None
    assert len(drawn) == 3

    # Independently built anchors: the padded 224 x 320 input, P3-P7, offset 0.5.
    anchors, _, _ = grid_anchors(224, 320)
    matched = atss_match(anchors, BOXES)
    matched_iou = iou_match(anchors, BOXES)
    for g, sel in enumerate(explanation.per_gt):
        assert sel.num_positives == int((matched == g).sum()), g
        assert int((explanation.matched_iou == g).sum()) == int((matched_iou == g).sum())
        # ATSS positives are candidates at or above the threshold mean + std.
        is_pos = torch.isin(sel.candidates, sel.positives)
        assert bool(torch.isin(sel.positives, sel.candidates).all())
        assert bool((sel.candidate_ious[is_pos] >= sel.threshold).all())
        assert abs(sel.threshold - (sel.iou_mean + sel.iou_std)) < 1e-6
        assert len(sel.candidates) == sum(min(9, len(a)) for a in anchors)
    for g in drawn:  # the table reports those counts
        row = next(r for r in table.splitlines() if r.split()[0] == str(g))
        assert int(row.split()[-3]) == int((matched == g).sum())
        assert int(row.split()[-2]) == int((matched_iou == g).sum())


def test_positives_per_level_sum_to_matcher_counts():
    anchors, _, _ = grid_anchors(128, 128)
    boxes = torch.tensor([[10.0, 10.0, 60.0, 70.0], [40.0, 30.0, 120.0, 120.0]])
    ex = explain_assignment(anchors, boxes)
    per_level = ex.positives_per_level("atss")
    matched = atss_match(anchors, boxes)
    assert per_level.sum(axis=1).tolist() == [int((matched == g).sum()) for g in range(2)]


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
