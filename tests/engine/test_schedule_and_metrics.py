"""The one schedule-shortening rule (atss.engine.schedule) and the metrics.json reader
(atss.engine.metrics) that the demo job and tools/compare_detectors.py share."""

import json

import pytest
from detectron2.config import LazyConfig

from atss.engine import scale_milestones, shortened_schedule_overrides
from atss.engine.metrics import median_iteration_time, read_metrics, summarize_training

TREECROWNS = "configs/TreeCrowns/atss_MNV2_FPN_treecrowns.py"


def test_full_length_gives_back_the_configs_own_lr_steps():
    """Shortened to its own length (1100), the tree-crown schedule keeps its steps 800/1000,
    as the config says. Catches a rule that rescales by a fixed fraction instead of the
    config's steps (the demo job's former ``n * 11 // 15``, ``n * 9 // 10`` gave 806/990)."""
    cfg = LazyConfig.load(TREECROWNS)
    assert (cfg.train.max_iter, list(cfg.lr_multiplier.scheduler.milestones)) == (1100, [800, 1000])
    shortened = LazyConfig.apply_overrides(cfg, shortened_schedule_overrides(cfg, 1100))
    assert list(shortened.lr_multiplier.scheduler.milestones) == [800, 1000]
    assert shortened.train.max_iter == shortened.lr_multiplier.scheduler.num_updates == 1100


def test_shorter_schedules_scale_the_steps_proportionally_rounding_down():
    """floor(step * n / 1100), hand-computed: 500 -> 363.6, 454.5 -> [363, 454] (the steps of
    the README's 500-iteration comparison); 60 -> 43.6, 54.5 -> [43, 54]; 11 -> [8, 10].
    Catches rounding to nearest (364, 455) and float truncation errors."""
    for n, steps in [(500, [363, 454]), (60, [43, 54]), (11, [8, 10])]:
        cfg = LazyConfig.load(TREECROWNS)  # apply_overrides changes the config in place
        overrides = shortened_schedule_overrides(cfg, n)
        shortened = LazyConfig.apply_overrides(LazyConfig.load(TREECROWNS), overrides)
        assert list(shortened.lr_multiplier.scheduler.milestones) == steps, n
        assert shortened.train.max_iter == shortened.lr_multiplier.scheduler.num_updates == n
        # The warmup is a fraction of the schedule: unchanged by the overrides.
        assert shortened.lr_multiplier.warmup_length == cfg.lr_multiplier.warmup_length
    assert scale_milestones([3, 7], 10, 5) == [1, 3]
    with pytest.raises(ValueError, match="positive"):
        scale_milestones([3], 0, 5)


def test_a_scheduler_without_milestones_or_too_short_a_run_is_refused_naming_the_key():
    """Two iterations would scale the steps 800/1000 to [1, 1], which Detectron2's scheduler
    rejects with a message that names neither: the rule refuses it, naming the config key."""
    cfg = LazyConfig.load(TREECROWNS)
    with pytest.raises(
        ValueError, match=r"max_iter=2 is too short.*scheduler.milestones.*\[1, 1\]"
    ):
        shortened_schedule_overrides(cfg, 2)
    assert shortened_schedule_overrides(cfg, 4)[-1] == "lr_multiplier.scheduler.milestones=[2,3]"
    del cfg.lr_multiplier.scheduler.milestones
    with pytest.raises(ValueError, match="lr_multiplier.scheduler has no 'milestones'"):
        shortened_schedule_overrides(cfg, 100)


def _write_metrics(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + "\n")


def test_training_summary_adds_iteration_times_and_takes_the_last_evaluation(tmp_path):
    """Training seconds = sum of logged ``time`` x the iterations each log covers (hand
    computed: 0.5 * 20 + 1.0 * 20 + 2.0 * 10 = 50 s over 50 iterations); the AP curve is
    sampled at each evaluation; the final AP is the last evaluation's. Catches counting each
    log once (3.5 s) or taking the first evaluation."""
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
    records = read_metrics(str(path))
    summary = summarize_training(records)
    assert summary["train_s"] == pytest.approx(50.0)
    assert summary["iterations"] == 50
    assert summary["curve"] == [(30.0, 10.0), (50.0, 12.0)]
    assert (summary["AP"], summary["AP50"], summary["AP75"]) == (12.0, 33.0, 6.0)
    assert median_iteration_time(records) == 1.0
    assert median_iteration_time([]) is None and read_metrics(str(tmp_path / "none")) == []
    with pytest.raises(ValueError, match="no evaluation"):
        summarize_training(records[:2])
