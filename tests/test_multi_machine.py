"""Two machines simulated on one: ``train_net.py --num-machines 2 --machine-rank 0|1
--num-gpus 1 --dist-url tcp://127.0.0.1:PORT`` (gloo on the CPU) on configs/Custom with an
example COCO folder on the command line, against one ``--num-gpus 2`` run of the same global
batch: the suite's runs of 2 processes."""

import glob
import json
import os
import subprocess
import sys
import time

import pytest
import torch

from tests.atss_testing import (
    EXAMPLE_CONFIG,
    EXAMPLE_OVERRIDES,
    ROOT,
    coco_json_overrides,
    free_port,
    write_coco_example,
)

MAX_ITER = 3
# The example run's overrides (deterministic: seeded, in-process loading, batches of
# consecutive sampler indices), then global batch 2 = 1 image per process in both layouts; a
# checkpoint at iteration 1 and at the end; the evaluation (3 images) at the end.
OVERRIDES = [
    *EXAMPLE_OVERRIDES,
    "dataloader.train.total_batch_size=2",
    f"train.max_iter={MAX_ITER}",
    "train.checkpointer.period=2",
    f"train.eval_period={MAX_ITER}",
]


def _start(out, log_name, data, *flags):
    cmd = [sys.executable, "train_net.py", "--config-file", EXAMPLE_CONFIG, *flags]
    cmd += ["--dist-timeout", "300", *coco_json_overrides(data), *OVERRIDES]
    cmd.append(f"train.output_dir={out}")  # flags first, overrides last
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = open(os.path.join(os.path.dirname(out), log_name), "w")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log


def _metrics(out):
    with open(os.path.join(out, "metrics.json")) as f:
        return [json.loads(x) for x in f if x.strip()]


@pytest.mark.slow
def test_two_machines_equal_one_machine_with_two_processes(tmp_path):
    """Both machines join one world of 2 (rank 0 and rank 1); only rank 0 (machine 0) writes
    checkpoints, metrics and the evaluation; the final weights and per-iteration losses equal
    those of ``--num-gpus 2`` on one machine.

    Every spawned process starts with an empty DatasetCatalog, so each registers custom_train
    and custom_test itself from the overrides; both layouts evaluate in the JSON's category
    ids (3, 7).

    Catches: a machine rank that is not honoured (both try to host the rendezvous as rank 0:
    "Address already in use"), machines that each train alone (world size 1: other data per
    step, so other weights), a non-main rank writing checkpoints or metrics, datasets
    registered only in the launching process (KeyError in the workers), DDP given device ids
    on the CPU.

    Tolerance: rtol 1e-5, atol 1e-6, the one of tests/test_train_net.py. Both layouts run the
    same computation (same ranks, seeds, data shards, gloo all-reduce of 2 tensors); only the
    intra-op reduction order of oneDNN/OpenMP may differ, far less than the last step moves
    the weights (checked to be more than 1e-4).
    """
    data = write_coco_example(str(tmp_path / "data"), 8, 3, size=(64, 96))
    machines = [str(tmp_path / f"machine{r}") for r in (0, 1)]
    one_machine = str(tmp_path / "one_machine")
    url_two, url_one = (f"tcp://127.0.0.1:{free_port()}" for _ in range(2))
    start = time.monotonic()
    runs = [
        _start(machines[r], f"machine{r}.log", data, "--num-gpus", "1", "--num-machines", "2",
               "--machine-rank", str(r), "--dist-url", url_two)
        for r in (0, 1)
    ]  # fmt: skip
    runs.append(
        _start(one_machine, "one_machine.log", data, "--num-gpus", "2", "--dist-url", url_one)
    )
    try:
        for proc, log in runs:
            rc = proc.wait(timeout=900)
            log.close()
            assert rc == 0, open(log.name).read()[-3000:]
    finally:
        for proc, _ in runs:
            proc.kill()
    print(f"3 runs ({MAX_ITER} iterations + evaluation each): {time.monotonic() - start:.0f} s")

    # Rank 0 logs to its console, rank 1 only to its log file.
    logs = [open(p).read() for p in (tmp_path / "machine0.log", f"{machines[1]}/log.txt.rank1")]
    for rank in (0, 1):  # each machine's process learnt its global rank in a world of 2
        assert f"Rank of current process: {rank}. World size: 2" in logs[rank]

    # Only rank 0 writes: machine 1 has nothing but its own log file.
    assert sorted(os.listdir(machines[1])) == ["log.txt.rank1"]
    assert not glob.glob(os.path.join(machines[0], "*rank1*"))
    for folder in (machines[0], one_machine):
        names = set(os.listdir(folder))
        assert {"model_0000001.pth", "model_final.pth", "last_checkpoint", "metrics.json"} <= names

    a, b = (torch.load(os.path.join(d, "model_final.pth"), map_location="cpu") for d in
            (machines[0], one_machine))  # fmt: skip
    assert a["iteration"] == b["iteration"] == MAX_ITER - 1
    first = torch.load(os.path.join(machines[0], "model_0000001.pth"), map_location="cpu")
    moved = max((a["model"][k] - first["model"][k]).abs().max().item() for k in a["model"])
    assert moved > 1e-4  # iteration 2 changed the weights: the comparison below means something
    diff = max((a["model"][k] - b["model"][k]).abs().max().item() for k in a["model"])
    print(
        f"max |w_two_machines - w_one_machine| = {diff:.3g} (last step moved weights {moved:.3g})"
    )
    for k in b["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-5, atol=1e-6, msg=k)

    two, one = _metrics(machines[0]), _metrics(one_machine)
    losses = [[x["total_loss"] for x in m if "total_loss" in x] for m in (two, one)]
    assert len(losses[0]) == MAX_ITER
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    aps = [[x["bbox/AP"] for x in m if "bbox/AP" in x] for m in (two, one)]
    assert len(aps[0]) == 1 and aps[0] == pytest.approx(aps[1], abs=1e-6, nan_ok=True)
    for folder in (machines[0], one_machine):
        with open(os.path.join(folder, "inference", "coco_instances_results.json")) as f:
            detections = json.load(f)
        assert detections and {d["category_id"] for d in detections} <= {3, 7}
