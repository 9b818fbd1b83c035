"""Which device a run uses: one rule for training, evaluation, benchmarks and the predictor.

No config under ``configs/`` sets ``train.device``: they keep Detectron2's ``common/train.py``
value, "cuda", which is resolved here when the run starts: CUDA when this machine has it, else
the CPU. ``train.device=cpu`` (or ``cuda:1``, ...) on the command line picks a device
explicitly; any CUDA device falls back to the CPU on a machine without CUDA.
"""

import logging
from typing import Optional

import torch
from detectron2.utils import comm

__all__ = ["DEFAULT_DEVICE", "available_device", "resolve_device"]

logger = logging.getLogger("detectron2")

# What a config without train.device (or with null) asks for: Detectron2's default.
DEFAULT_DEVICE = "cuda"


def available_device(requested: Optional[str] = DEFAULT_DEVICE) -> str:
    """``requested`` ("cpu", "cuda", "cuda:1", ...), or "cpu" (with a log line) when it asks for
    CUDA and CUDA is not available. None or "" means :data:`DEFAULT_DEVICE`."""
    device = str(requested) if requested else DEFAULT_DEVICE
    if device.startswith("cuda") and not torch.cuda.is_available():
        logger.warning(f"device {device} requested but CUDA is not available: using the CPU.")
        return "cpu"
    return device


def resolve_device(cfg) -> str:
    """Set and return ``cfg.train.device`` for a training or evaluation run.

    CUDA when available, else the CPU (:func:`available_device`); several processes on the
    CPU get DDP ``device_ids=None`` (gloo; the default ``[local_rank]`` fails on CPU modules).

    Raises:
        ValueError: ``train.amp.enabled`` on the CPU (Detectron2's AMPTrainer needs CUDA).
    """
    device = available_device(cfg.train.get("device", DEFAULT_DEVICE))
    cfg.train.device = device
    if device == "cpu" and comm.get_world_size() > 1 and "device_ids" not in cfg.train.ddp:
        cfg.train.ddp.device_ids = None
    if cfg.train.get("amp", {}).get("enabled", False) and device == "cpu":
        raise ValueError(
            "train.amp.enabled=True needs CUDA (Detectron2's AMPTrainer is GPU-only); "
            "run with train.amp.enabled=False on the CPU."
        )
    return device
