"""atss.engine: what ``train_net.py``, ``demo.py`` and the tools share, one module a job.

* :mod:`.config` — loading a config with checked overrides, and building its model with its
  weights (``train.init_checkpoint``, or ``--random-weights``).
* :mod:`.cli` — the command line: flags first, overrides last; ``--run``; usage errors;
  Detectron2's launch with a bounded rendezvous.
* :mod:`.train_loop` — training and evaluation (``train_net.py``'s body), with the sampler
  that lets ``--resume`` continue the data stream.
* :mod:`.checkpoint` — atomic checkpoints, the RNG states, the ``--resume`` checks.
* :mod:`.predictor` — a trained model on single images, and the model's class list.
* :mod:`.device` — which device a run uses, and in which precision (``train.amp``).
"""

from .checkpoint import AtomicDetectionCheckpointer, RNGState, check_resume, config_identity
from .device import available_device, resolve_device

__all__ = [
    "AtomicDetectionCheckpointer",
    "RNGState",
    "available_device",
    "check_resume",
    "config_identity",
    "resolve_device",
]
