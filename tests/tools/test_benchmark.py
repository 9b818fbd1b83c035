"""tools/benchmark.py: every task and runtime runs, timings, units and the matcher's memory."""

import json
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from detectron2.config import LazyConfig

from tests.atss_testing import load_script, make_inputs, tiny_model

benchmark = load_script("tools/benchmark.py")

CONFIG = "configs/Shapes/atss_tiny_shapes.py"
SIZE = (96, 128)


def _tiny_cfg(batch=2):
    cfg = LazyConfig.load(CONFIG)
    cfg.dataloader.train.num_workers = 0
    return benchmark.configure(cfg, size=SIZE, batch=batch)


def test_round_robin_alternates_the_steps_and_times_only_after_warmup():
    """
    Within each iteration every step runs once, in turn (a0 b0 a1 b1 ...), so that they share
    the machine's load; warm-up iterations come first and are not timed; each duration covers
    its call. Fails if one step is timed to the end before the other, if warm-up iterations
    are timed, if an iteration is dropped or doubled, or if the clock stops before the step
    returns.
    """
    calls = []

    def step(name):
        def run(i):
            calls.append(f"{name}{i}")
            time.sleep(0.03 if i >= 1 else 0.0)

        return run

    seconds = benchmark.time_round_robin({"a": step("a"), "b": step("b")}, 2, 1, "cpu")
    assert calls == ["a0", "b0", "a1", "b1", "a2", "b2"]
    assert [len(s) for s in seconds.values()] == [2, 2]
    assert min(min(s) for s in seconds.values()) >= 0.03


def test_summary_is_the_median_and_its_spread():
    """Median of an odd list and images/s at the median; fails if the mean or min is used."""
    stats = benchmark.summarize([0.4, 0.1, 0.2, 1.3, 0.3], images_per_iter=4)
    assert stats["s_per_iter_median"] == 0.3
    assert (stats["s_per_iter_min"], stats["s_per_iter_max"]) == (0.1, 1.3)
    assert stats["images_per_s"] == pytest.approx(4 / 0.3)


@pytest.mark.slow  # a fresh process measures its peak memory
def test_peak_rss_grows_by_a_touched_allocation_in_mebibytes():
    """A fresh process that fills 256 MiB sees its peak grow by about 256: fails if the peak is
    read in KiB or bytes (1024x off) or does not include the allocation."""
    code = textwrap.dedent("""
        import runpy, sys, torch
        peak_rss_mib = runpy.run_path(sys.argv[1])["peak_rss_mib"]
        before = peak_rss_mib()
        x = torch.ones(256 * 2**20 // 4)
        print(peak_rss_mib() - before)
        """)
    run = subprocess.run(
        [sys.executable, "-c", code, "tools/benchmark.py"], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert 240 < float(run.stdout.split()[-1]) < 300, run.stdout


def test_forward_flops_count_every_image_of_the_batch():
    """The FLOP count of a 2-image batch is twice that of one image (same size); fails if only
    the first image, or the unpadded tensor of one image, is counted."""
    model = tiny_model(channels=64).eval()
    one = make_inputs([(128, 160)], [torch.zeros(0, 4)])
    two = make_inputs([(128, 160)] * 2, [torch.zeros(0, 4)] * 2)
    single = benchmark.dense_forward_flops(model, [{"image": one[0]["image"]}])
    double = benchmark.dense_forward_flops(model, [{"image": d["image"]} for d in two])
    assert single > 0.1  # ResNet-18 FPN at 128 x 160: ~1 GFLOP
    assert double == pytest.approx(2 * single, rel=1e-9)


def test_runtimes_are_refused_where_they_would_be_ignored():
    """--runtime onnxruntime --task train would silently time the eager model, and tiles run
    on demo.py's runtimes only: both refused before any model is built."""
    with pytest.raises(ValueError, match="--task infer"):
        benchmark.run_benchmark(_tiny_cfg(), "train", runtimes=["onnxruntime"], iters=1)
    tile = dict(size=64, overlap=0, image_size=128)
    with pytest.raises(ValueError, match="eager and onnxruntime"):
        benchmark.run_benchmark(_tiny_cfg(), "infer", runtimes=["torchscript"], tile=tile)


@pytest.mark.slow
@pytest.mark.parametrize(
    "task,runtimes",
    [
        ("data", ["eager"]),
        ("train", ["eager"]),
        ("eval", ["eager"]),
        ("infer", ["eager", "torchscript", "onnxruntime"]),
    ],
)
def test_each_task_and_runtime_runs_two_iterations_at_the_requested_size(task, runtimes):
    """
    Each task times two iterations of the tiny shapes config, the three inference runtimes in
    turns (the eager one in fp32 and bf16, ONNX Runtime's export once, in fp32); train and
    infer get inputs of exactly --size and --batch images and report a positive FLOP rate.
    Fails if a task or runtime is broken, if --size/--batch are ignored, if images/s is not
    batch/median, if a runtime's ratio is not against the first or if a precision multiplies
    the exported runtimes.
    """
    precisions = ["fp32", "bf16"] if task == "infer" else None
    result = benchmark.run_benchmark(
        _tiny_cfg(batch=2),
        task,
        runtimes=runtimes,
        iters=2,
        warmup=1,
        peaks=(task == "train"),
        random_weights=True,  # timing only: an untrained model, asked for explicitly
        precisions=precisions,
    )
    names = runtimes[:1] + ["eager-bf16"] * bool(precisions) + runtimes[1:]
    assert list(result["runs"]) == names and result["settings"]["runtimes"] == runtimes
    assert result["peak_rss_mib"] > 100 and result["cuda_peak_mib"] is None
    assert result["machine"]["cpu"]
    for run in result["runs"].values():
        assert run["iters"] == 2
        assert run["images_per_s"] == pytest.approx(2 / run["s_per_iter_median"])
    if task in ("train", "infer"):
        assert result["input_shapes"] == [(3, *SIZE)] * 2
        assert all(run["achieved_gflops"] > 0 for run in result["runs"].values())
    if task == "train":
        (run,) = result["runs"].values()
        assert result["gflop_step"] == pytest.approx(3 * result["gflop_forward"])
        peak = result["conv3x3_peak_gflops"]
        assert 0 < run["fraction_of_conv_peak"] == pytest.approx(run["achieved_gflops"] / peak)
    if len(runtimes) > 1:
        assert result["runs"]["eager"]["ratio_to_eager"] == 1.0
        assert result["runs"]["onnxruntime"]["ratio_to_eager"] > 0


@pytest.mark.slow
def test_tiled_inference_times_each_runtime_on_a_mosaic():
    """--task infer --tile-size on both tiled runtimes: Mpx/s is the mosaic's megapixels over
    the median. Fails if the tiled path is broken or times another image size."""
    tile = dict(size=128, overlap=16, image_size=384)
    result = benchmark.run_benchmark(
        _tiny_cfg(batch=1), "infer", ["eager", "onnxruntime"], 1, 1, random_weights=True, tile=tile
    )
    assert result["megapixels"] == pytest.approx(384**2 / 1e6)
    for run in result["runs"].values():
        assert run["megapixels_per_s"] == pytest.approx(
            result["megapixels"] / run["s_per_iter_median"]
        )


@pytest.mark.slow
def test_script_prints_the_machine_and_writes_json(tmp_path):
    """The thin script parses sizes, batch, threads and overrides and reports them."""
    out = tmp_path / "r.json"
    cmd = [sys.executable, "tools/benchmark.py", "--config-file", CONFIG, "--task", "infer",
           "--size", "64", "96", "--batch", "1", "--threads", "1", "--iters", "2", "--no-peaks",
           "--json", str(out), "--random-weights", "model.test_score_thresh=0.5"]  # fmt: skip
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
    result = benchmark.main(
        ["--config-file", "configs/Custom/atss_MNV2_FPN_coco_json.py", "--task", "data",
         "--iters", "1", "--warmup", "0", "--batch", "2", "--no-peaks",
         f"dataset.train.json_file={paths['train_json']}",
         f"dataset.train.image_root={paths['image_root']}",
         "dataloader.train.num_workers=0"]
    )  # fmt: skip
    assert result["settings"]["task"] == "data" and result["settings"]["train_batch"] == 2
    assert result["runs"]["eager"]["s_per_iter_median"] > 0


@pytest.mark.slow
def test_matcher_task_times_both_forms_and_sees_the_dense_matrix(tmp_path, capsys):
    """--task matcher at 1,000 GTs: one table row, equal assignments ("yes"), and a memory
    column that sees the dense form's A x G float32 matrices (22,400 x 1,000 x 4 B = 85 MiB
    each) and not the sparse one's, measured in children of a process whose own peak is
    higher (2 GiB). Fails if the peak is read as ``ru_maxrss``, which a child inherits from its
    parent (the growth reads 0), or if the two forms assign differently."""
    torch.ones(2**29)  # 2 GiB, touched and freed: this process's peak exceeds the children's
    out = tmp_path / "m.json"
    benchmark.main(["--task", "matcher", "--gts", "1000", "--iters", "1", "--threads", "1",
                    "--json", str(out)])  # fmt: skip
    rows = [line for line in capsys.readouterr().out.splitlines() if "|" in line]
    assert rows[-1].split("|")[0].strip() == "1000" and "yes" in rows[-1].split("|")[-1]
    (row,) = json.loads(out.read_text())["rows"]
    assert row["dense"]["extra_mib"] > 85 > row["sparse"]["extra_mib"] > 0


@pytest.mark.slow
@pytest.mark.parametrize(
    "task, runtimes, tile",
    [
        ("train", ["eager"], None),
        ("infer", ["eager"], None),  # next to the exported runtimes: the test above
        ("infer", ["eager"], dict(size=96, overlap=16, image_size=192)),
    ],
)
def test_precisions_are_timed_in_turns_with_their_ratio_to_the_first(
    monkeypatch, task, runtimes, tile
):
    """--precision fp32 bf16 times the eager network in both in one run, each variant
    reporting its ratio to the first, in training, inference and tiled inference. Fails if a
    precision is ignored (the network would run fp32 twice: the dtypes the head gives are
    recorded) or a variant lacks its ratio."""
    from atss.modeling import ATSS

    seen, boundary = set(), ATSS.fp32_predictions
    monkeypatch.setattr(
        ATSS,
        "fp32_predictions",
        lambda self, p: seen.update(x.dtype for level in p for x in level) or boundary(self, p),
    )
    result = benchmark.run_benchmark(
        _tiny_cfg(batch=1),
        task,
        runtimes,
        iters=1,
        warmup=0,
        peaks=False,
        random_weights=True,
        tile=tile,
        precisions=["fp32", "bf16"],
    )
    names = ["eager", "eager-bf16", *runtimes[1:]]
    assert list(result["runs"]) == names and result["settings"]["precisions"] == ["fp32", "bf16"]
    assert seen == {torch.float32, torch.bfloat16}
    assert all(result["runs"][name]["ratio_to_eager"] > 0 for name in names)


def test_precisions_are_refused_where_they_would_be_ignored_or_cannot_run():
    """--precision with --task data (no network) and fp16 on the CPU (CUDA's gradient scaler):
    refused before any model is built."""
    with pytest.raises(ValueError, match="not data"):
        benchmark.run_benchmark(_tiny_cfg(), "data", precisions=["bf16"], iters=1)
    with pytest.raises(ValueError, match="fp16 is for CUDA"):
        benchmark.run_benchmark(_tiny_cfg(), "infer", precisions=["fp32", "fp16"], iters=1)
