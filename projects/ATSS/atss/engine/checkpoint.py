"""What a training run writes into its checkpoints, and the checks ``--resume`` makes with it.

:class:`AtomicDetectionCheckpointer` writes each checkpoint to a temporary file and moves it into
place, so an interrupted save never leaves a truncated ``.pth`` (or a ``last_checkpoint``
pointing at one) for ``--resume`` to load. Beside the model, optimizer and iteration a
checkpoint holds the RNG states (:class:`RNGState`: a resumed run draws the same
augmentations), the config it was written under (``--resume`` refuses another config's
checkpoint: :func:`check_resume`) and its LR schedule (:class:`ScheduleRecord`: a resumed run
under another schedule says what changes). Resuming and clusters: docs/clusters.md.

Every weights file is read through :mod:`atss.fileio`'s safe readers, which refuse a file that
would run code (docs/published_weights.md); weights that do not fit the model are counted by
module in one line (:func:`incompatible_keys_message`), each tensor named in the log.
"""

import logging
import os
import random
from collections import defaultdict
from typing import Dict, Iterable, Optional

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from fvcore.common.checkpoint import (
    _filter_reused_missing_keys,
    _group_checkpoint_keys,
    _group_to_str,
    _IncompatibleKeys,
)
from omegaconf import DictConfig, OmegaConf

from ..fileio import atomic_write, load_pickle_file, load_torch_file

__all__ = [
    "AtomicDetectionCheckpointer",
    "RNGState",
    "ScheduleRecord",
    "check_resume",
    "config_identity",
    "incompatible_keys_message",
    "model_zoo_checkpoint",
]

logger = logging.getLogger("detectron2")

# The checkpoint key under which AtomicDetectionCheckpointer records its run's config file.
CONFIG_KEY = "config_file"


def _is_local(path: str) -> bool:
    """A plain file-system path; remote ones (``s3://``, ``manifold://``, ...) have a scheme."""
    return "://" not in path


class AtomicDetectionCheckpointer(DetectionCheckpointer):
    """:class:`DetectionCheckpointer` whose ``save`` and ``tag_last_checkpoint`` are atomic on
    local paths.

    fvcore's implementation streams ``torch.save`` straight into the final file, so a process
    killed mid-save (or a full disk) leaves a truncated checkpoint that ``--resume`` then tries to
    load. Here the data goes to a temporary file in the same folder, is fsync'ed, and replaces
    the target (:func:`atss.fileio.atomic_write`); ``last_checkpoint`` is updated the same way,
    after the checkpoint itself is complete. Remote paths (with a ``scheme://``) are written
    through fvcore's ``PathManager`` as Detectron2 does (atomic as far as that store is).

    With ``config_file`` (:func:`config_identity`), every checkpoint records it under
    :data:`CONFIG_KEY`, for :func:`check_resume`.
    """

    def __init__(self, model, save_dir: str = "", *, config_file: str = "", **kwargs) -> None:
        super().__init__(model, save_dir, **kwargs)
        self.config_file = config_file

    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        if self.config_file:
            data[CONFIG_KEY] = self.config_file
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        self._write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def _load_file(self, filename: str) -> dict:
        """Detectron2's reading of a weights file, through :mod:`atss.fileio`'s safe readers
        (:class:`~atss.fileio.UnsafeFileError` for a file that would run code): a ``.pkl`` of
        Detectron2's or Caffe2's model zoo (:func:`model_zoo_checkpoint`), a pycls ``.pyth``,
        anything else as ``torch.save``'s format (:meth:`_torch_load`)."""
        if filename.endswith(".pkl"):
            return model_zoo_checkpoint(load_pickle_file(filename))
        if filename.endswith(".pyth"):  # pycls: its model under "model_state"
            state = load_torch_file(filename)["model_state"]
            model = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
            return {"model": model, "__author__": "pycls", "matching_heuristics": True}
        return super()._load_file(filename)

    def _torch_load(self, f: str):
        """``torch.save``'s format, read by :func:`atss.fileio.load_torch_file` (checkpoints of
        this project written before :class:`RNGState` stored tensors included)."""
        return load_torch_file(f)

    def _log_incompatible_keys(self, incompatible: _IncompatibleKeys) -> None:
        """One warning line summing up the tensors not loaded by module
        (:func:`incompatible_keys_message`; fvcore logs one line per tensor plus multi-line
        lists), typically the classifier's output layer when fine-tuning a COCO model to
        another class count, which then keeps its fresh (prior-probability) init; every tensor
        by name on an info line (the run's ``log.txt``)."""
        missing = _filter_reused_missing_keys(self.model, incompatible.missing_keys)
        incompatible = incompatible._replace(missing_keys=missing)
        message = incompatible_keys_message(incompatible, self.model.state_dict().keys())
        if message:
            self.logger.warning(message)
            self.logger.info("Tensors not loaded: " + _incompatible_keys_listing(incompatible))

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        self._write(path, lambda f: f.write(last_filename_basename.encode()))

    def _write(self, path: str, write) -> None:
        """``write(binary_file)`` into ``path``: atomically when local, else via PathManager."""
        if _is_local(path):
            atomic_write(path, write)
            return
        self.path_manager.mkdirs(os.path.dirname(path))
        with self.path_manager.open(path, "wb") as f:
            write(f)


def model_zoo_checkpoint(data: dict) -> dict:
    """The checkpoint of a model-zoo ``.pkl`` file's content, as Detectron2's
    ``DetectionCheckpointer._load_file`` makes it: a Detectron2 model-zoo file (``"model"`` and
    ``"__author__"``) as it is; a Caffe2 / Detectron1 one (detection models' arrays under
    ``"blobs"``, ImageNet models' at the top) without the solver's ``*_momentum`` arrays, marked
    for Detectron2's name matching and Caffe2 conversion."""
    if "model" in data and "__author__" in data:
        return data
    blobs = data.get("blobs", data)
    model = {k: v for k, v in blobs.items() if not k.endswith("_momentum")}
    return {"model": model, "__author__": "Caffe2", "matching_heuristics": True}


def _by_module(keys: Iterable[str]) -> Dict[str, int]:
    """``{module: count}`` of ``keys``: grouped by their first name, each group named by the
    longest module path all its keys share (``head.cls_score`` for its weight and bias)."""
    groups = defaultdict(list)
    for key in keys:
        groups[key.split(".")[0]].append(key.split(".")[:-1])
    return {
        ".".join(os.path.commonprefix(paths)) or first: len(paths)
        for first, paths in sorted(groups.items())
    }


def _other_shape_and_missing(incompatible: _IncompatibleKeys):
    # fvcore drops the tensors of another shape before load_state_dict, which then reports
    # them as missing too: count each once, under its reason.
    other_shape = [k for k, _, _ in incompatible.incorrect_shapes]
    return other_shape, [k for k in incompatible.missing_keys if k not in set(other_shape)]


def incompatible_keys_message(incompatible: _IncompatibleKeys, model_keys) -> str:
    """One short line saying how many model tensors were loaded and, by module, how many were
    missing, of another shape or unexpected (``head: 22 missing``); "" if all fit.

    Args:
        incompatible: what fvcore's ``_load_model`` reports (``incorrect_shapes`` as
            ``(key, checkpoint shape, model shape)``, ``missing_keys``, ``unexpected_keys``).
        model_keys: the keys of the model's state dict (for the count of loaded tensors).
    """
    other_shape, missing = _other_shape_and_missing(incompatible)
    counts = [
        f"{module}: {n} {reason}"
        for reason, keys in [
            ("of another shape", other_shape),
            ("missing", missing),
            ("unexpected", incompatible.unexpected_keys),
        ]
        for module, n in _by_module(keys).items()
    ]
    if not counts:
        return ""
    not_loaded = len(other_shape) + len(missing)
    return (
        f"Loaded {len(model_keys) - not_loaded} of {len(model_keys)} model tensors "
        f"({not_loaded} keep their initialisation): {', '.join(counts)}"
    )


def _grouped(keys) -> str:
    """``head.cls_score.{bias, weight}, ...``: keys grouped by their module (fvcore's style)."""
    return ", ".join(sorted(k + _group_to_str(v) for k, v in _group_checkpoint_keys(keys).items()))


def _incompatible_keys_listing(incompatible: _IncompatibleKeys) -> str:
    """Every tensor :func:`incompatible_keys_message` counts, by name (grouped as fvcore does:
    ``head.cls_score.{bias, weight}``), with both shapes of those of another shape."""
    other_shape, missing = _other_shape_and_missing(incompatible)
    shapes = [
        f"{k} {tuple(ckpt)} in the checkpoint vs {tuple(model)} in the model"
        for k, ckpt, model in incompatible.incorrect_shapes
    ]
    parts = [
        ("of another shape (e.g. another class count)", ", ".join(shapes)),
        ("missing from the checkpoint", _grouped(missing)),
        ("unexpected (the model has no place for them)", _grouped(incompatible.unexpected_keys)),
    ]
    return "; ".join(f"{reason}: {names}" for reason, names in parts if names)


class RNGState:
    """Checkpointable (``state_dict``/``load_state_dict``) for the global RNGs of this process:
    Python's ``random``, NumPy's legacy global generator (Detectron2's augmentations draw from
    it) and torch's CPU (and, if present, CUDA) generators.

    The state holds tensors and plain Python values only, so a checkpoint loads with
    ``torch.load(weights_only=True)`` (the default from torch 2.6): NumPy's state, a tuple with
    an ``ndarray``, is stored as a dict with its 624 MT19937 keys in an int64 tensor. A state
    written before that change (NumPy's tuple as is) still loads: see
    :func:`atss.fileio.load_torch_file`.
    """

    def state_dict(self) -> dict:
        name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
        state = {
            "python": random.getstate(),  # (version, tuple of ints, float or None)
            "numpy": {
                "bit_generator": str(name),
                "keys": torch.from_numpy(keys.astype(np.int64)),
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "cached_gaussian": float(cached_gaussian),
            },
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        random.setstate(state["python"])
        numpy_state = state["numpy"]
        if isinstance(numpy_state, dict):
            numpy_state = (
                numpy_state["bit_generator"],
                numpy_state["keys"].numpy().astype(np.uint32),
                numpy_state["pos"],
                numpy_state["has_gauss"],
                numpy_state["cached_gaussian"],
            )
        np.random.set_state(numpy_state)
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------ --resume
def config_identity(config_file: str) -> str:
    """``config_file`` from its last ``configs`` folder on (``configs/Shapes/x.py``), the same
    on every machine of a cluster and in every checkout; its absolute normalised path when no
    folder of it is named ``configs``."""
    path = os.path.normpath(os.path.abspath(config_file))
    parts = path.split(os.sep)
    if "configs" in parts[:-1]:
        last = len(parts) - 2 - parts[:-1][::-1].index("configs")
        return "/".join(parts[last:])
    return path


def _recorded_config(path: str) -> Optional[str]:
    """The config identity recorded in the checkpoint file ``path``; None when it records none
    (written by another tool). Tensors are memory-mapped, not read, where the file allows it."""
    data = load_torch_file(path, mmap=True)
    return data.get(CONFIG_KEY) if isinstance(data, dict) else None


def check_resume(output_dir: str, config_file: str) -> None:
    """Refuse to ``--resume`` from a last checkpoint written under another config: a second
    config pointed at the first one's folder would otherwise load its model, optimizer and
    iteration without a word. Overrides are not part of the identity (another
    ``train.max_iter`` extends a run: :class:`ScheduleRecord` says what that changes).

    Nothing to check when ``output_dir`` has no ``last_checkpoint``, when it names a missing
    file, or when the folder is remote (``scheme://``); a checkpoint without a record is
    resumed with a warning.

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
    recorded = _recorded_config(checkpoint)
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


def _flat(value, prefix: str) -> Dict[str, object]:
    """A config node as ``{dotted key: plain value}``, callables by their qualified names."""
    if isinstance(value, dict):
        flat: Dict[str, object] = {}
        for key, item in value.items():
            flat.update(_flat(item, f"{prefix}.{key}"))
        return flat
    if isinstance(value, (list, tuple)):
        value = [v if isinstance(v, (bool, int, float, str)) else repr(v) for v in value]
    elif hasattr(value, "__qualname__"):  # a LazyCall target: a function or a class
        value = f"{value.__module__}.{value.__qualname__}"
    elif not isinstance(value, (bool, int, float, str, type(None))):
        value = repr(value)
    return {prefix: value}


class ScheduleRecord:
    """Checkpointable record of the LR schedule a run trains under: ``train.max_iter``, the
    ``lr_multiplier`` config, and the multiplier of the iteration after the checkpoint.

    Detectron2's ``LRScheduler`` hook evaluates the multiplier at ``iteration / max_iter``, so
    resuming with another ``train.max_iter`` (or other milestones) moves the whole schedule,
    and the LR of the resumed iteration jumps. After a resume, :meth:`change` says so in one
    line.

    Args:
        cfg: the run's config (``train.max_iter``, ``lr_multiplier``).
        multiplier: the instantiated ``cfg.lr_multiplier`` (a ParamScheduler).
        trainer: the trainer, whose ``iter`` is the iteration a checkpoint is written after.
    """

    def __init__(self, cfg, multiplier, trainer) -> None:
        self.max_iter = int(cfg.train.max_iter)
        self.values = {"train.max_iter": self.max_iter}
        node = cfg.lr_multiplier
        if isinstance(node, DictConfig):
            node = OmegaConf.to_container(node, resolve=True)
        self.values.update(_flat(node, "lr_multiplier"))
        self.multiplier = multiplier
        self.trainer = trainer
        self.loaded: Optional[dict] = None  # what the resumed checkpoint recorded

    def multiplier_at(self, iteration: int) -> float:
        return float(self.multiplier(min(iteration / self.max_iter, 1.0)))

    def state_dict(self) -> dict:
        return {"values": self.values, "multiplier": self.multiplier_at(self.trainer.iter + 1)}

    def load_state_dict(self, state: dict) -> None:
        self.loaded = state

    def change(self, iteration: int, base_lr: float) -> Optional[str]:
        """One line naming the values that differ from the resumed checkpoint's and the LR of
        ``iteration`` (the first resumed one) under both, for a base LR of ``base_lr``; None
        when nothing differs or nothing was resumed."""
        old = (self.loaded or {}).get("values")
        if not old or old == self.values:
            return None
        keys = list(dict.fromkeys([*old, *self.values]))
        changed = [
            f"{k} {old.get(k, '(none)')} -> {self.values.get(k, '(none)')}"
            for k in keys
            if old.get(k) != self.values.get(k)
        ]
        before = base_lr * self.loaded["multiplier"]
        after = base_lr * self.multiplier_at(iteration)
        return (
            f"--resume under another schedule than the checkpoint's ({'; '.join(changed)}): "
            f"the LR at iteration {iteration} goes from {before:.6g} to {after:.6g}"
        )
