"""One way to give weights: ``train.init_checkpoint=PATH``, and random weights only on request.

Training, evaluation, the demo, export and the benchmark all read the weights from the config
key ``train.init_checkpoint`` (set on the command line like any override); ``--weights PATH``,
where an entry point keeps it, is the same as ``train.init_checkpoint=PATH``.

A tool that *uses* a trained model (evaluate, predict, export, benchmark inference) refuses to
run on weights that were not trained, unless ``--random-weights`` asks for exactly that:

* ``train.init_checkpoint`` empty: nothing would be loaded;
* a checkpoint that leaves model tensors at their initialisation: a training init such as the
  COCO configs' default ImageNet backbone (the head stays random), or a model of another class
  count (the classifier does not fit).

With ``--random-weights`` nothing is loaded, whatever the config's default
``train.init_checkpoint`` (a weights path given on the command line with it is a contradiction
and refused).
"""

import argparse
import logging
import os
from typing import List, Sequence

from fvcore.common.checkpoint import _filter_reused_missing_keys

from .checkpoint import AtomicDetectionCheckpointer, incompatible_keys_message

__all__ = [
    "RANDOM_WEIGHTS_FLAG",
    "WeightsError",
    "add_weights_arguments",
    "load_trained_weights",
    "weights_overrides",
]

logger = logging.getLogger(__name__)

RANDOM_WEIGHTS_FLAG = "--random-weights"
_KEY = "train.init_checkpoint"


class WeightsError(ValueError):
    """Weights missing, contradictory or not a trained model; a one-line message with the fix."""


def add_weights_arguments(parser: argparse.ArgumentParser, alias: bool = False):
    """Add ``--random-weights`` (and with ``alias`` ``--weights PATH``) to ``parser``."""
    if alias:
        parser.add_argument(
            "--weights",
            default="",
            metavar="PATH",
            help=f"the same as the override {_KEY}=PATH (a trained run's model_final.pth)",
        )
    parser.add_argument(
        RANDOM_WEIGHTS_FLAG,
        action="store_true",
        help=f"use a randomly initialised model (nothing is loaded); without it {_KEY}= must "
        "name a trained checkpoint",
    )
    return parser


def _given_checkpoints(opts: Sequence[str]) -> List[str]:
    """The values of the ``train.init_checkpoint=`` overrides among ``opts``, in order."""
    values = []
    for opt in opts:
        key, _, value = opt.lstrip("+").partition("=")
        if key.strip() == _KEY:
            values.append(value.strip())
    return values


def weights_overrides(
    opts: Sequence[str], weights: str = "", random_weights: bool = False
) -> List[str]:
    """``opts`` with ``--weights PATH`` turned into ``train.init_checkpoint=PATH`` (appended).

    Raises :class:`WeightsError` when ``--weights`` and a ``train.init_checkpoint=`` override
    name different files, or when ``--random-weights`` comes with a weights path.
    """
    opts = list(opts)
    given = _given_checkpoints(opts)
    if weights:
        if given and given[-1] != weights:
            raise WeightsError(
                f"--weights {weights} and {_KEY}={given[-1]} name different weights: "
                f"give them once, as {_KEY}=PATH"
            )
        opts.append(f"{_KEY}={weights}")
    if random_weights and (weights or any(given)):
        raise WeightsError(
            f"{RANDOM_WEIGHTS_FLAG} contradicts {_KEY}={weights or given[-1]}: drop one of them"
        )
    return opts


class _RecordingCheckpointer(AtomicDetectionCheckpointer):
    """The project's checkpointer, remembering which model tensors the load did not fill."""

    incompatible = None

    def _log_incompatible_keys(self, incompatible) -> None:
        self.incompatible = incompatible
        super()._log_incompatible_keys(incompatible)


def load_trained_weights(model, cfg, random_weights: bool = False, what: str = "run") -> str:
    """Load ``cfg.train.init_checkpoint`` into ``model``, all of it, or refuse.

    Args:
        model: the instantiated ``cfg.model`` (not wrapped in DDP).
        cfg: the loaded config.
        random_weights: the user's ``--random-weights``: load nothing.
        what: the verb for the messages ("export", "evaluate", ...).

    Returns:
        the path loaded, "" with ``random_weights``.

    Raises:
        WeightsError: no weights given, no such file, or a checkpoint that leaves some model
            tensors at their initialisation (named in the message).
    """
    if random_weights:
        logger.warning(f"{RANDOM_WEIGHTS_FLAG}: the model keeps its random initialisation")
        return ""
    path = str(cfg.train.get("init_checkpoint", "") or "")
    fix = f"set {_KEY}=PATH to a trained run's model_final.pth"
    if not path:
        raise WeightsError(
            f"no weights to {what}: {_KEY} is empty; {fix}, or pass {RANDOM_WEIGHTS_FLAG} "
            f"to {what} a randomly initialised model"
        )
    if "://" not in path and not os.path.isfile(path):
        raise WeightsError(f"{_KEY}={path}: no such file; {fix}")
    checkpointer = _RecordingCheckpointer(model)
    checkpointer.load(path)
    incompatible = checkpointer.incompatible
    if incompatible is None:
        return path
    missing = _filter_reused_missing_keys(model, incompatible.missing_keys)
    if missing or incompatible.incorrect_shapes:
        detail = incompatible_keys_message(
            incompatible._replace(missing_keys=missing, unexpected_keys=[]),
            model.state_dict().keys(),
        )
        raise WeightsError(
            f"{_KEY}={path} is not a trained model of this config ({detail}), e.g. a "
            f"backbone's pretrained weights; {fix}, or pass {RANDOM_WEIGHTS_FLAG}"
        )
    return path
