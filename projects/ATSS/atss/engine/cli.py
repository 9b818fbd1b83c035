"""The command line of ``train_net.py``, ``demo.py`` and the tools: one set of rules.

Flags come first, the ``key=value`` config overrides last (argparse's ``REMAINDER``, as in
Detectron2's ``default_argument_parser``); a flag written among the overrides would be read as
an override, so :func:`parse_args` refuses it (``--num-machines 2 train.max_iter=4
--machine-rank 1`` would otherwise run as machine 0). Weights are given one way,
``train.init_checkpoint=PATH``, with ``--run RUN`` as its short form. A bad config file,
override or weights ends with one line and exit status 2 (:func:`exit_on_usage_errors`).
:func:`launch_training` is Detectron2's ``launch`` with a bounded rendezvous (docs/clusters.md).
"""

import argparse
import contextlib
import functools
import os
import re
import sys
from datetime import timedelta
from typing import Callable, List, Optional, Sequence, Tuple

import torch.distributed as dist
from detectron2.engine import defaults
from detectron2.engine.launch import DEFAULT_TIMEOUT, launch
from detectron2.utils import comm
from torch.multiprocessing import ProcessRaisedException

from atss.data import DatasetError
from atss.fileio import UnsafeFileError

from .config import (
    CLASSES_FILE,
    RANDOM_WEIGHTS_FLAG,
    ConfigError,
    WeightsError,
    load_checked_config,
)

__all__ = [
    "add_config_arguments",
    "add_weights_arguments",
    "check_command_line",
    "config_and_overrides",
    "default_argument_parser",
    "exit_on_usage_errors",
    "flags_among_overrides",
    "launch_training",
    "parse_args",
    "parse_launch_args",
    "reject_flags_in_overrides",
    "run_then_exit_worker",
]

RUN_CONFIG = "config.yaml"  # what Detectron2's default_setup writes into train.output_dir
RUN_WEIGHTS = "model_final.pth"  # a run's last checkpoint
# A Hydra override: key=value, +key=value, ++key=value or ~key.
_OVERRIDE = re.compile(r"^\+{0,2}[A-Za-z_][\w.]*=|^~[A-Za-z_]")
# Text of the exceptions torch.distributed raises when the TCP rendezvous fails (torch 2.x):
# a client that cannot connect (DistNetworkError "The client socket has timed out ... trying to
# connect to (host, port)"), a master whose peers never arrive (DistStoreError "Timed out after
# N seconds waiting for clients. 1/2 clients joined."), and a second master on the same port
# (DistNetworkError "... EADDRINUSE" / "address already in use").
RENDEZVOUS_ERRORS = ("DistNetworkError", "DistStoreError", "DistError")


TRAIN_EXAMPLES = """
Examples (LazyConfig: flags first, then key=value overrides of the config):

Train on one machine (CUDA when available, else the CPU):
    $ {prog} --config-file configs/Shapes/atss_tiny_shapes.py

Change config values (a key the config does not have is refused; +key=value adds one):
    $ {prog} --config-file CFG train.max_iter=1000 optimizer.lr=0.005 train.output_dir=out/run

Evaluate a trained model (--random-weights to evaluate an untrained one; --runtime onnxruntime
to evaluate its ONNX export in ONNX Runtime):
    $ {prog} --config-file CFG --eval-only train.init_checkpoint=out/run/model_final.pth
    $ {prog} --run out/run --eval-only      # the same from a run folder: its config and weights

Continue the run in train.output_dir:
    $ {prog} --config-file CFG --resume

Run on multiple machines:
    (machine0)$ {prog} --machine-rank 0 --num-machines 2 --dist-url <URL> [--other-flags]
    (machine1)$ {prog} --machine-rank 1 --num-machines 2 --dist-url <URL> [--other-flags]
"""


def default_argument_parser(epilog: Optional[str] = None) -> argparse.ArgumentParser:
    """Detectron2's ``default_argument_parser`` with LazyConfig examples as the epilog (unless
    ``epilog`` is given) and ``--random-weights`` (for ``--eval-only``)."""
    prog = os.path.basename(sys.argv[0]) or "train_net.py"
    parser = defaults.default_argument_parser(epilog or TRAIN_EXAMPLES.format(prog=prog))
    for action in parser._actions:  # its help also describes yacs's "KEY VALUE" pairs
        if action.dest == "opts":
            action.help = "key=value config overrides (e.g. train.max_iter=100), after the flags"
    add_weights_arguments(parser)
    parser.add_argument(
        "--run",
        metavar="DIR",
        help="with --eval-only, instead of --config-file: evaluate a training run's folder, the "
        f"same as --config-file DIR/{RUN_CONFIG} train.init_checkpoint=DIR/{RUN_WEIGHTS}",
    )
    parser.add_argument(
        "--runtime",
        choices=["eager", "onnxruntime"],
        default="eager",
        help="with --eval-only: onnxruntime exports the model once (cached next to the weights) "
        "and evaluates the ONNX model in ONNX Runtime, on tiles too (test.tile.*)",
    )
    return parser


@contextlib.contextmanager
def exit_on_usage_errors(prog: Optional[str] = None):
    """Turn a :class:`~.config.ConfigError` or :class:`~.config.WeightsError` (and a
    ``DatasetError``, and an :class:`~atss.fileio.UnsafeFileError` for a weights file or a
    ``.yaml`` config that would run code) raised in the block into ``prog: error: <one line>``
    on stderr and exit status 2."""
    try:
        yield
    except (ConfigError, WeightsError, DatasetError, UnsafeFileError) as e:
        prog = prog or os.path.basename(sys.argv[0]) or "the script"
        print(f"{prog}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from e


def flags_among_overrides(opts: Optional[Sequence[str]]) -> List[str]:
    """The tokens of ``opts`` (the ``key=value`` overrides list) that look like command-line
    flags: they start with ``-`` (no override does: Hydra's override grammar is ``key=value``,
    ``+key=value``, ``++key=value`` or ``~key``)."""
    return [token for token in (opts or []) if token.startswith("-")]


def _reordered(prog: str, argv: Sequence[str], opts: Sequence[str]) -> str:
    """``argv`` with the flags found among ``opts`` (each with the non-override tokens that
    follow it, i.e. its values) moved before the first override: a suggested command line."""
    start = len(argv) - len(opts)
    flags, overrides, i = [], [], 0
    while i < len(opts):
        if opts[i].startswith("-"):
            flags.append(opts[i])
            i += 1
            while i < len(opts) and "=" not in opts[i] and not opts[i].startswith("-"):
                flags.append(opts[i])
                i += 1
        else:
            overrides.append(opts[i])
            i += 1
    return " ".join([prog, *argv[:start], *flags, *overrides])


def reject_flags_in_overrides(
    opts: Optional[Sequence[str]], argv: Optional[Sequence[str]] = None, prog: Optional[str] = None
) -> None:
    """Exit with status 2 and a message on stderr (as argparse does on bad arguments) when a
    ``--flag`` stands among the config overrides, saying where flags go: argparse's REMAINDER
    takes every token after the first override, flags included.

    Args:
        opts: the parsed overrides (``args.opts``), i.e. everything argparse put after the first
            ``key=value``.
        argv: the full command line without the program name (default ``sys.argv[1:]``), used
            to print a corrected command line when ``opts`` is its tail.
        prog: the program name for the message (default ``basename(sys.argv[0])``).
    """
    flags = flags_among_overrides(opts)
    if not flags:
        return
    opts = list(opts)
    prog = prog or os.path.basename(sys.argv[0]) or "the script"
    argv = list(sys.argv[1:] if argv is None else argv)
    message = (
        f"{prog}: error: {' '.join(repr(f) for f in flags)} came after the first key=value "
        "config override, where it would be read as an override (not as a flag) and "
        "silently ignored or misapplied. Flags go before the overrides; overrides come last."
    )
    if argv[len(argv) - len(opts) :] == opts:
        message += f"\n  e.g.: {_reordered(prog, argv, opts)}"
    print(message, file=sys.stderr)
    raise SystemExit(2)


def parse_args(
    parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None
) -> argparse.Namespace:
    """``parser.parse_args(argv)`` with the overrides last, for a parser whose positional
    ``opts`` (argparse.REMAINDER) takes them.

    The command line is cut at its first override (``key=value``, ``+key=value``,
    ``++key=value`` or ``~key`` that is not an existing file's name) and argparse parses what
    comes before it, so that a flag taking several values (``demo.py --input a.jpg b.jpg``)
    does not take the overrides too; the rest is ``args.opts``, where a flag is refused
    (:func:`reject_flags_in_overrides`).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = [i for i, t in enumerate(argv) if _OVERRIDE.match(t) and not os.path.exists(t)]
    cut = overrides[0] if overrides else len(argv)
    args = parser.parse_args(argv[:cut])
    args.opts = [*getattr(args, "opts", []), *argv[cut:]]
    reject_flags_in_overrides(args.opts, argv, parser.prog)
    return args


def parse_launch_args(
    parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None
) -> argparse.Namespace:
    """:func:`parse_args` of a :func:`default_argument_parser` with ``--dist-timeout``
    added; exits with a clear message when the machine rank is out of range. ``--run DIR``
    (``--eval-only`` only) becomes ``config_file`` and the weights override
    (:func:`config_and_overrides`), so that every process gets the same arguments."""
    parser.add_argument(
        "--dist-timeout",
        type=float,
        default=DEFAULT_TIMEOUT.total_seconds(),
        metavar="SECONDS",
        help="how long a process waits for the rendezvous (peers joining, the first machine "
        "being reachable) and for any collective operation before failing "
        f"(default: Detectron2's {DEFAULT_TIMEOUT.total_seconds():.0f})",
    )
    args = parse_args(parser, argv)
    if not 0 <= args.machine_rank < args.num_machines:
        parser.error(
            f"--machine-rank {args.machine_rank} is not in 0..{args.num_machines - 1} "
            f"(--num-machines {args.num_machines})"
        )
    if args.dist_timeout <= 0:
        parser.error(f"--dist-timeout must be positive, got {args.dist_timeout}")
    if getattr(args, "run", None):  # only this module's default_argument_parser has --run
        if not args.eval_only:  # training from a run's final weights would be a fine-tuning
            parser.error(
                f"--run {args.run} evaluates a run folder: add --eval-only (to continue its "
                f"training: --config-file {os.path.join(args.run, RUN_CONFIG)} --resume)"
            )
        if args.config_file:
            parser.error("--run and --config-file both name the config: give one of them")
        try:
            args.config_file, args.opts = config_and_overrides(args)
        except (ConfigError, WeightsError) as e:
            parser.error(str(e))
        args.run = None  # resolved: the weights are the first override now
    return args


def add_config_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--config-file FILE`` and, instead of it, ``--run RUN`` (a training run's folder;
    :func:`config_and_overrides`)."""
    config = parser.add_mutually_exclusive_group(required=True)
    config.add_argument("--config-file", metavar="FILE", help="LazyConfig file")
    config.add_argument(
        "--run",
        metavar="DIR",
        help="a training run's folder (train.output_dir): the same as --config-file "
        f"DIR/{RUN_CONFIG} train.init_checkpoint=DIR/{RUN_WEIGHTS}; classes from "
        f"DIR/{CLASSES_FILE}",
    )
    return parser


def add_weights_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--random-weights``: the one way to run an untrained model."""
    parser.add_argument(
        RANDOM_WEIGHTS_FLAG,
        action="store_true",
        help="use a randomly initialised model (nothing is loaded); without it "
        "train.init_checkpoint= must name a trained checkpoint",
    )
    return parser


def config_and_overrides(args: argparse.Namespace) -> Tuple[str, List[str]]:
    """The config file and the overrides of parsed arguments (``config_file``, ``opts``, and
    ``run`` / ``random_weights`` where the parser has them).

    ``--run RUN`` is ``--config-file RUN/config.yaml`` with
    ``train.init_checkpoint=RUN/model_final.pth`` before the overrides (a later one wins; none
    with ``--random-weights``); :class:`ConfigError` when the folder lacks a file. A weights
    path given with ``--random-weights`` is a contradiction: :class:`WeightsError`.
    """
    config_file, opts = args.config_file, list(args.opts)
    random_weights = getattr(args, "random_weights", False)
    run = getattr(args, "run", None)
    if run:
        config_file, weights = os.path.join(run, RUN_CONFIG), os.path.join(run, RUN_WEIGHTS)
        for path in (config_file,) if random_weights else (config_file, weights):
            if not os.path.isfile(path):
                raise ConfigError(f"--run {run}: no {path} (a train.output_dir after training)")
        if not random_weights:
            opts.insert(0, f"train.init_checkpoint={weights}")
    given = [
        value.strip()
        for key, _, value in (opt.lstrip("+").partition("=") for opt in opts)
        if key.strip() == "train.init_checkpoint" and value.strip()
    ]
    if random_weights and given:
        raise WeightsError(
            f"{RANDOM_WEIGHTS_FLAG} contradicts train.init_checkpoint={given[-1]}: drop one of them"
        )
    return config_file, opts


def check_command_line(args: argparse.Namespace) -> None:
    """Refuse, before ``train_net.py`` launches, what every process would refuse: a missing
    config file or an unknown override key (:class:`ConfigError`), ``--eval-only`` without
    weights and without ``--random-weights`` (:class:`WeightsError`), and ``--runtime
    onnxruntime`` or ``--random-weights`` without ``--eval-only``."""
    random_weights = getattr(args, "random_weights", False)
    if random_weights and not args.eval_only:
        raise WeightsError(
            f"{RANDOM_WEIGHTS_FLAG} applies to --eval-only; training starts from "
            "train.init_checkpoint (empty: from scratch)"
        )
    config_and_overrides(args)
    cfg = load_checked_config(args.config_file, args.opts)
    if getattr(args, "runtime", "eager") == "onnxruntime":
        if not args.eval_only:
            raise ConfigError("--runtime onnxruntime applies to --eval-only; training runs eager")
        if cfg.get("test", {}).get("aug", {}).get("enabled", False):
            raise ConfigError(
                "--runtime onnxruntime with test.aug.enabled=True: the test-time augmentation "
                "runs the eager model only; drop one of them"
            )
    if args.eval_only and not random_weights and not cfg.train.get("init_checkpoint", ""):
        raise WeightsError(
            "--eval-only with an empty train.init_checkpoint: set train.init_checkpoint=PATH to "
            "a trained run's model_final.pth, or pass --random-weights to evaluate a randomly "
            "initialised model"
        )


def _rendezvous_message(args: argparse.Namespace, error: str) -> str:
    last = [line for line in error.strip().splitlines() if line.strip()][-1]
    return (
        f"error: machine {args.machine_rank} of {args.num_machines} could not join the process "
        f"group at --dist-url {args.dist_url} within --dist-timeout {args.dist_timeout:g} s:\n"
        f"  {last}\n"
        "Check that every machine runs the same command with the same --dist-url (machine 0's "
        "address and a port free there), the same --num-machines and --num-gpus, and its own "
        "--machine-rank 0..N-1 (flags before the key=value overrides); that machine 0 is "
        "running; that the port is reachable from every machine; and that no earlier run "
        "still holds the port."
    )


def run_then_exit_worker(main_func: Callable, *args):
    """``main_func(*args)`` in a process that :func:`launch_training` started; once it returns,
    the process waits for every rank, flushes stdout and stderr and ends with ``os._exit(0)``.

    Where ``launch`` runs ``main_func`` in the launching process (one process in all), no
    process group exists and the result is returned. A spawned worker never returns normally:
    torch 2.3's gloo worker threads can still hold the last collective's tensors when the rank
    is done, and then the interpreter's exit aborts the rank (SIGABRT, "terminate called
    without an active exception") while ``destroy_process_group`` can deadlock on the GIL.
    ``os._exit`` runs neither. The barrier keeps the rank that hosts the rendezvous store alive
    until every rank is done with it. An exception propagates at once (a barrier would wait
    for ranks that may never arrive)."""
    result = main_func(*args)
    if not (dist.is_available() and dist.is_initialized()):
        return result
    comm.synchronize()
    sys.stdout.flush()  # logging handlers flush each record; print()'s buffers are flushed here
    sys.stderr.flush()
    os._exit(0)


def launch_training(main_func: Callable, args: argparse.Namespace) -> None:
    """Detectron2's ``launch(main_func, ...)`` of ``main_func(args)`` in every process, from
    the arguments of :func:`parse_launch_args`, with ``--dist-timeout``; each spawned process
    ends as :func:`run_then_exit_worker` says. A failed rendezvous ends with ``SystemExit``
    carrying a message on what to check; other errors propagate."""
    try:
        launch(
            functools.partial(run_then_exit_worker, main_func),
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
            timeout=timedelta(seconds=args.dist_timeout),
        )
    except ProcessRaisedException as e:
        # The worker's traceback is in the message; only the rendezvous failures are rewritten.
        text = str(e)
        failed_in_rendezvous = "init_process_group" in text and any(
            name in text for name in RENDEZVOUS_ERRORS
        )
        if not failed_in_rendezvous:
            raise
        raise SystemExit(_rendezvous_message(args, text)) from e
