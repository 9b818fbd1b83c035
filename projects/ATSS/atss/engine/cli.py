"""Command-line helpers shared by the entry points (``train_net.py``, ``demo.py``, ``tools/``).

* :func:`reject_flags_in_overrides` — argparse's ``nargs=REMAINDER`` (Detectron2's
  ``default_argument_parser`` puts the ``key=value`` overrides there) swallows every token after
  the first override, flags included: ``train_net.py --num-machines 2 train.max_iter=4
  --machine-rank 1`` would silently run as machine 0. Entry points call this to refuse that.
* :func:`add_launch_arguments` / :func:`parse_launch_args` — Detectron2's launch arguments plus
  ``--dist-timeout`` (seconds), with the check above.
* :func:`launch_training` — Detectron2's :func:`~detectron2.engine.launch` with that timeout, so
  a machine that cannot reach the rendezvous (or whose peers never arrive) stops after a bounded
  time with a message saying what to check, instead of a worker traceback after 30 minutes.
* :func:`default_argument_parser` — Detectron2's parser with LazyConfig examples in ``--help``
  (Detectron2's epilog shows a yacs ``MODEL.WEIGHTS /path`` example that fails on a LazyConfig)
  and ``--random-weights``.
* :func:`exit_on_usage_errors` — a bad config file, override or weights ends with one line on
  stderr and exit status 2, as argparse ends on bad arguments, instead of a traceback.
"""

import argparse
import contextlib
import os
import sys
from datetime import timedelta
from typing import Callable, List, Optional, Sequence

from detectron2.engine import defaults
from detectron2.engine.launch import DEFAULT_TIMEOUT, launch
from torch.multiprocessing import ProcessRaisedException

from atss.data import DatasetError

from .overrides import ConfigError
from .weights import WeightsError, add_weights_arguments

__all__ = [
    "RENDEZVOUS_ERRORS",
    "add_launch_arguments",
    "default_argument_parser",
    "exit_on_usage_errors",
    "flags_among_overrides",
    "launch_training",
    "parse_launch_args",
    "reject_flags_in_overrides",
]

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
        "--runtime",
        choices=["eager", "onnxruntime"],
        default="eager",
        help="with --eval-only: onnxruntime exports the model once (cached next to the weights) "
        "and evaluates the ONNX model in ONNX Runtime, on tiles too (test.tile.*)",
    )
    return parser


@contextlib.contextmanager
def exit_on_usage_errors(prog: Optional[str] = None):
    """Turn a :class:`~.overrides.ConfigError` or :class:`~.weights.WeightsError` (and a
    ``DatasetError``) raised in the block into ``prog: error: <one line>`` on stderr and exit
    status 2."""
    try:
        yield
    except (ConfigError, WeightsError, DatasetError) as e:
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
    ``--flag`` stands among the config overrides, saying where flags go.

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


def add_launch_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--dist-timeout`` to a parser that has Detectron2's launch arguments
    (``--num-gpus --num-machines --machine-rank --dist-url``)."""
    parser.add_argument(
        "--dist-timeout",
        type=float,
        default=DEFAULT_TIMEOUT.total_seconds(),
        metavar="SECONDS",
        help="how long a process waits for the rendezvous (peers joining, the first machine "
        "being reachable) and for any collective operation before failing "
        f"(default: Detectron2's {DEFAULT_TIMEOUT.total_seconds():.0f})",
    )
    return parser


def parse_launch_args(
    parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None
) -> argparse.Namespace:
    """Parse a Detectron2 ``default_argument_parser()`` command line with ``--dist-timeout``
    added; exit with a clear message when a flag stands among the overrides or the machine
    rank is out of range."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = add_launch_arguments(parser).parse_args(argv)
    reject_flags_in_overrides(args.opts, argv, parser.prog)
    if not 0 <= args.machine_rank < args.num_machines:
        parser.error(
            f"--machine-rank {args.machine_rank} is not in 0..{args.num_machines - 1} "
            f"(--num-machines {args.num_machines})"
        )
    if args.dist_timeout <= 0:
        parser.error(f"--dist-timeout must be positive, got {args.dist_timeout}")
    return args


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


def launch_training(
    main_func: Callable, args: argparse.Namespace, main_args: Optional[tuple] = None
) -> None:
    """Detectron2's ``launch(main_func, ...)`` from parsed launch arguments (see
    :func:`parse_launch_args`), with ``--dist-timeout``. A failed rendezvous ends with
    ``SystemExit`` carrying a message on what to check; other errors propagate unchanged.

    Args:
        main_func: called as ``main_func(*main_args)`` in every process.
        args: the parsed arguments (``num_gpus``, ``num_machines``, ``machine_rank``,
            ``dist_url``, and ``dist_timeout`` in seconds, Detectron2's default if absent).
        main_args: default ``(args,)``.
    """
    if not hasattr(args, "dist_timeout"):
        args.dist_timeout = DEFAULT_TIMEOUT.total_seconds()
    try:
        launch(
            main_func,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,) if main_args is None else main_args,
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
