"""Which config a checkpoint was written under, and the ``--resume`` check that uses it.

Every checkpoint the train loop writes records its config as ``checkpoint["config_file"]``
(:func:`config_identity` of ``--config-file``). ``--resume`` continues from
``train.output_dir/last_checkpoint`` only when that checkpoint was written under the same
config file: a second config pointed at the first one's folder would otherwise load the first
one's model, optimizer and iteration without a word. The check reads the checkpoint before
Detectron2's ``default_setup`` overwrites the folder's ``config.yaml``.

The identity is the config file's path from its ``configs/`` folder on
(``configs/COCO/atss_R_50_FPN_1x.py``), so it is the same on every machine of a cluster and in
every checkout; a config file outside any ``configs/`` folder is identified by its absolute
path. Overrides (``key=value``) are not part of it: resuming with another ``train.max_iter`` is
the usual way to extend a run.
"""

import logging
import os
from typing import Optional

import torch

from .checkpoint import CONFIG_KEY, _legacy_rng_state_globals

__all__ = ["check_resume", "checkpoint_config", "config_identity"]

logger = logging.getLogger("detectron2")


def config_identity(config_file: str) -> str:
    """``config_file`` from its last ``configs`` folder on (``configs/Shapes/x.py``), or its
    absolute normalised path when no folder of it is named ``configs``."""
    path = os.path.normpath(os.path.abspath(config_file))
    parts = path.split(os.sep)
    if "configs" in parts[:-1]:
        last = len(parts) - 2 - parts[:-1][::-1].index("configs")
        return "/".join(parts[last:])
    return path


def checkpoint_config(path: str) -> Optional[str]:
    """The config identity recorded in the checkpoint file ``path``; None when it records none
    (written before the record existed, or by another tool). Tensors are memory-mapped, not
    read, where the file allows it."""
    with _legacy_rng_state_globals():
        try:
            data = torch.load(path, map_location="cpu", mmap=True)
        except RuntimeError:  # not a zip-format file: mmap is not possible
            data = torch.load(path, map_location="cpu")
    return data.get(CONFIG_KEY) if isinstance(data, dict) else None


def check_resume(output_dir: str, config_file: str) -> None:
    """Refuse to ``--resume`` from a last checkpoint written under another config.

    Nothing to check when ``output_dir`` has no ``last_checkpoint`` (training starts from
    scratch), when it names a missing file, or when the folder is remote (``scheme://``). A
    checkpoint without a record is resumed with a warning saying the config cannot be checked.

    Raises:
        ValueError: naming the checkpoint, the config it was written under and ``config_file``.
    """
    if "://" in output_dir:
        return
    tag = os.path.join(output_dir, "last_checkpoint")
    if not os.path.isfile(tag):
        return
    with open(tag) as f:
        checkpoint = os.path.join(output_dir, f.read().strip())
    if not os.path.isfile(checkpoint):
        return
    recorded = checkpoint_config(checkpoint)
    current = config_identity(config_file)
    if recorded is None:
        logger.warning(
            f"--resume: {checkpoint} does not record the config it was written under; "
            f"resuming it with {current} unchecked."
        )
        return
    if recorded != current:
        raise ValueError(
            f"--resume refused: the last checkpoint in train.output_dir={output_dir}, "
            f"{checkpoint}, was written under the config {recorded}, not under "
            f"--config-file {current}. Resume it with --config-file {recorded}, or give this "
            "config its own folder (train.output_dir=...), or start afresh without --resume."
        )
