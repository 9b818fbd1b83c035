"""
Measuring primitives the benchmark tools share (``tools/benchmark.py``, ``tools/bench_*.py``):
the machine a number was measured on, timed iterations that end with a device synchronisation,
a median with its spread, peak memory (process RSS, CUDA allocator), convolution and matmul
peaks of this machine, and fvcore's FLOP count of a dense detector's forward.

Every timed iteration ends with ``torch.cuda.synchronize`` on a GPU, so a time is the work done,
not the work queued. FLOPs are fvcore's count (one multiply-add = one FLOP).
"""

import os
import platform
import resource
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch
from detectron2.config import LazyCall as L
from detectron2.data import transforms as T
from torch import nn

__all__ = [
    "configure",
    "cpu_model_name",
    "describe_machine",
    "synchronize",
    "time_iterations",
    "summarize",
    "peak_rss_mib",
    "reset_cuda_peak",
    "cuda_peak_mib",
    "conv_peak_gflops",
    "matmul_peak_gflops",
    "dense_forward_flops",
]


# ------------------------------------------------------------------------------ the machine
def cpu_model_name() -> str:
    """The CPU's marketing name (``/proc/cpuinfo`` on Linux, else ``platform.processor``)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine(device: str) -> Dict[str, object]:
    """CPU model and core count, torch threads and versions, and the CUDA device if used."""
    info: Dict[str, object] = {
        "cpu": cpu_model_name(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": device,
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    if str(device).startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        info["cuda_device"] = f"{props.name} ({props.total_memory / 2**30:.0f} GiB)"
        info["cuda"] = torch.version.cuda
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = None
    return info


# ------------------------------------------------------------------------------ timing
def synchronize(device) -> None:
    """Wait for the device's queued work (no-op on the CPU, where every op is synchronous)."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


def time_iterations(step: Callable[[int], object], iters: int, warmup: int, device) -> List[float]:
    """
    Run ``step(i)`` for ``warmup`` untimed then ``iters`` timed iterations.

    Returns:
        ``iters`` wall-clock durations in seconds, each between two device synchronisations.
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    for i in range(warmup):
        step(i)
    synchronize(device)
    seconds = []
    for i in range(warmup, warmup + iters):
        start = time.perf_counter()
        step(i)
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def summarize(seconds: Sequence[float], images_per_iter: int) -> Dict[str, float]:
    """Median, min and max seconds per iteration and the images per second at the median."""
    median = statistics.median(seconds)
    return {
        "s_per_iter_median": median,
        "s_per_iter_min": min(seconds),
        "s_per_iter_max": max(seconds),
        "images_per_s": images_per_iter / median,
        "iters": len(seconds),
    }


# ------------------------------------------------------------------------------ memory
def peak_rss_mib() -> float:
    """Peak resident memory of this process since it started (MiB; never reset)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if platform.system() == "Darwin" else peak / 2**10  # bytes vs KiB


def reset_cuda_peak(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))
        torch.cuda.reset_peak_memory_stats(torch.device(device))


def cuda_peak_mib(device) -> Optional[float]:
    """Peak memory allocated by tensors on ``device`` since the last reset (MiB), or None."""
    if not str(device).startswith("cuda"):
        return None
    torch.cuda.synchronize(torch.device(device))
    return torch.cuda.max_memory_allocated(torch.device(device)) / 2**20


# ------------------------------------------------------------------------------ peaks
def _best_rate(fn: Callable[[], object], work: float, rounds: int, device) -> float:
    """``work`` / the fastest of ``rounds`` timed calls, after one warm-up call."""
    return work / min(time_iterations(lambda _: fn(), rounds, 1, device))


def conv_peak_gflops(
    device,
    channels: int = 128,
    size: int = 80,
    batch: int = 4,
    rounds: int = 5,
    backward: bool = False,
) -> float:
    """
    Measured fp32 throughput of a 3x3 convolution (``channels`` -> ``channels``, stride 1, on
    ``batch`` x ``size`` x ``size``), in GFLOP/s with fvcore's unit (multiply-adds). With
    ``backward=True`` a forward + backward (input and weight gradients) counted as 3 forwards,
    the same convention as the training FLOP count.
    """
    conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False).to(device)
    x = torch.randn(batch, channels, size, size, device=device, requires_grad=backward)
    macs = batch * channels * channels * 9 * size * size
    if not backward:
        with torch.no_grad():
            return _best_rate(lambda: conv(x), macs / 1e9, rounds, device)
    grad = torch.randn(batch, channels, size, size, device=device)

    def fwd_bwd():
        conv.zero_grad(set_to_none=True)
        x.grad = None
        conv(x).backward(grad)

    return _best_rate(fwd_bwd, 3 * macs / 1e9, rounds, device)


def matmul_peak_gflops(device, n: int = 1024, rounds: int = 5) -> float:
    """Measured fp32 (n x n) @ (n x n) throughput in GFLOP/s (multiply-adds)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    return _best_rate(lambda: a @ b, n**3 / 1e9, rounds, device)


# ------------------------------------------------------------------------------ FLOPs
class _DenseForward(nn.Module):
    """Backbone + head of a dense detector, as one module of the padded image batch."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.backbone = detector.backbone
        self.head = detector.head
        self.in_features = list(detector.head_in_features)

    def forward(self, images: torch.Tensor):
        features = self.backbone(images)
        return self.head([features[f] for f in self.in_features])


def dense_forward_flops(detector: nn.Module, batched_inputs: List[dict]) -> float:
    """
    fvcore's FLOP count (multiply-adds) of the backbone + head forward on the normalised, padded
    batch of ``batched_inputs``, in GFLOP for the whole batch. Matcher, losses and
    post-processing are not counted (they are not convolutions and cost little arithmetic).
    """
    from fvcore.nn import FlopCountAnalysis

    with torch.no_grad():
        images = detector.preprocess_image(batched_inputs).tensor
        analysis = FlopCountAnalysis(_DenseForward(detector).eval(), (images,))
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        return analysis.total() / 1e9


# ------------------------------------------------------------------------------ config
def configure(cfg, size: Optional[Sequence[int]] = None, batch: Optional[int] = None):
    """
    Apply the command line's ``--size`` and ``--batch`` to a LazyConfig (in place).

    ``size`` (H, W) replaces the train and test augmentations with an exact resize to H x W, so
    that every timed input has that shape; ``batch`` sets the train and test batch sizes.
    """
    if size is not None:
        height, width = (int(s) for s in size)
        for split in ("train", "test"):
            cfg.dataloader[split].mapper.augmentations = [L(T.Resize)(shape=(height, width))]
    if batch is not None:
        cfg.dataloader.train.total_batch_size = int(batch)
        cfg.dataloader.test.batch_size = int(batch)
    return cfg
