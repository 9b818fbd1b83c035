"""atss.engine: training-loop helpers used by the repository's ``train_net.py``.

* :class:`AtomicDetectionCheckpointer` — checkpoints written to a temporary file and moved into
  place with ``os.replace``, so an interrupted save never leaves a truncated ``.pth`` (or a
  ``last_checkpoint`` pointing at one).
* :class:`RNGState` — a checkpointable holding the Python / NumPy / torch RNG states, so a resumed
  run draws the same augmentations as an uninterrupted one.
* :class:`ResumableTrainingSampler` — Detectron2's ``TrainingSampler`` that can start part-way
  through its (seeded) index stream, so a resumed run sees the batches it would have seen.
"""

from .checkpoint import AtomicDetectionCheckpointer, RNGState
from .sampler import ResumableTrainingSampler

__all__ = ["AtomicDetectionCheckpointer", "RNGState", "ResumableTrainingSampler"]
