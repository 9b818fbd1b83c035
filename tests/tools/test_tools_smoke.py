"""Smoke tests of the tools in tools/: each runs end to end on a tiny problem and
writes what it promises (the `make demo` job and the detector comparison)."""

import json
import math
import os
import subprocess
import sys

import pytest
from detectron2.config import LazyConfig

from atss.engine.metrics import read_metrics
from tests.atss_testing import load_script


def _config_yaml(folder):
    """The config.yaml a run saved (Detectron2's LazyConfig.save format)."""
    return LazyConfig.load(os.path.join(folder, "config.yaml"))


@pytest.mark.slow
def test_make_demo_job_trains_evaluates_and_draws(tmp_path, capsys):
    """tools/train_treecrowns_demo.py (what `make demo` runs) with its real config, shortened
    to 4 iterations and evaluated on the 2 small cross-site images: it trains with the shared
    schedule rule (steps floor(800*4/1100), floor(1000*4/1100) = 2, 3), evaluates, writes the
    PNG and demo_results.json, and prints the AP line. Catches a broken import or argument
    path and a missing output (the rule itself: tests/engine/test_schedule_and_metrics.py)."""
    main = load_script("tools/train_treecrowns_demo.py").main

    out = tmp_path / "demo"
    results = main(
        [
            "--max-iter",
            "4",
            "--output-dir",
            str(out),
            "dataloader.test.dataset.names=treecrowns_xsite_val",
            "train.log_period=1",
            "model.test_score_thresh=0.001",  # detections from a barely trained model
        ]
    )
    cfg = _config_yaml(out)
    assert cfg.train.max_iter == 4 and cfg.train.checkpointer.period == 1
    assert list(cfg.lr_multiplier.scheduler.milestones) == [2, 3]
    assert (out / "model_final.pth").is_file() and (out / "val_detections_vs_gt.png").is_file()
    summary = json.loads((out / "demo_results.json").read_text())
    assert summary["bbox"] == pytest.approx(results["bbox"], nan_ok=True)
    assert math.isfinite(summary["bbox"]["AP"]) and summary["s_per_iter"] > 0
    assert isinstance(summary["drawn_detections"], int)
    printed = capsys.readouterr().out
    assert "==== ATSS tree-crown demo ====" in printed and "AP=" in printed


@pytest.mark.slow
def test_compare_detectors_tiny_train_run_writes_table_and_plot(tmp_path):
    """tools/compare_detectors.py train for one detector, one seed, the small cross-site
    split, 4 iterations: the train_net.py run gets the shared schedule rule, and the table,
    the per-run JSON (read from metrics.json) and the plot are written."""
    cmd = [
        sys.executable,
        "tools/compare_detectors.py",
        "train",
        "--seeds",
        "0",
        "--splits",
        "xsite",
        "--detectors",
        "ATSS",
        "--max-iter",
        "4",
        "--eval-period",
        "4",
        "--output",
        str(tmp_path),
        "--opts",
        "train.log_period=1",
        "model.test_score_thresh=0.001",  # detections from a barely trained model
    ]
    run = subprocess.run(cmd, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    run_dir = tmp_path / "xsite" / "ATSS" / "seed0"
    cfg = _config_yaml(run_dir)
    assert cfg.train.max_iter == 4
    assert list(cfg.lr_multiplier.scheduler.milestones) == [2, 3]
    (row,) = json.loads((tmp_path / "train_runs.json").read_text())
    logged = [r for r in read_metrics(str(run_dir / "metrics.json")) if "bbox/AP" in r][-1]
    assert row["AP"] == logged["bbox/AP"] and math.isfinite(row["AP"])
    assert row["iterations"] == 4 and row["train_s"] > 0
    assert "| xsite | ATSS |" in (tmp_path / "table.md").read_text()
    assert (tmp_path / "ap_vs_training_time.png").is_file()

