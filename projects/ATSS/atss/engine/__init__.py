"""atss.engine: what the entry points (``train_net.py``, ``demo.py``, ``tools/``) share.

* :mod:`.train_loop` — training and evaluation from a LazyConfig (``train_net.py``'s body):
  :func:`~.train_loop.main`, :func:`~.train_loop.do_train`, :func:`~.train_loop.do_test`.
* :mod:`.checkpoint` — :class:`AtomicDetectionCheckpointer` (checkpoints written to a temporary
  file and moved into place, so an interrupted save never leaves a truncated ``.pth`` or a
  ``last_checkpoint`` pointing at one) and :class:`RNGState` (the Python / NumPy / torch RNG
  states in the checkpoint, so a resumed run draws the same augmentations).
* :mod:`.sampler` — :class:`ResumableTrainingSampler`: Detectron2's ``TrainingSampler`` that can
  start part-way through its seeded index stream, so a resumed run sees the same batches.
* :mod:`.device` — :func:`resolve_device` (CUDA when available, else the CPU; DDP on CPU, AMP
  needs CUDA).
* :mod:`.resume` — :func:`check_resume`: ``--resume`` refuses a last checkpoint written under
  another config file (each checkpoint records its :func:`config_identity`).
* :mod:`.config` — :func:`~.config.load_config`: a config file, its overrides and the data of
  its ``dataset`` node, as every entry point loads them.
* :mod:`.predictor` — :class:`~.predictor.ATSSPredictor`: a config's model on single images.
* :mod:`.overrides` — the check every ``key=value`` override passes (an unknown key is refused
  with the nearest names) and the config-file check, both called by :func:`.config.load_config`.
* :mod:`.weights` — ``train.init_checkpoint`` as the one way to give weights, and
  ``--random-weights`` as the one way to run an untrained model.
* :mod:`.schedule` — :func:`shortened_schedule_overrides`: one rule for shorter runs.
* :mod:`.metrics` — reading a run's ``metrics.json``.
"""

from .checkpoint import AtomicDetectionCheckpointer, RNGState
from .device import available_device, resolve_device
from .resume import check_resume, config_identity
from .sampler import ResumableTrainingSampler
from .schedule import scale_milestones, shortened_schedule_overrides

__all__ = [
    "AtomicDetectionCheckpointer",
    "RNGState",
    "ResumableTrainingSampler",
    "available_device",
    "check_resume",
    "config_identity",
    "resolve_device",
    "scale_milestones",
    "shortened_schedule_overrides",
]
