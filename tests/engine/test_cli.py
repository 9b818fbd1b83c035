"""atss.engine.cli: flags written after the key=value overrides are refused, with the same
message, by every entry point that takes overrides; --run and --random-weights are the only
other ways to say which weights; a machine that cannot complete the rendezvous stops in
bounded time with a message saying what to check."""

import os
import subprocess
import sys
import time

import pytest
import torch.distributed as dist
from detectron2.engine import default_argument_parser

from atss.engine import cli
from atss.engine.cli import (
    config_and_overrides,
)
from atss.engine.cli import default_argument_parser as atss_default_argument_parser
from atss.engine.cli import (
    flags_among_overrides,
    parse_args,
    parse_launch_args,
    reject_flags_in_overrides,
    run_then_exit_worker,
)
from atss.engine.config import ConfigError, WeightsError
from tests.atss_testing import ROOT, free_port, load_script

CONFIG = "configs/Shapes/atss_tiny_shapes.py"
# The example: a new user appends --machine-rank after an override.
MISPLACED = [
    "--config-file",
    CONFIG,
    "--num-machines",
    "2",
    "train.max_iter=4",
    "--machine-rank",
    "1",
]


def test_detectron2_parser_alone_takes_a_late_flag_as_an_override():
    """The bug this module exists for (so the tests below test something real): argparse's
    REMAINDER puts ``--machine-rank 1`` into the overrides and the machine runs as rank 0."""
    args = default_argument_parser().parse_args(MISPLACED)
    assert args.machine_rank == 0 and args.opts == ["train.max_iter=4", "--machine-rank", "1"]


def test_a_late_flag_is_refused_with_where_flags_go(capsys):
    """Fails if the check is skipped (parse succeeds as rank 0) or the message does not say
    where flags go; the suggested command line must put the flag and its value before the
    overrides."""
    with pytest.raises(SystemExit) as e:
        parse_launch_args(default_argument_parser(), MISPLACED)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "'--machine-rank'" in err and "Flags go before the overrides" in err
    fixed = err.split("e.g.: ", 1)[1].split()[1:]  # without the program name
    assert fixed == [*MISPLACED[:4], "--machine-rank", "1", "train.max_iter=4"]
    assert parse_launch_args(default_argument_parser(), fixed).machine_rank == 1


@pytest.mark.parametrize(
    "opts",
    [
        ["optimizer.lr=-1"],  # a negative value
        ["model.pixel_mean=[-1.0,0,1]", "train.output_dir=/tmp/a-b/--c"],  # dashes inside values
        ["+train.extra=1", "++train.more=2", "~train.amp"],  # Hydra's add / force-add / delete
        [],
    ],
)
def test_valid_overrides_pass(opts):
    """Fails if the check flags any token containing a dash, or any token without '='."""
    assert flags_among_overrides(opts) == []
    reject_flags_in_overrides(opts, argv=["--config-file", CONFIG, *opts], prog="x")
    args = parse_launch_args(default_argument_parser(), ["--config-file", CONFIG, *opts])
    assert args.opts == opts


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--num-machines", "2", "--machine-rank", "2"], "--machine-rank 2 is not in 0..1"),
        (["--dist-timeout", "0"], "--dist-timeout must be positive"),
    ],
)
def test_impossible_launch_arguments_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_launch_args(default_argument_parser(), ["--config-file", CONFIG, *argv])
    assert message in capsys.readouterr().err


def test_dist_timeout_defaults_to_detectron2s():
    args = parse_launch_args(default_argument_parser(), ["--config-file", CONFIG])
    assert args.dist_timeout == 30 * 60


REFUSAL = (
    "came after the first key=value config override, where it would be read as an override "
    "(not as a flag) and silently ignored or misapplied. Flags go before the overrides; "
    "overrides come last."
)
ENTRY_POINTS = {  # script -> argv with a flag after an override; the config does not exist,
    # so an entry point that skipped the check would fail later with a different error.
    "train_net.py": ["--config-file", "missing.py", "train.max_iter=4", "--resume"],
    "demo.py": ["--config-file", "missing.py", "--input", "x.jpg", "a.b=1", "--output", "o"],
    "tools/benchmark.py": [
        "--config-file",
        "missing.py",
        "--task",
        "data",
        "a.b=1",
        "--iters",
        "1",
    ],
    "tools/compare_detectors.py": ["train", "a.b=1", "--output", "o"],
    "tools/export_model.py": [
        "--config-file",
        "missing.py",
        "--output",
        "o",
        "a.b=1",
        "--opset",
        "17",
    ],
    "tools/train_treecrowns_demo.py": ["--config-file", "missing.py", "a.b=1", "--skip-train"],
    "tools/validate_dataset.py": ["--config-file", "missing.py", "a.b=1", "--decode"],
}


@pytest.mark.parametrize("script", sorted(ENTRY_POINTS))
def test_every_entry_point_with_overrides_refuses_a_flag_among_them(
    script, monkeypatch, capsys, tmp_path
):
    """Each refuses with the same message (status 2), naming the flag. Fails for an entry point
    that parses its command line without atss.engine.cli.parse_args (demo.py's --input would
    take the override as an image; compare_detectors would start runs in o/; the others would
    fail on the missing config, or start working)."""
    argv = ENTRY_POINTS[script]
    module = load_script(script)
    monkeypatch.setattr(sys, "argv", [script, *argv])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        module.invoke_main() if script == "train_net.py" else module.main(argv)
    assert e.value.code == 2
    first_override = next(i for i, token in enumerate(argv) if "=" in token)
    flag = next(token for token in argv[first_override:] if token.startswith("-"))
    assert f"{os.path.basename(script)}: error: {flag!r} {REFUSAL}" in capsys.readouterr().err


def test_a_flag_of_several_values_does_not_take_the_overrides(tmp_path, monkeypatch):
    """demo.py's --input takes several files: the overrides after it are cut off before
    argparse sees them; an existing file whose name looks like an override is an input. Fails
    if argparse alone parses the command line (the override becomes an input image)."""
    parser = load_script("demo.py").get_parser()
    argv = ["--config-file", CONFIG, "--input", "a.jpg", "b.jpg", "train.init_checkpoint=w.pth"]
    args = parse_args(parser, argv)
    assert args.input == ["a.jpg", "b.jpg"] and args.opts == ["train.init_checkpoint=w.pth"]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "site.v=2.png").write_bytes(b"")
    args = parse_args(parser, ["--config-file", CONFIG, "--input", "site.v=2.png", "a.b=1"])
    assert args.input == ["site.v=2.png"] and args.opts == ["a.b=1"]


def test_run_is_the_config_and_the_weights_of_a_run_folder(tmp_path):
    """--run RUN is --config-file RUN/config.yaml train.init_checkpoint=RUN/model_final.pth
    (put first, so a later override wins; none with --random-weights); a folder without them
    is a usage error naming the file. Fails if the weights are appended after the user's
    overrides or loaded with --random-weights."""
    parser = load_script("tools/export_model.py").get_parser()
    run = str(tmp_path)
    with pytest.raises(ConfigError, match="config.yaml"):
        config_and_overrides(parse_args(parser, ["--run", run, "--output", "o"]))
    for name in ("config.yaml", "model_final.pth"):
        (tmp_path / name).write_text("")
    config, opts = config_and_overrides(
        parse_args(parser, ["--run", run, "--output", "o", "a.b=1"])
    )
    assert config == str(tmp_path / "config.yaml")
    assert opts == [f"train.init_checkpoint={tmp_path / 'model_final.pth'}", "a.b=1"]
    argv = ["--run", run, "--output", "o", "--random-weights"]
    assert config_and_overrides(parse_args(parser, argv)) == (config, [])


def test_train_net_evaluates_a_run_folder_given_with_run(tmp_path, capsys):
    """train_net.py --run RUN --eval-only is --config-file RUN/config.yaml with the run's
    model_final.pth as the first override, resolved before launch; --run without --eval-only,
    beside --config-file or on a folder without the files is refused (exit 2) saying what to
    do, as is a weights path beside --random-weights. Fails if argparse takes --run for an
    abbreviation of --runtime, if --run trains from the run's final weights, or if a refusal
    escapes as a traceback."""
    parser = atss_default_argument_parser
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.yaml", "model_final.pth"):
        (run / name).write_text("")
    args = parse_launch_args(parser(), ["--run", str(run), "--eval-only", "a.b=1"])
    assert (args.config_file, args.runtime) == (str(run / "config.yaml"), "eager")
    assert args.opts == [f"train.init_checkpoint={run / 'model_final.pth'}", "a.b=1"]
    for argv, message in [
        (["--run", str(run)], f"add --eval-only (to continue its training: --config-file {run}"),
        (["--run", str(run), "--eval-only", "--config-file", CONFIG], "give one of them"),
        (["--run", str(tmp_path), "--eval-only"], f"no {tmp_path / 'config.yaml'}"),
        (
            ["--run", str(run), "--eval-only", "--random-weights", "train.init_checkpoint=w.pth"],
            "--random-weights contradicts train.init_checkpoint=w.pth",
        ),
    ]:
        with pytest.raises(SystemExit) as e:
            parse_launch_args(parser(), argv)
        assert e.value.code == 2 and message in capsys.readouterr().err, argv


def test_random_weights_with_a_weights_path_is_a_contradiction():
    """--random-weights loads nothing, so a weights path beside it is refused, naming both;
    an empty train.init_checkpoint= is no path. Fails if either is silently resolved."""
    parser = load_script("tools/export_model.py").get_parser()
    base = ["--config-file", CONFIG, "--output", "o", "--random-weights"]
    with pytest.raises(WeightsError, match="--random-weights contradicts train.init_checkpoint=a"):
        config_and_overrides(parse_args(parser, [*base, "train.init_checkpoint=a.pth"]))
    assert config_and_overrides(parse_args(parser, [*base, "train.init_checkpoint="]))


def test_train_net_help_shows_lazyconfig_examples(monkeypatch, capsys):
    """train_net.py --help used to show Detectron2's yacs example (MODEL.WEIGHTS /path), which
    fails on a LazyConfig with an OmegaConf parse error. Fails if Detectron2's epilog or its
    yacs wording of the overrides' help comes back."""
    monkeypatch.setattr(sys, "argv", ["train_net.py", "--help"])
    with pytest.raises(SystemExit) as e:
        load_script("train_net.py").invoke_main()
    out = capsys.readouterr().out
    assert e.value.code == 0
    assert "--eval-only train.init_checkpoint=" in out and "train.max_iter=1000" in out
    assert "--random-weights" in out
    assert "MODEL.WEIGHTS" not in out and "Yacs" not in out and "SOLVER" not in out


@pytest.mark.slow
def test_train_net_command_line_refuses_a_late_flag_before_launching(tmp_path):
    """The issue's command, run as a user would: refused at once (exit 2), nothing launched."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "train_net.py", *MISPLACED, f"train.output_dir={out}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "'--machine-rank' came after the first key=value" in proc.stderr
    assert not out.exists()


@pytest.mark.slow
def test_unreachable_rendezvous_fails_within_the_timeout_with_a_clear_message(tmp_path):
    """Machine 1 pointed at a port nobody listens on, and machine 0 whose peer never comes,
    both with --dist-timeout 3: each exits non-zero well before Detectron2's default 30 minutes
    with a message naming the URL and what to check. Fails if the timeout is not passed to
    launch (the processes would still be waiting at the deadline) or if the worker's traceback
    is left as the only message."""
    timeout_s, limit_s = 3, 240  # limit: spawn + imports on a loaded 2-core machine, then 3 s
    procs = {}
    start = time.monotonic()
    for rank in (0, 1):
        url = f"tcp://127.0.0.1:{free_port()}"
        cmd = [sys.executable, "train_net.py", "--config-file", CONFIG, "--num-machines", "2"]
        cmd += ["--machine-rank", str(rank), "--dist-url", url, "--dist-timeout", str(timeout_s)]
        cmd += [f"train.output_dir={tmp_path / str(rank)}"]
        log = open(tmp_path / f"rank{rank}.log", "w+")
        procs[rank] = (
            subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT),
            log,
            url,
        )
    try:
        for rank, (proc, log, url) in procs.items():
            rc = proc.wait(timeout=max(1.0, limit_s - (time.monotonic() - start)))
            log.seek(0)
            text = log.read()
            assert rc != 0, text[-3000:]
            assert f"machine {rank} of 2 could not join the process group" in text, text[-3000:]
            assert f"--dist-url {url} within --dist-timeout 3 s" in text
            assert "that machine 0 is running" in text
        # The machine-0 message carries torch's reason: its peer never arrived.
        assert "waiting for clients" in open(tmp_path / "rank0.log").read()
        assert "trying to connect" in open(tmp_path / "rank1.log").read()
    finally:
        for proc, log, _ in procs.values():
            proc.kill()
            log.close()


def test_a_spawned_worker_flushes_its_output_and_exits_without_finalizing(tmp_path, monkeypatch):
    """With a process group (what launch's spawned workers have), the worker runs main, then
    flushes stdout and ends with os._exit(0); without one (launch's single process) it returns
    main's result. Fails if the worker returns into the interpreter's exit, where gloo's threads
    can abort a rank that has finished its work (SIGABRT, "terminate called without an active
    exception", seen on the two-machine run), or exits with main's printed lines still in the
    buffer of a redirected stdout."""
    assert run_then_exit_worker(lambda x: x + 1, 1) == 2  # no group: a plain call

    class Exited(Exception):
        pass

    def fake_exit(code):
        raise Exited(code)

    monkeypatch.setattr(cli.os, "_exit", fake_exit)
    stdout = open(tmp_path / "stdout.txt", "w", buffering=1024 * 1024)  # as when redirected
    monkeypatch.setattr(sys, "stdout", stdout)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1
    )
    try:
        with pytest.raises(Exited) as exited:
            run_then_exit_worker(lambda: print("main is done"))
        assert exited.value.args == (0,)
        assert (tmp_path / "stdout.txt").read_text() == "main is done\n"
    finally:
        stdout.close()
        dist.destroy_process_group()
