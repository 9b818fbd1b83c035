"""Which device and which precision a run uses: one rule for training, evaluation, benchmarks
and the predictor.

No config under ``configs/`` sets ``train.device``: they keep Detectron2's ``common/train.py``
value, "cuda", which is resolved here when the run starts: CUDA when this machine has it, else
the CPU. ``train.device=cpu`` (or ``cuda:1``, ...) on the command line picks a device
explicitly; any CUDA device falls back to the CPU on a machine without CUDA.

Mixed precision has one switch, Detectron2's ``train.amp.enabled``, for training and inference
on every device; :func:`autocast_dtype` is the rule that turns it into an autocast dtype.
"""

import contextlib
import logging
from typing import Optional

import torch
from detectron2.utils import comm

__all__ = [
    "DEFAULT_DEVICE",
    "PRECISIONS",
    "autocast",
    "autocast_dtype",
    "available_device",
    "cpu_has_native_bf16",
    "resolve_device",
]

logger = logging.getLogger("detectron2")

# What a config without train.device (or with null) asks for: Detectron2's default.
DEFAULT_DEVICE = "cuda"
# The precisions a network runs in, by name: train.amp.precision takes fp16 or bf16 (absent or
# null: the device's choice, see autocast_dtype), tools/benchmark.py --precision any of them.
PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
AMP_PRECISIONS = ("fp16", "bf16")
# /proc/cpuinfo flags of x86 CPUs that compute in bf16 natively (AVX512-BF16, AMX).
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


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
    """
    device = available_device(cfg.train.get("device", DEFAULT_DEVICE))
    cfg.train.device = device
    if device == "cpu" and comm.get_world_size() > 1 and "device_ids" not in cfg.train.ddp:
        cfg.train.ddp.device_ids = None
    return device


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes in bf16 natively: one of :data:`NATIVE_BF16_FLAGS` among the
    flags of Linux's ``cpuinfo``. torch 2.3's own query (``torch.ops.mkldnn.
    _is_mkldnn_bf16_supported``) answers True for any AVX-512 CPU, where bf16 is emulated and
    slower than fp32, so it cannot decide. False without the file (not Linux) and on other
    architectures: there ``train.amp.precision=bf16`` asks for bf16 explicitly."""
    try:
        with open(cpuinfo) as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")))
    except (OSError, StopIteration, IndexError):
        return False
    return any(flag in flags for flag in NATIVE_BF16_FLAGS)


def autocast_dtype(device: str, amp_cfg) -> Optional[torch.dtype]:
    """The dtype the network runs in under ``train.amp`` on ``device``, or None for fp32.

    With ``amp_cfg.enabled`` (``train.amp.enabled=True``):

    * CUDA: float16 (trained with a gradient scaler: Detectron2's ``AMPTrainer``), or bfloat16
      with ``amp_cfg.precision="bf16"``;
    * CPU: bfloat16 where the CPU has it natively (:func:`cpu_has_native_bf16`); elsewhere fp32,
      said in one log line (emulated bf16 is slower than fp32), unless ``precision="bf16"``
      asks for it anyway.

    The model's parameters, and so its checkpoints, stay fp32 in every case; what runs in the
    lower precision is the network (backbone and head; the head's GroupNorm computes in fp32,
    :class:`~atss.layers.GroupNormFP32`), and the mathematics after it stays in fp32 (the
    head's outputs are cast at the boundary: :mod:`atss.modeling.meta_arch`).

    Args:
        device: "cpu", "cuda", "cuda:1", ...
        amp_cfg: ``cfg.train.amp``, a mapping with ``enabled`` and optionally ``precision``
            ("fp16", "bf16", or null / absent for the device's choice above).

    Raises:
        ValueError: an unknown precision, fp16 on the CPU, bf16 on a GPU without it, or another
            device type; the message names ``train.amp`` and the fix.
    """
    if not amp_cfg.get("enabled", False):
        return None
    precision = amp_cfg.get("precision", None)
    if precision is not None and precision not in AMP_PRECISIONS:
        raise ValueError(
            f"train.amp.precision={precision!r} is not one of {AMP_PRECISIONS}: set "
            "train.amp.precision=bf16 or fp16, or null for the device's choice"
        )
    kind = torch.device(device).type
    if kind == "cuda":
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise ValueError(
                f"train.amp.precision=bf16: {torch.cuda.get_device_name(device)} has no bf16; "
                "set train.amp.precision=fp16"
            )
        return PRECISIONS[precision or "fp16"]
    if kind != "cpu":
        raise ValueError(
            f"train.amp.enabled=True on device {device!r}: mixed precision runs on cuda and cpu "
            "here; set train.amp.enabled=False"
        )
    if precision == "fp16":
        raise ValueError(
            "train.amp.precision=fp16 is for CUDA (its gradient scaler); on the CPU set "
            "train.amp.precision=bf16, or null"
        )
    if cpu_has_native_bf16():
        return torch.bfloat16
    if precision == "bf16":
        logger.warning(
            "train.amp.precision=bf16: this CPU has no native bf16 "
            f"({' / '.join(NATIVE_BF16_FLAGS)}): bf16 is emulated, slower than fp32"
        )
        return torch.bfloat16
    logger.warning(
        "train.amp.enabled=True: this CPU has no native bf16 "
        f"({' / '.join(NATIVE_BF16_FLAGS)}), where bf16 is slower than fp32: running in fp32"
    )
    return None


def autocast(device: str, dtype: Optional[torch.dtype]):
    """``torch.autocast`` on ``device``'s type in ``dtype`` (:func:`autocast_dtype`); a context
    that changes nothing when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)
