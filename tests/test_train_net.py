"""train_net.py end to end: what a training run leaves (the example run of tests/conftest.py),
--eval-only with test-time augmentation, interrupt + --resume (in this process and with a real
SIGKILL), resuming under another schedule or config, the all-reduced loss normalisers, atomic
checkpoints, a non-finite loss, and the evaluation during training (on the generated shapes
data with configs/Shapes/atss_tiny_shapes.py)."""

import json
import logging
import math
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.multiprocessing as mp
from detectron2.config import LazyConfig
from detectron2.engine import SimpleTrainer, hooks, launch

import train_net
from atss.data import register_shapes
from atss.engine import AtomicDetectionCheckpointer, resolve_device, train_loop
from atss.engine.cli import run_then_exit_worker
from atss.modeling import ATSS
from atss.modeling.losses import loss_normalizers
from tests.atss_testing import (
    EXAMPLE_CONFIG,
    EXAMPLE_ITERS,
    WARM_TRAIN_NET,
    free_port,
    train_net_args,
)

CONFIG = "configs/Shapes/atss_tiny_shapes.py"
# A 4-image validation set keeps the in-process evaluations short (the 2-process run is spawned
# and sees only train_net's registrations, so it evaluates on the regular 16-image shapes_val).
VAL = register_shapes("shapes_val_4", num_images=4, seed=1)
# Deterministic: seeded, in-process loading, batches of consecutive sampler indices (no aspect
# grouping), a low score threshold so that the barely trained model has detections to score.
COMMON = [
    "train.seed=0",
    "dataloader.train.num_workers=0",
    "dataloader.train.aspect_ratio_grouping=False",
    "model.test_score_thresh=0.001",
    "train.log_period=1",
]
MAX_ITER = 4
# Test-time augmentation at small scales (the shapes images are 128-256 px, the example's 64-96).
TTA = [
    "test.aug.enabled=True",
    "test.aug.test_size=128",
    "test.aug.test_max_size=256",
    "test.aug.min_sizes=[96,160]",
    "test.aug.max_size=256",
    "test.aug.size_ranges=null",
]


def run(output_dir, *opts, eval_only=False, resume=False, num_gpus=1):
    argv = ["--config-file", CONFIG]
    argv += ["--eval-only"] if eval_only else []
    argv += ["--resume"] if resume else []
    argv += ["--num-gpus", str(num_gpus), *COMMON, f"train.output_dir={output_dir}"]
    if num_gpus == 1:
        argv.append(f"dataloader.test.dataset.names={VAL}")
    argv += opts
    return train_net.default_argument_parser().parse_args(argv)


def final_eval_metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        lines = [json.loads(x) for x in f if x.strip()]
    return [x for x in lines if "bbox/AP" in x][-1]


def model_state(path):
    return torch.load(path, map_location="cpu")["model"]


def _copy(run, folder, *names):
    for name in names:
        shutil.copy(os.path.join(run.folder, name), folder / name)


@pytest.mark.slow
def test_trains_checkpoints_and_evaluates(example_run):
    names = [f"model_000000{i}.pth" for i in (1, 3, 5, 7)] + ["model_final.pth", "config.yaml"]
    for name in names:
        assert os.path.exists(os.path.join(example_run.folder, name)), name
    ckpt = torch.load(example_run.weights, map_location="cpu")
    assert ckpt["iteration"] == EXAMPLE_ITERS - 1 and {"model", "trainer", "rng"} <= set(ckpt)
    assert ckpt["config_file"] == EXAMPLE_CONFIG  # what --resume checks (check_resume)
    assert "optimizer" in ckpt["trainer"] and "hooks" in ckpt["trainer"]
    metrics = final_eval_metrics(example_run.folder)
    for k in ["AP", "AP50", "AP75"]:
        assert math.isfinite(metrics[f"bbox/{k}"])
    with open(os.path.join(example_run.folder, "last_checkpoint")) as f:
        assert f.read() == "model_final.pth"


@pytest.mark.slow
def test_every_checkpoint_the_trainer_writes_loads_with_weights_only(example_run):
    """torch >= 2.6 loads with weights_only=True by default: what the trainer writes (model,
    optimizer, scheduler, RNG state) holds only tensors and plain Python values. Catches an
    ndarray or any other pickled object in a checkpoint (NumPy's RNG state as it comes)."""
    names = sorted(f for f in os.listdir(example_run.folder) if f.endswith(".pth"))
    assert names == [f"model_000000{i}.pth" for i in (1, 3, 5, 7)] + ["model_final.pth"]
    for name in names:
        path = os.path.join(example_run.folder, name)
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        assert isinstance(ckpt["rng"]["numpy"]["keys"], torch.Tensor), name


def test_rng_state_round_trips_through_a_weights_only_load(tmp_path):
    """The RNG states saved and loaded again (through weights_only) give the same next draws of
    Python's random, NumPy's global generator (including a cached Gaussian) and torch."""
    import random

    import numpy as np

    from atss.engine import RNGState

    np.random.seed(3)
    np.random.standard_normal()  # leaves a cached Gaussian (has_gauss=1)
    random.seed(4)
    torch.manual_seed(5)
    torch.save({"rng": RNGState().state_dict()}, tmp_path / "rng.pth")
    expected = (random.random(), np.random.standard_normal(2).tolist(), torch.rand(2))
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    RNGState().load_state_dict(torch.load(tmp_path / "rng.pth", weights_only=True)["rng"])
    got = (random.random(), np.random.standard_normal(2).tolist(), torch.rand(2))
    assert got[:2] == expected[:2]
    torch.testing.assert_close(got[2], expected[2], rtol=0, atol=0)


@pytest.mark.slow
def test_eval_only_with_test_time_augmentation(example_run, tmp_path):
    """--eval-only with test.aug.enabled=True evaluates the TTA-wrapped model (small scales)."""
    opts = [f"train.init_checkpoint={example_run.weights}", f"train.output_dir={tmp_path}"]
    args = train_net_args(EXAMPLE_CONFIG, *example_run.training(*opts, *TTA), eval_only=True)
    results = train_net.main(args)
    assert set(results["bbox"]) >= {"AP", "AP50", "AP75"}
    assert all(math.isnan(v) or 0 <= v <= 100 for v in results["bbox"].values())


class _Killed(Exception):
    pass


class _KilledAtIter2(SimpleTrainer):
    """Dies at the start of iteration 2 (after the iteration-1 checkpoint), like a kill -9
    between steps: nothing of iteration 2 is applied."""

    def run_step(self):
        if self.iter == 2:
            raise _Killed()
        super().run_step()


@pytest.mark.slow
def test_interrupt_and_resume_reaches_the_same_iteration_and_weights(
    example_run, tmp_path, monkeypatch
):
    opts = example_run.training(f"train.output_dir={tmp_path}")
    with monkeypatch.context() as m:
        m.setattr(train_loop, "SimpleTrainer", _KilledAtIter2)
        with pytest.raises(_Killed):
            train_net.main(train_net_args(EXAMPLE_CONFIG, *opts))
    assert not os.path.exists(tmp_path / "model_final.pth")
    # Same state as the uninterrupted run at its iteration-1 checkpoint.
    a = model_state(os.path.join(example_run.folder, "model_0000001.pth"))
    b = model_state(tmp_path / "model_0000001.pth")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)

    train_net.main(train_net_args(EXAMPLE_CONFIG, *opts, resume=True))
    resumed = torch.load(tmp_path / "model_final.pth", map_location="cpu")
    assert resumed["iteration"] == EXAMPLE_ITERS - 1
    ref = model_state(example_run.weights)
    # Same data (ResumableTrainingSampler), same augmentation draws (RNG states in the
    # checkpoint), same optimizer/scheduler state. The tolerance allows for reductions whose
    # order is not deterministic (multi-threaded oneDNN/OpenMP), far below one SGD step.
    for k in ref:
        torch.testing.assert_close(resumed["model"][k], ref[k], rtol=1e-5, atol=1e-6, msg=k)
    assert final_eval_metrics(tmp_path)["bbox/AP"] == pytest.approx(
        final_eval_metrics(example_run.folder)["bbox/AP"], abs=1e-3
    )


@pytest.mark.slow
def test_a_checkpoint_with_the_legacy_numpy_rng_state_still_resumes(example_run, tmp_path):
    """Checkpoints written before RNGState stored tensors hold np.random.get_state() as it comes
    (a tuple with a uint32 ndarray). Resuming from one reaches the uninterrupted run's weights:
    on torch >= 2.6 (weights_only loads) through the checkpointer's allowance of exactly those
    NumPy globals, on older torch as before. Rebuilt here from the run's iteration-1 checkpoint
    with the NumPy state put back in the old form."""
    import numpy as np

    ckpt = torch.load(os.path.join(example_run.folder, "model_0000001.pth"), map_location="cpu")
    state = ckpt["rng"]["numpy"]
    ckpt["rng"]["numpy"] = (
        state["bit_generator"],
        state["keys"].numpy().astype(np.uint32),
        state["pos"],
        state["has_gauss"],
        state["cached_gaussian"],
    )
    torch.save(ckpt, tmp_path / "model_0000001.pth")
    (tmp_path / "last_checkpoint").write_text("model_0000001.pth")
    opts = example_run.training(f"train.output_dir={tmp_path}")
    train_net.main(train_net_args(EXAMPLE_CONFIG, *opts, resume=True))
    resumed = model_state(tmp_path / "model_final.pth")
    ref = model_state(example_run.weights)
    for k in ref:  # tolerance: see the interrupt-and-resume test
        torch.testing.assert_close(resumed[k], ref[k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.slow
def test_resume_under_another_schedule_logs_what_the_lr_does(example_run, tmp_path):
    """The finished 8-iteration run resumed with train.max_iter=9 and its LR steps moved from
    2000 and 2667 to 2900 and 2950 (of 3000 updates): at iteration 8 the old schedule was past both
    steps (LR 0.0025 x 0.01), the new one is past none (0.0025). One warning line names both
    changes and the LR; the trainer then trains iteration 8 at that LR (metrics.json). Fails
    if the checkpoint does not record its schedule, if the train loop does not compare it, or
    if the line misstates the LR."""
    _copy(example_run, tmp_path, "last_checkpoint", "model_final.pth")
    logger = logging.getLogger("detectron2")  # does not propagate (Detectron2's setup_logger)
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        opts = ["train.max_iter=9", "lr_multiplier.scheduler.milestones=[2900,2950]"]
        opts = example_run.training(*opts, f"train.output_dir={tmp_path}")
        train_net.main(train_net_args(EXAMPLE_CONFIG, *opts, resume=True))
    finally:
        logger.removeHandler(handler)
    lines = [r.getMessage() for r in records if "--resume under another schedule" in r.getMessage()]
    assert lines == [
        "--resume under another schedule than the checkpoint's (train.max_iter 8 -> 9; "
        "lr_multiplier.scheduler.milestones [2000, 2667] -> [2900, 2950]): the LR at iteration 8 "
        "goes from 2.5e-05 to 0.0025"
    ]
    with open(tmp_path / "metrics.json") as f:
        logged = [json.loads(line) for line in f if line.strip()]
    assert [r["lr"] for r in logged if r.get("iteration") == 8] == [pytest.approx(0.0025)]


@pytest.mark.slow
def test_resume_refuses_the_last_checkpoint_of_another_config(example_run, tmp_path):
    """A second config pointed at the first one's folder (both once wrote to ./output) must not
    pick up its checkpoint: --resume stops before anything is loaded or written, naming the
    checkpoint's config and the one given. Fails if the train loop stops recording the config
    in its checkpoints or if main resumes without check_resume (it would go on to load the
    example's weights into the tree-crown model); config.yaml would be rewritten if the check
    ran after default_setup."""
    _copy(example_run, tmp_path, "last_checkpoint", "model_final.pth", "config.yaml")
    saved_yaml = (tmp_path / "config.yaml").read_text()
    other = "configs/TreeCrowns/atss_MNV2_FPN_treecrowns.py"
    args = train_net_args(other, f"train.output_dir={tmp_path}", "train.max_iter=4", resume=True)
    with pytest.raises(ValueError, match="--resume refused") as e:
        train_net.main(args)
    message = str(e.value)
    assert f"config {EXAMPLE_CONFIG}, not under --config-file {other}" in message
    assert str(tmp_path / "model_final.pth") in message
    assert (tmp_path / "config.yaml").read_text() == saved_yaml
    assert sorted(os.listdir(tmp_path)) == ["config.yaml", "last_checkpoint", "model_final.pth"]


def _kill_when(proc, ready, timeout=300):
    """SIGKILL ``proc`` (a ``subprocess.Popen`` or a ``multiprocessing.Process``) as soon as
    ``ready()`` holds; fail if it exits or times out first."""
    alive = proc.is_alive if hasattr(proc, "is_alive") else lambda: proc.poll() is None
    deadline = time.monotonic() + timeout
    while not ready():
        assert alive(), "exited before it could be killed"
        assert time.monotonic() < deadline, "timed out waiting to kill"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    exitcode = proc.wait() if hasattr(proc, "wait") else proc.join() or proc.exitcode
    assert exitcode == -signal.SIGKILL


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_ends_with_the_uninterrupted_weights(example_run, tmp_path):
    """A real ``kill -9`` of a train_net.py process right after its first checkpoint (one per
    iteration, so the kill may land in a step or in a save): ``--resume`` continues from the
    last complete checkpoint and ends with the weights of the uninterrupted example run (the
    process warms TorchScript first, as this one did: WARM_TRAIN_NET)."""
    opts = example_run.training("train.checkpointer.period=1", f"train.output_dir={tmp_path}")
    cmd = [sys.executable, "-c", WARM_TRAIN_NET, "--config-file", EXAMPLE_CONFIG, *opts]
    last = tmp_path / "last_checkpoint"
    with open(tmp_path / "killed.log", "w") as log:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        _kill_when(proc, last.exists)
    assert not os.path.exists(tmp_path / "model_final.pth"), "killed too late"
    at_kill = torch.load(tmp_path / last.read_text(), map_location="cpu")["iteration"]
    assert at_kill < EXAMPLE_ITERS - 1

    train_net.main(train_net_args(EXAMPLE_CONFIG, *opts, resume=True))
    log = (tmp_path / "log.txt").read_text()
    assert f"Starting training from iteration {at_kill + 1}" in log
    resumed = torch.load(tmp_path / "model_final.pth", map_location="cpu")
    assert resumed["iteration"] == EXAMPLE_ITERS - 1
    ref = model_state(example_run.weights)
    for k in ref:  # tolerance: see test_interrupt_and_resume_reaches_the_same_iteration_and_weights
        torch.testing.assert_close(resumed["model"][k], ref[k], rtol=1e-5, atol=1e-6, msg=k)


# Forked from this process; Python >= 3.12 warns that torch's threads make fork() risky
# (DeprecationWarning), which the newest-stack check would print.
FORKED = pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")


def _save_forever(folder, marker):
    model = torch.nn.Linear(2048, 2048)  # 16 MB per checkpoint
    ckpt = AtomicDetectionCheckpointer(model, str(folder))
    for i in range(10**9):
        with torch.no_grad():
            model.bias.fill_(i)
        ckpt.save(f"model_{i % 3}", iteration=i)  # new files, then overwriting old ones
        if i == 0:
            marker.touch()


@pytest.mark.slow
@FORKED
def test_sigkill_during_saves_never_leaves_a_corrupt_last_checkpoint(tmp_path):
    """Processes that do nothing but save checkpoints (forked from this one) are killed with
    SIGKILL at varying moments, 6 times and then until a kill has interrupted a write (at most
    24): every time, ``last_checkpoint`` names a complete checkpoint, and every ``.pth`` in the
    folder loads. Partial data only ever sits in hidden temporary files, at most one per target
    (the next save of that target removes older leftovers)."""
    folder = tmp_path / "ckpt"
    partial = 0  # rounds whose kill interrupted a checkpoint write
    for round, delay in enumerate([0.0, 0.013, 0.029, 0.047, 0.071, 0.11] * 4):
        if round >= 6 and partial:
            break
        marker = tmp_path / f"started_{round}"
        proc = multiprocessing.get_context("fork").Process(
            target=_save_forever, args=(folder, marker)
        )
        proc.start()
        seen = []

        def ready():  # `delay` seconds after this process's first complete save
            if not seen and marker.exists():
                seen.append(time.monotonic())
            return bool(seen) and time.monotonic() - seen[0] >= delay

        _kill_when(proc, ready)
        last = torch.load(folder / (folder / "last_checkpoint").read_text())
        assert torch.all(last["model"]["bias"] == last["iteration"])
        for pth in folder.glob("*.pth"):
            ckpt = torch.load(pth)
            assert torch.all(ckpt["model"]["bias"] == ckpt["iteration"]), pth
        leftovers = [p.name.split(".")[1] for p in folder.glob(".*.tmp")]
        assert len(leftovers) == len(set(leftovers)), leftovers
        partial += any(p.stat().st_size > 0 for p in folder.glob(".model_*.tmp"))
    # Saving dominates these processes' time, so kills do land mid-write (else this test would
    # not test what it says).
    assert partial >= 1


def _train_in_two_processes(out, *opts):
    """train_net.main in 2 processes through Detectron2's launch (NCCL where CUDA is available,
    else gloo), 2 iterations: finite losses, final weights and an evaluation."""
    schedule = ["train.max_iter=2", "train.checkpointer.period=2", "train.eval_period=2"]
    args = run(out, *schedule, *opts, num_gpus=2)
    launch(train_net.main, 2, dist_url="auto", args=(args,))
    assert os.path.exists(os.path.join(out, "model_final.pth"))
    _assert_finite_losses_and_ap(out)


def _assert_finite_losses_and_ap(out):
    with open(os.path.join(out, "metrics.json")) as f:
        losses = [
            m["total_loss"] for m in map(json.loads, filter(str.strip, f)) if "total_loss" in m
        ]
    assert losses and all(map(math.isfinite, losses)), losses
    assert math.isfinite(final_eval_metrics(out)["bbox/AP"])


@pytest.mark.slow
@pytest.mark.cuda
def test_two_gpus_with_nccl_and_amp_train_and_evaluate(cuda_device, tmp_path):
    """--num-gpus 2 on 2 GPUs with AMP: launch() picks NCCL. Fails on what only a multi-GPU run
    meets (a tensor left on the CPU in a collective, DDP's device_ids, AMP under DDP)."""
    if cuda_device.type != "cuda" or torch.cuda.device_count() < 2:
        pytest.skip(f"needs 2 CUDA GPUs ({torch.cuda.device_count()} here)")
    _train_in_two_processes(str(tmp_path), "train.device=cuda", "train.amp.enabled=True")


def _network_dtypes(monkeypatch):
    """A list that receives the dtypes of the head's outputs at each forward of an ATSS model,
    training and evaluation alike."""
    seen, boundary = [], ATSS.fp32_predictions

    def spy(self, predictions):
        seen.append({p.dtype for level in predictions for p in level})
        return boundary(self, predictions)

    monkeypatch.setattr(ATSS, "fp32_predictions", spy)
    return seen


def _fp32_weights(path):
    return all(
        v.dtype == torch.float32 for v in model_state(path).values() if v.is_floating_point()
    )


# bf16 on any CPU: without native bf16 the switch alone would run fp32.
BF16 = ["train.amp.enabled=True", "train.amp.precision=bf16"]


@pytest.mark.slow
def test_a_bf16_run_keeps_fp32_checkpoints_and_resumes_and_evaluates_in_any_precision(
    tmp_path, monkeypatch
):
    """train.amp in bf16: training and its evaluation run the network in bf16 and the
    checkpoint holds the fp32 parameters; --resume with the switch off continues it in fp32;
    --eval-only with the switch on evaluates in bf16. Fails if training or evaluation ignores
    the switch, if a checkpoint holds bf16 weights (a model cast to bf16 instead of autocast),
    or if a run cannot resume in another precision."""
    out, seen = str(tmp_path), _network_dtypes(monkeypatch)
    schedule = ["train.checkpointer.period=2", "train.eval_period=2"]
    train_net.main(run(out, "train.max_iter=2", *schedule, *BF16))
    assert len(seen) > 2 and all(dtypes == {torch.bfloat16} for dtypes in seen), seen
    final = os.path.join(out, "model_final.pth")
    assert _fp32_weights(final)

    seen.clear()
    train_net.main(run(out, "train.max_iter=3", *schedule, resume=True))
    assert torch.load(final, map_location="cpu")["iteration"] == 2 and _fp32_weights(final)
    assert seen and all(dtypes == {torch.float32} for dtypes in seen), seen

    seen.clear()
    results = train_net.main(run(out, f"train.init_checkpoint={final}", *BF16, eval_only=True))
    assert seen and all(dtypes == {torch.bfloat16} for dtypes in seen), seen
    assert math.isfinite(results["bbox"]["AP"])


@pytest.mark.slow
@pytest.mark.cuda
def test_amp_trains_and_evaluates_on_the_device(cuda_device, tmp_path, monkeypatch):
    """train.amp.enabled=True on the device through our train loop: fp16 with the gradient
    scaler on CUDA (bf16 where the `cuda` tests run against the CPU), 2 steps with finite
    losses, a periodic and an --eval-only evaluation in the same precision, fp32 checkpoints
    carrying the scaler's state. Fails on what only this path meets: the trainer choice, the
    scaler's state in the checkpoint, the evaluation's autocast on the device."""
    on_cuda = cuda_device.type == "cuda"
    amp = [f"train.device={cuda_device}", *(["train.amp.enabled=True"] if on_cuda else BF16)]
    out, seen = str(tmp_path), _network_dtypes(monkeypatch)
    schedule = ["train.max_iter=2", "train.checkpointer.period=2", "train.eval_period=2"]
    train_net.main(run(out, *schedule, *amp))
    _assert_finite_losses_and_ap(out)
    final = os.path.join(out, "model_final.pth")
    assert _fp32_weights(final)
    trainer_state = torch.load(final, map_location="cpu")["trainer"]
    assert ("grad_scaler" in trainer_state) == on_cuda
    results = train_net.main(run(out, f"train.init_checkpoint={final}", *amp, eval_only=True))
    assert math.isfinite(results["bbox"]["AP"])
    expected = torch.float16 if on_cuda else torch.bfloat16
    assert len(seen) > 2 and all(dtypes == {expected} for dtypes in seen), seen


def test_device_resolution():
    cfg = LazyConfig.load(CONFIG)
    cfg.train.device = "cuda"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(cfg) == expected


CASES = [  # (positives per rank, centerness-target sums per rank, local loss sums)
    ([7, 3], [3.25, 1.5], [2.0, 5.0]),
    ([0, 5], [0.0, 2.0], [1.0, 4.0]),
    ([0, 0], [0.0, 0.0], [0.5, 0.25]),  # no positive anywhere
]


def _normalizer_worker(rank, world, port, out):
    run_then_exit_worker(_normalizers_to_file, rank, world, port, out)  # ends with os._exit(0)


def _normalizers_to_file(rank, world, port, out):
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    results = []
    for pos, ctr, losses in CASES:
        n_pos, s_ctr = loss_normalizers(torch.tensor(pos[rank]), torch.tensor(ctr[rank]))
        results.append((n_pos, s_ctr, losses[rank] / n_pos, losses[rank] / s_ctr))
    torch.save(results, f"{out}.{rank}")


@pytest.mark.slow
@FORKED
def test_all_reduced_normalisers_match_one_process_on_the_same_global_batch(tmp_path):
    """Each of W processes divides its local loss sum by all-reduce-sum(x) / W; DDP then
    averages the gradients over the W processes. So mean_r(L_r / N_r) must equal the one-process
    value (sum_r L_r) / N for the same global batch, and every rank must get the same N_r."""
    world, out = 2, str(tmp_path / "norm")
    mp.start_processes(
        _normalizer_worker, args=(world, free_port(), out), nprocs=world, start_method="fork"
    )
    per_rank = [torch.load(f"{out}.{r}") for r in range(world)]
    for i, (pos, ctr, losses) in enumerate(CASES):
        r0, r1 = per_rank[0][i], per_rank[1][i]
        n_one, s_one = loss_normalizers(torch.tensor(sum(pos)), torch.tensor(sum(ctr)))
        assert r0[0] == r1[0] and r0[1] == r1[1]
        mean_cls, mean_reg = (r0[2] + r1[2]) / world, (r0[3] + r1[3]) / world
        assert torch.isfinite(mean_cls) and torch.isfinite(mean_reg)
        if sum(pos):
            torch.testing.assert_close(r0[0] * world, n_one)
            torch.testing.assert_close(r0[1] * world, s_one)
            torch.testing.assert_close(mean_cls, sum(losses) / n_one)
            torch.testing.assert_close(mean_reg, sum(losses) / s_one)
        else:  # the clamps (N >= 1, S >= eps) keep everything finite
            assert r0[0] == 1.0 and n_one == 1.0


def test_atomic_checkpoint_survives_a_crash_during_save(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 2)
    ckpt = AtomicDetectionCheckpointer(model, str(tmp_path))
    ckpt.save("model_0000000")
    good = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)

    real_save = torch.save

    def crash(obj, f, *a, **k):
        real_save(obj, f, *a, **k)  # bytes reach the (temporary) file ...
        raise OSError("disk full / killed mid-save")  # ... then the write fails

    monkeypatch.setattr(torch, "save", crash)
    for name in ["model_0000000", "model_0000001"]:  # overwrite the good one, or a new one
        with pytest.raises(OSError):
            ckpt.save(name)
    monkeypatch.undo()

    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000000.pth"]
    assert ckpt.get_checkpoint_file().endswith("model_0000000.pth")
    fresh = torch.nn.Linear(3, 2)
    AtomicDetectionCheckpointer(fresh, str(tmp_path)).resume_or_load("", resume=True)
    for k, v in fresh.state_dict().items():
        torch.testing.assert_close(v, good[k])


class _NaNAtIter2(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(2))
        self.calls = 0

    def forward(self, batch):
        self.calls += 1
        loss = (self.w * batch).sum()
        return {"loss": loss * float("nan") if self.calls == 3 else loss}


def test_non_finite_loss_stops_training_and_keeps_the_last_checkpoint(tmp_path):
    model = _NaNAtIter2()
    loader = iter(lambda: torch.ones(2), None)
    trainer = SimpleTrainer(model, loader, torch.optim.SGD(model.parameters(), lr=0.1))
    ckpt = AtomicDetectionCheckpointer(model, str(tmp_path), trainer=trainer)
    trainer.register_hooks([hooks.PeriodicCheckpointer(ckpt, period=1)])
    with pytest.raises(FloatingPointError, match="iteration=2"):
        trainer.train(0, 10)
    last = torch.load(ckpt.get_checkpoint_file())
    assert last["iteration"] == 1
    # The NaN step was not applied: the live weights equal the last checkpoint, all finite.
    torch.testing.assert_close(model.w.detach(), last["model"]["w"])
    assert torch.isfinite(model.w).all()


class _NaNLossAtIter2(SimpleTrainer):
    """The model's losses turn NaN at iteration 2 (as after a divergent step): Detectron2's
    trainer raises FloatingPointError before the optimizer step, and train_net's handler runs."""

    def run_step(self):
        if self.iter != 2:
            return super().run_step()
        poison = self.model.register_forward_hook(
            lambda module, inputs, losses: {k: v * float("nan") for k, v in losses.items()}
        )
        try:
            return super().run_step()
        finally:
            poison.remove()


@pytest.mark.slow
def test_train_net_stops_on_a_non_finite_loss_naming_the_iteration_and_last_checkpoint(
    tmp_path, monkeypatch
):
    """train_net's own non-finite-loss handler (not only Detectron2's check): training stops
    at iteration 2 with an error naming it and the last complete checkpoint (iteration 1),
    which loads with finite weights; nothing later is written. Catches a handler that is
    removed, swallows the error (training would go on to model_final.pth) or names the wrong
    checkpoint."""
    out = str(tmp_path)
    monkeypatch.setattr(train_loop, "SimpleTrainer", _NaNLossAtIter2)
    opts = [f"train.max_iter={MAX_ITER}", "train.checkpointer.period=1", "train.eval_period=0"]
    with pytest.raises(FloatingPointError):
        train_net.main(run(out, *opts))
    last = os.path.join(out, "model_0000001.pth")
    with open(os.path.join(out, "log.txt")) as f:
        log = f.read()
    assert "Training stopped: the loss is not finite at iteration 2" in log
    assert f"The failing step was not applied. Last good checkpoint: {last}." in log
    assert not os.path.exists(os.path.join(out, "model_0000002.pth"))
    assert not os.path.exists(os.path.join(out, "model_final.pth"))
    ckpt = torch.load(last, map_location="cpu")
    assert ckpt["iteration"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


@pytest.mark.slow
def test_periodic_evaluation_during_training_uses_test_time_augmentation(tmp_path, monkeypatch):
    """With test.aug.enabled=True the evaluation at train.eval_period runs the TTA model (as
    --eval-only does, and as configs/README.md says): the TTA wrapper runs during training,
    and the AP logged in metrics.json equals --eval-only with TTA on the final weights.
    Catches wrapping only the --eval-only model (the wrapper would not run during training)."""
    from atss.modeling import tta

    calls = []
    real_forward = tta.ATSSWithTTA.forward

    def counting_forward(self, batched_inputs):
        calls.append(len(batched_inputs))
        return real_forward(self, batched_inputs)

    monkeypatch.setattr(tta.ATSSWithTTA, "forward", counting_forward)
    out = str(tmp_path)
    opts = ["train.max_iter=2", "train.checkpointer.period=2", "train.eval_period=2", *TTA]
    train_net.main(run(out, *opts))
    assert sum(calls) == 4  # the 4 images of the validation set, once each
    final = os.path.join(out, "model_final.pth")
    results = train_net.main(run(out, f"train.init_checkpoint={final}", *TTA, eval_only=True))
    assert sum(calls) == 8
    logged = final_eval_metrics(out)
    for k, v in results["bbox"].items():
        assert v == pytest.approx(logged[f"bbox/{k}"], abs=1e-9, nan_ok=True), k
