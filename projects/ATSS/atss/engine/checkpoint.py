"""Crash-safe checkpoints and a checkpointable for the random number generators."""

import os
import random

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer

from ..fileio import atomic_write

__all__ = ["AtomicDetectionCheckpointer", "RNGState"]


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
        self._write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

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
