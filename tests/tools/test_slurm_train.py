"""scripts/slurm_train.sh in a fake 2-node x 8-GPU SLURM allocation (no scheduler): the
train_net.py command each node would run, and the batch step's srun through a fake ``srun``."""

import os
import re
import shlex
import stat
import subprocess
import sys
import textwrap

import pytest
from detectron2.engine import default_argument_parser

from atss.engine.cli import parse_launch_args

pytestmark = pytest.mark.slow  # each test runs the script (bash) in a process

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "slurm_train.sh")
NODELIST = "gpu-node-[017-018]"
HOSTS = ["gpu-node-017", "gpu-node-018"]
USER_ARGS = ["--config-file", "configs/COCO/atss_R_50_FPN_1x.py", "--resume"]
USER_ARGS += ["train.output_dir=output/coco r50", "dataloader.train.total_batch_size=16"]


def _executable(path, text):
    path.write_text(textwrap.dedent(text))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def fake_slurm(tmp_path):
    """PATH with a fake ``scontrol`` (expands only NODELIST) and a fake ``srun`` (runs its
    command once per node, as SLURM does with --ntasks-per-node=1, with that node's
    SLURM_NODEID and SLURM_PROCID, and records its own options); the allocation's environment
    variables; ATSS_PYTHON = a fake interpreter recording its arguments and working folder."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _executable(
        bin_dir / "scontrol",
        f"""\
        #!/bin/sh
        [ "$1 $2 $3" = "show hostnames {NODELIST}" ] || {{ echo "bad call: $*" >&2; exit 1; }}
        printf '%s\\n' {' '.join(HOSTS)}
        """,
    )
    _executable(
        bin_dir / "srun",
        f"""\
        #!/bin/bash
        echo "$@" > {tmp_path}/srun_args
        while [[ "$1" == --* ]]; do shift; done
        for ((i = 0; i < SLURM_JOB_NUM_NODES; i++)); do
            SLURM_NODEID=$i SLURM_PROCID=$i SLURMD_NODENAME=gpu-node-01$((7 + i)) "$@" || exit $?
        done
        """,
    )
    _executable(
        bin_dir / "python",
        f"""\
        #!/bin/bash
        if [ "$1" = -c ]; then exec {sys.executable} "$@"; fi  # the batch step's free-port query
        {{ pwd; printf '%s\\n' "$@"; }} > {tmp_path}/node$SLURM_NODEID.argv
        """,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM", "MASTER_"))}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env['PATH']}",
        SLURM_JOB_ID="4242",
        SLURM_JOB_NUM_NODES="2",
        SLURM_JOB_NODELIST=NODELIST,
        SLURM_GPUS_PER_NODE="a100:8",  # the "type:count" form
        SLURM_SUBMIT_DIR=ROOT,
        SLURMD_NODENAME=HOSTS[0],  # the batch step runs on the first host
        ATSS_PYTHON=str(bin_dir / "python"),
    )
    return tmp_path, env


def _run(env, *args, cwd=None):
    return subprocess.run(
        ["bash", SCRIPT, *args], env=env, cwd=cwd or ROOT, capture_output=True, text=True
    )


def _check_launch(argv, node, url):
    """``argv`` (after the interpreter) is train_net.py with this node's launch arguments, the
    user's flags, and the user's overrides last (train_net.py's parser accepts it)."""
    assert argv[0] == os.path.join(ROOT, "train_net.py")
    args = parse_launch_args(default_argument_parser(), argv[1:])
    assert (args.num_gpus, args.num_machines, args.machine_rank) == (8, 2, node)
    assert args.dist_url == url
    assert args.config_file == USER_ARGS[1] and args.resume
    assert args.opts == USER_ARGS[3:]


def test_dry_run_prints_each_nodes_train_net_command(fake_slurm):
    """Fails if the machine rank is not the node's index, --num-gpus is not the GPUs per node
    (e.g. the allocation's 16), the rendezvous is not the first host, the nodes get different
    URLs, or the launch flags come after the user's key=value overrides."""
    _, env = fake_slurm
    proc = _run({**env, "MASTER_PORT": "29517"}, "--dry-run", *USER_ARGS)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 2
    for node, line in enumerate(lines):
        prefix, command = line.split(": ", 1)
        assert prefix == f"node {node}"
        argv = shlex.split(command)
        assert argv[0] == env["ATSS_PYTHON"]
        _check_launch(argv[1:], node, f"tcp://{HOSTS[0]}:29517")


def test_batch_step_runs_one_srun_task_per_node_with_one_shared_free_port(fake_slurm):
    """The real batch path through fake srun: each node's task runs train_net.py from the
    repository with its rank and the same rendezvous URL, whose port the batch step chose
    (free on the first host) when MASTER_PORT is unset. Fails if each node picks its own port
    or if the rank is taken from anything but SLURM_NODEID."""
    tmp_path, env = fake_slurm
    proc = _run(env, *USER_ARGS, cwd=str(tmp_path))  # sbatch runs in the submit folder
    assert proc.returncode == 0, proc.stderr
    srun_args = (tmp_path / "srun_args").read_text().split()
    assert {"--nodes=2", "--ntasks=2", "--ntasks-per-node=1"} <= set(srun_args)
    urls = set()
    for node in (0, 1):
        cwd, *argv = (tmp_path / f"node{node}.argv").read_text().splitlines()
        assert cwd == ROOT
        url = argv[argv.index("--dist-url") + 1]
        assert re.fullmatch(rf"tcp://{HOSTS[0]}:\d+", url), url
        urls.add(url)
        _check_launch(argv, node, url)
    assert len(urls) == 1
    assert f"2 nodes x 8 GPUs, rendezvous {urls.pop()}" in proc.stdout


@pytest.mark.parametrize(
    "change, args, message",
    [
        ({}, ["--config-file", "c.py", "--num-gpus", "4"], "--num-gpus is set from the allocation"),
        ({}, ["--config-file", "c.py", "--dist-url=tcp://x:1"], "--dist-url is set from"),
        ({"SLURM_GPUS_PER_NODE": None}, ["--config-file", "c.py"], "cannot tell the GPUs"),
        ({"SLURM_JOB_NUM_NODES": None}, ["--config-file", "c.py"], "not inside a SLURM"),
        ({}, [], "no arguments"),
    ],
)
def test_refuses_what_it_cannot_run(fake_slurm, change, args, message):
    """Launch flags are the allocation's (a user's --num-gpus would silently win over the
    script's, argparse keeping the last); without a GPU count or an allocation it says so."""
    _, env = fake_slurm
    env = {k: v for k, v in {**env, **change}.items() if v is not None}
    proc = _run(env, "--dry-run", *args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_gpu_count_from_slurm_gpus_on_node_or_cuda_visible_devices(fake_slurm):
    _, env = fake_slurm
    del env["SLURM_GPUS_PER_NODE"]
    for extra in ({"SLURM_GPUS_ON_NODE": "8"}, {"CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}):
        proc = _run({**env, **extra, "MASTER_PORT": "1"}, "--dry-run", *USER_ARGS)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.count("--num-gpus 8 --num-machines 2") == 2
