"""tools/benchmark.py and atss.utils.benchmark: every task runs, timings and units are right."""

import json
import subprocess
import sys
import time

import pytest
import torch
from detectron2.config import LazyConfig

from atss.utils import benchmark
from atss.utils.benchmark import (
    configure,
    dense_forward_flops,
    peak_rss_mib,
    summarize,
    time_iterations,
)
from tests.atss_testing import load_script, make_inputs, tiny_model

_tool = load_script("tools/benchmark.py")
run_benchmark = _tool.run_benchmark

CONFIG = "configs/Shapes/atss_tiny_shapes.py"
SIZE = (96, 128)


def _tiny_cfg(batch=2):
    cfg = LazyConfig.load(CONFIG)
    cfg.dataloader.train.num_workers = 0
    return configure(cfg, size=SIZE, batch=batch)


def test_time_iterations_times_exactly_the_iterations_after_warmup():
    """
    Warm-up calls come first and are not timed; each timed duration covers its call. Fails if
    warm-up iterations are timed, if an iteration is dropped or doubled, or if the clock stops
    before the step returns.
    """
    calls = []

    def step(i):
        calls.append(i)
        time.sleep(0.03 if i >= 2 else 0.0)

    seconds = time_iterations(step, iters=3, warmup=2, device="cpu")
    assert calls == [0, 1, 2, 3, 4]
    assert len(seconds) == 3 and min(seconds) >= 0.03


def test_summary_is_the_median_and_its_spread():
    """Median of an odd list and images/s at the median; fails if the mean or min is used."""
    stats = summarize([0.4, 0.1, 0.2, 1.3, 0.3], images_per_iter=4)
    assert stats["s_per_iter_median"] == 0.3
    assert (stats["s_per_iter_min"], stats["s_per_iter_max"]) == (0.1, 1.3)
    assert stats["images_per_s"] == pytest.approx(4 / 0.3)


def test_peak_rss_is_in_mebibytes(monkeypatch):
    """The peak is reported in MiB: about at least this process's current resident size (VmRSS
    from /proc, in kB), and exactly 256 for a ru_maxrss of 262144 KiB (Linux's unit). Fails if
    ru_maxrss is read as bytes (1024x too small) or as MiB (1024x too large). (A fresh process
    cannot be used to watch the peak grow: Linux hands a child its parent's ru_maxrss.)"""
    with open("/proc/self/status") as f:
        vm_rss_kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    assert peak_rss_mib() >= 0.9 * vm_rss_kib / 1024  # the kernel's counters lag a little

    class Usage:
        ru_maxrss = 256 * 1024

    monkeypatch.setattr(benchmark.resource, "getrusage", lambda who: Usage)
    assert peak_rss_mib() == 256


def test_forward_flops_count_every_image_of_the_batch():
    """The FLOP count of a 2-image batch is twice that of one image (same size); fails if only
    the first image, or the unpadded tensor of one image, is counted."""
    model = tiny_model(channels=64).eval()
    one = make_inputs([(128, 160)], [torch.zeros(0, 4)])
    two = make_inputs([(128, 160)] * 2, [torch.zeros(0, 4)] * 2)
    single = dense_forward_flops(model, [{"image": one[0]["image"]}])
    double = dense_forward_flops(model, [{"image": d["image"]} for d in two])
    assert single > 0.1  # ResNet-18 FPN at 128 x 160: ~1 GFLOP
    assert double == pytest.approx(2 * single, rel=1e-9)


def test_runtime_other_than_eager_is_refused_outside_infer():
    """--runtime onnxruntime --task train would silently time the eager model: refused."""
    with pytest.raises(ValueError, match="--task infer"):
        run_benchmark(_tiny_cfg(), "train", runtime="onnxruntime", iters=1)


@pytest.mark.slow
@pytest.mark.parametrize(
    "task,runtime",
    [
        ("data", "eager"),
        ("train", "eager"),
        ("eval", "eager"),
        ("infer", "eager"),
        ("infer", "torchscript"),
        ("infer", "onnxruntime"),
    ],
)
def test_each_task_runs_two_iterations_at_the_requested_size(task, runtime):
    """
    Each task times two iterations of the tiny shapes config; train and infer get inputs of
    exactly --size and --batch images and report a positive FLOP rate. Fails if a task or
    runtime is broken, if --size/--batch are ignored, or if images/s is not batch/median.
    """
    result = run_benchmark(
        _tiny_cfg(batch=2),
        task,
        runtime=runtime,
        iters=2,
        warmup=1,
        peaks=(task == "train"),
        random_weights=True,  # timing only: an untrained model, asked for explicitly
    )
    assert result["iters"] == 2
    assert result["images_per_s"] == pytest.approx(2 / result["s_per_iter_median"])
    assert result["peak_rss_mib"] > 100 and result["cuda_peak_mib"] is None
    assert result["machine"]["cpu"] and result["settings"]["runtime"] == runtime
    if task in ("train", "infer"):
        assert result["input_shapes"] == [(3, *SIZE)] * 2
        assert result["gflop_forward"] > 0 and result["achieved_gflops"] > 0
    if task == "train":
        assert result["gflop_step"] == pytest.approx(3 * result["gflop_forward"])
        assert (
            0
            < result["fraction_of_conv_peak"]
            == pytest.approx(result["achieved_gflops"] / result["conv3x3_peak_gflops"])
        )


@pytest.mark.slow
def test_script_prints_the_machine_and_writes_json(tmp_path):
    """The thin script parses sizes, batch, threads and overrides and reports them."""
    out = tmp_path / "r.json"
    cmd = [
        sys.executable,
        "tools/benchmark.py",
        "--config-file",
        CONFIG,
        "--task",
        "infer",
        "--size",
        "64",
        "96",
        "--batch",
        "1",
        "--threads",
        "1",
        "--iters",
        "2",
        "--no-peaks",
        "--json",
        str(out),
        "--random-weights",
        "model.test_score_thresh=0.5",
    ]
    run = subprocess.run(cmd, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "cpu:" in run.stdout and "s_per_iter_median" in run.stdout
    result = json.loads(out.read_text())
    assert result["input_shapes"] == [[3, 64, 96]]
    assert result["settings"]["overrides"] == ["model.test_score_thresh=0.5"]
    assert result["machine"]["torch_threads"] == 1


def test_script_runs_the_custom_config_with_the_readmes_dataset_overrides(tmp_path):
    """``tools/benchmark.py`` on ``configs/Custom`` with ``dataset.*=`` overrides (the README's
    own-data form) times the data task on that folder: the datasets those keys name are
    registered by load_config, as for train_net.py (it once stopped with "dataset
    'custom_train' is not registered")."""
    from tests.atss_testing import write_coco_example

    paths = write_coco_example(str(tmp_path / "data"), 4, 2, size=(64, 96))
    cli = load_script("tools/benchmark.py")
    result = cli.main(
        ["--config-file", "configs/Custom/atss_MNV2_FPN_coco_json.py", "--task", "data",
         "--iters", "1", "--warmup", "0", "--batch", "2", "--no-peaks",
         f"dataset.train.json_file={paths['train_json']}",
         f"dataset.train.image_root={paths['image_root']}",
         "dataloader.train.num_workers=0"]
    )  # fmt: skip
    assert result["settings"]["task"] == "data" and result["settings"]["train_batch"] == 2
    assert result["s_per_iter_median"] > 0
