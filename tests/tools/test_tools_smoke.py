"""Smoke tests of the tools in tools/: each runs end to end on a tiny problem and
writes what it promises (the `make demo` job and the detector comparison), and the detector
comparison's reading of a run's metrics.json."""

import json
import math
import os
import sys

import pytest
from detectron2.config import LazyConfig

from atss.engine import device
from tests.atss_testing import ROOT, load_script, run_script

compare_detectors = load_script("tools/compare_detectors.py")


def _config_yaml(folder):
    """The config.yaml a run saved (Detectron2's LazyConfig.save format)."""
    return LazyConfig.load(os.path.join(folder, "config.yaml"))


@pytest.mark.slow
def test_make_demo_job_trains_evaluates_and_draws(tmp_path, capsys, monkeypatch):
    """tools/train_treecrowns_demo.py (what `make demo` runs) with its real config, shortened
    to 4 iterations and evaluated on the 2 small cross-site images: it trains with
    train.max_iter=4 and the config's own schedule otherwise (which Detectron2 rescales:
    tests/engine/test_train_loop.py), in bf16 on a CPU with native bf16 (the precision switch
    on unless told otherwise), evaluates, writes the PNG and demo_results.json, and prints the
    AP line. Catches a broken import or argument path, a missing output, and a demo left in
    fp32 where the CPU has bf16."""
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
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
    assert cfg.train.amp.enabled and cfg.train.device == "cpu"
    assert list(cfg.lr_multiplier.scheduler.milestones) == [800, 1000]
    assert (out / "model_final.pth").is_file() and (out / "val_detections_vs_gt.png").is_file()
    summary = json.loads((out / "demo_results.json").read_text())
    assert summary["bbox"] == pytest.approx(results["bbox"], nan_ok=True)
    assert math.isfinite(summary["bbox"]["AP"]) and summary["s_per_iter"] > 0
    assert isinstance(summary["drawn_detections"], int)
    assert summary["precision"] == "torch.bfloat16"
    printed = capsys.readouterr().out
    assert "==== ATSS tree-crown demo ====" in printed and "AP=" in printed


@pytest.mark.slow
def test_compare_detectors_tiny_train_run_writes_table_and_plot(tmp_path, monkeypatch):
    """tools/compare_detectors.py train for one detector, one seed, the small cross-site split,
    4 iterations: the train_net.py command it runs (here in this process) gets
    train.max_iter=4 and the trailing overrides, and the table, the per-run JSON (read from
    metrics.json) and the plot are written."""

    def run_in_this_process(cmd, check, **kwargs):
        assert cmd[:2] == [sys.executable, os.path.join(ROOT, "train_net.py")] and check
        assert run_script("train_net.py", *cmd[2:]) == 0

    monkeypatch.setattr(compare_detectors.subprocess, "run", run_in_this_process)
    argv = [
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
        "train.log_period=1",
        "model.test_score_thresh=0.001",  # detections from a barely trained model
    ]
    compare_detectors.main(argv)
    run_dir = tmp_path / "xsite" / "ATSS" / "seed0"
    cfg = _config_yaml(run_dir)
    assert cfg.train.max_iter == 4 and cfg.train.log_period == 1
    assert list(cfg.lr_multiplier.scheduler.milestones) == [800, 1000]
    (row,) = json.loads((tmp_path / "train_runs.json").read_text())
    metrics = compare_detectors.read_metrics(str(run_dir / "metrics.json"))
    logged = [r for r in metrics if "bbox/AP" in r][-1]
    assert row["AP"] == logged["bbox/AP"] and math.isfinite(row["AP"])
    assert row["iterations"] == 4 and row["train_s"] > 0
    assert "| xsite | ATSS |" in (tmp_path / "table.md").read_text()
    assert (tmp_path / "ap_vs_training_time.png").is_file()


def _write_metrics(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + "\n")


def test_training_summary_adds_iteration_times_and_takes_the_last_evaluation(tmp_path):
    """compare_detectors' summary of a metrics.json: training seconds = sum of logged ``time``
    x the iterations each log covers (hand computed: 0.5 * 20 + 1.0 * 20 + 2.0 * 10 = 50 s over
    50 iterations); the AP curve is sampled at each evaluation; the final AP is the last
    evaluation's. Catches counting each log once (3.5 s) or taking the first evaluation."""
    path = tmp_path / "metrics.json"
    _write_metrics(
        path,
        [
            {"iteration": 19, "time": 0.5},
            {"iteration": 39, "time": 1.0},
            {"iteration": 39, "bbox/AP": 10.0, "bbox/AP50": 30.0, "bbox/AP75": 5.0},
            {"iteration": 49, "time": 2.0},
            {"iteration": 49, "bbox/AP": 12.0, "bbox/AP50": 33.0, "bbox/AP75": 6.0},
        ],
    )
    records = compare_detectors.read_metrics(str(path))
    summary = compare_detectors.summarize_training(records)
    assert summary["train_s"] == pytest.approx(50.0)
    assert summary["iterations"] == 50
    assert summary["curve"] == [(30.0, 10.0), (50.0, 12.0)]
    assert (summary["AP"], summary["AP50"], summary["AP75"]) == (12.0, 33.0, 6.0)
    median = load_script("tools/train_treecrowns_demo.py").median_iteration_time
    assert median(str(path)) == 1.0
    with pytest.raises(ValueError, match="no evaluation"):
        compare_detectors.summarize_training(records[:2])
    # A run shorter than Detectron2's first timing log: a clear error, not a division by zero.
    with pytest.raises(ValueError, match="no iteration time.*train.log_period=1"):
        compare_detectors.summarize_training([records[2]])
