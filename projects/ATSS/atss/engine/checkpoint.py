"""Crash-safe checkpoints and a checkpointable for the random number generators."""

import glob
import os
import random
import tempfile

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer

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

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        _atomic_write(path, lambda f: f.write(last_filename_basename.encode()))


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
