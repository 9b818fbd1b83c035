"""Crash-safe checkpoints and a checkpointable for the random number generators."""

import glob
import os
import random
import tempfile

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from fvcore.common.checkpoint import (
    _filter_reused_missing_keys,
    _group_checkpoint_keys,
    _group_to_str,
    _IncompatibleKeys,
)

__all__ = ["AtomicDetectionCheckpointer", "RNGState", "atomic_torch_save"]


def _atomic_write(path: str, write) -> None:
    """Call ``write(file_object)`` on a temporary file beside ``path``, fsync, then rename it
    over ``path``. Either the old file or the complete new one exists at every moment.

    A process killed mid-write (SIGKILL, OOM killer) leaves its hidden temporary file behind;
    the next write of the same ``path`` removes such leftovers, so they never pile up."""
    folder = os.path.dirname(os.path.abspath(path))
    prefix = f".{os.path.basename(path)}."
    for stale in glob.glob(os.path.join(glob.escape(folder), glob.escape(prefix) + "*.tmp")):
        os.remove(stale)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_torch_save(obj, path: str) -> None:
    """``torch.save(obj, path)`` that never leaves a partial file at ``path``."""
    _atomic_write(path, lambda f: torch.save(obj, f))


class AtomicDetectionCheckpointer(DetectionCheckpointer):
    """:class:`DetectionCheckpointer` whose ``save`` and ``tag_last_checkpoint`` are atomic.

    fvcore's implementation streams ``torch.save`` straight into the final file, so a process
    killed mid-save (or a full disk) leaves a truncated checkpoint that ``--resume`` then tries to
    load. Here the data goes to a temporary file in the same folder, is fsync'ed, and replaces
    the target with ``os.replace``; ``last_checkpoint`` is updated the same way, after the
    checkpoint itself is complete.
    """

    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        os.makedirs(self.save_dir, exist_ok=True)
        atomic_torch_save(data, save_file)
        self.tag_last_checkpoint(basename)

    def _log_incompatible_keys(self, incompatible: _IncompatibleKeys) -> None:
        """One warning line for the tensors not loaded (fvcore logs one line per tensor plus
        multi-line lists): typically the classifier's output layer when fine-tuning a COCO
        model to another class count, which then keeps its fresh (prior-probability) init."""
        missing = _filter_reused_missing_keys(self.model, incompatible.missing_keys)
        incompatible = _IncompatibleKeys(
            missing_keys=missing,
            unexpected_keys=incompatible.unexpected_keys,
            incorrect_shapes=incompatible.incorrect_shapes,
        )
        message = incompatible_keys_message(incompatible, self.model.state_dict().keys())
        if message:
            self.logger.warning(message)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        _atomic_write(path, lambda f: f.write(last_filename_basename.encode()))


def _grouped(keys) -> str:
    """``head.cls_score.{bias, weight}, ...``: keys grouped by their module (fvcore's style)."""
    return ", ".join(sorted(k + _group_to_str(v) for k, v in _group_checkpoint_keys(keys).items()))


def incompatible_keys_message(incompatible: _IncompatibleKeys, model_keys) -> str:
    """One line saying which model tensors were not loaded and why, or "" if all were.

    Args:
        incompatible: what fvcore's ``_load_model`` reports (``incorrect_shapes`` as
            ``(key, checkpoint shape, model shape)``, ``missing_keys``, ``unexpected_keys``).
        model_keys: the keys of the model's state dict (for the count of loaded tensors).
    """
    # fvcore drops the tensors of another shape before load_state_dict, which then reports
    # them as missing too: count each once, under its reason.
    other_shape = {k for k, _, _ in incompatible.incorrect_shapes}
    missing = [k for k in incompatible.missing_keys if k not in other_shape]
    parts = []
    if incompatible.incorrect_shapes:
        shapes = [
            f"{k} {tuple(ckpt)} in the checkpoint vs {tuple(model)} in the model"
            for k, ckpt, model in incompatible.incorrect_shapes
        ]
        parts.append("shape differs (e.g. another class count): " + ", ".join(shapes))
    if missing:
        parts.append("not in the checkpoint: " + _grouped(missing))
    if not parts and not incompatible.unexpected_keys:
        return ""
    not_loaded = len(other_shape) + len(missing)
    message = (
        f"Loaded {len(model_keys) - not_loaded} of {len(model_keys)} model tensors; "
        f"{not_loaded} keep their initialisation"
    )
    if parts:
        message += ": " + "; ".join(parts)
    if incompatible.unexpected_keys:
        message += "; checkpoint tensors the model has no place for: " + _grouped(
            incompatible.unexpected_keys
        )
    return message


class RNGState:
    """Checkpointable (``state_dict``/``load_state_dict``) for the global RNGs of this process:
    Python's ``random``, NumPy's legacy global generator (Detectron2's augmentations draw from
    it) and torch's CPU (and, if present, CUDA) generators."""

    def state_dict(self) -> dict:
        state = {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
