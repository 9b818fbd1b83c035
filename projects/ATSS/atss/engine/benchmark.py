"""
Measure a config's speed the way Detectron2's ``tools/benchmark.py`` does, with what a user
needs to judge the numbers: the machine, a median with its spread, peak memory, and for
training the FLOP count next to a matmul/convolution peak measured on the same machine.

Tasks (``tools/benchmark.py --task``):

* ``data``: seconds per batch of the training loader (decode, augment, batch);
* ``train``: one optimizer step of Detectron2's :class:`SimpleTrainer` (forward, losses,
  backward, metrics, step) on batches loaded beforehand, so loading is not counted;
* ``eval``: the test loader and the model together, what an evaluation costs per batch;
* ``infer``: the model alone on test images loaded beforehand, in ``eager`` PyTorch, traced
  ``torchscript`` or ``onnxruntime`` (the exported graph of :mod:`atss.export`).

Every timed iteration ends with ``torch.cuda.synchronize`` on a GPU, so a time is the work done,
not the work queued. FLOPs are fvcore's count (one multiply-add = one FLOP) of the backbone and
head forward; a training step is counted as 3 forwards (backward ~ 2 forwards), an
approximation that overstates the work of frozen layers (no weight gradients).
"""

import itertools
import logging
import os
import platform
import resource
import statistics
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch
from detectron2.config import LazyCall as L
from detectron2.config import instantiate
from detectron2.data import transforms as T
from detectron2.engine import SimpleTrainer
from detectron2.utils.events import EventStorage
from torch import nn

from .config import NO_WEIGHTS, RANDOM, TRAINED, build_model
from .device import available_device

__all__ = [
    "TASKS",
    "RUNTIMES",
    "describe_machine",
    "synchronize",
    "time_iterations",
    "summarize",
    "peak_rss_mib",
    "conv_peak_gflops",
    "matmul_peak_gflops",
    "dense_forward_flops",
    "configure",
    "run_benchmark",
    "format_report",
]

logger = logging.getLogger(__name__)

TASKS = ("data", "train", "eval", "infer")
RUNTIMES = ("eager", "torchscript", "onnxruntime")
# Distinct batches loaded before timing training/inference; the timed loop cycles over them.
MAX_CACHED_BATCHES = 8


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


def _build_model(cfg, device, random_weights: bool):
    """The model to train, from ``train.init_checkpoint`` as training starts (any part of a
    model, e.g. a pretrained backbone, or nothing); nothing loaded with ``random_weights``."""
    from detectron2.checkpoint import DetectionCheckpointer

    model = build_model(cfg, NO_WEIGHTS, device)
    if not random_weights:
        DetectionCheckpointer(model).load(cfg.train.get("init_checkpoint", ""))
    return model


def _build_trained_model(cfg, device, random_weights: bool):
    """The model to time in evaluation / inference, in eval mode: a whole trained model from
    ``train.init_checkpoint`` or, with ``random_weights``, an untrained one
    (:func:`~.weights.load_trained_weights`)."""
    return build_model(cfg, RANDOM if random_weights else TRAINED, device, what="benchmark")


def _cache(loader, num_batches: int) -> List:
    return list(itertools.islice(iter(loader), num_batches))


# ------------------------------------------------------------------------------ tasks
def _bench_data(cfg, iters, warmup, device):
    loader = iter(instantiate(cfg.dataloader.train))
    batch_size = int(cfg.dataloader.train.total_batch_size)
    seconds = time_iterations(lambda _: next(loader), iters, warmup, device)
    return summarize(seconds, batch_size), {}


def _bench_train(cfg, iters, warmup, device, random_weights):
    model = _build_model(cfg, device, random_weights)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    batches = _cache(instantiate(cfg.dataloader.train), min(iters + warmup, MAX_CACHED_BATCHES))
    extra = {
        "input_shapes": [tuple(d["image"].shape) for d in batches[0]],
        "gflop_forward": dense_forward_flops(model, batches[0]),
    }
    extra["gflop_step"] = 3 * extra["gflop_forward"]
    trainer = SimpleTrainer(model, itertools.cycle(batches), optimizer)
    reset_cuda_peak(device)
    with EventStorage(0) as storage:

        def step(i):
            trainer.iter = storage.iter = i
            trainer.run_step()

        seconds = time_iterations(step, iters, warmup, device)
    stats = summarize(seconds, len(batches[0]))
    extra["achieved_gflops"] = extra["gflop_step"] / stats["s_per_iter_median"]
    return stats, extra


def _bench_eval(cfg, iters, warmup, device, random_weights):
    model = _build_trained_model(cfg, device, random_weights)
    loader = instantiate(cfg.dataloader.test)
    state = {"it": iter(loader)}

    def step(_):
        try:
            batch = next(state["it"])
        except StopIteration:  # the test set is finite: start it again
            state["it"] = iter(loader)
            batch = next(state["it"])
        with torch.no_grad():
            model(batch)

    reset_cuda_peak(device)
    seconds = time_iterations(step, iters, warmup, device)
    return summarize(seconds, int(cfg.dataloader.test.get("batch_size", 1))), {}


def _infer_batches(cfg, batch_size: int, num_batches: int) -> List[List[torch.Tensor]]:
    """``num_batches`` lists of ``batch_size`` test images (C, H, W), after the test mapper."""
    loader = instantiate(cfg.dataloader.test)
    images = [d["image"] for batch in loader for d in batch][: batch_size * num_batches]
    if not images:
        raise ValueError(f"test dataset {cfg.dataloader.test.dataset.names!r} is empty")
    cycled = itertools.cycle(images)
    return [[next(cycled).float() for _ in range(batch_size)] for _ in range(num_batches)]


def build_runtime(model, runtime: str, sample: List[torch.Tensor], workdir: str, threads=None):
    """
    A callable mapping a list of (3, H, W) images (``len(sample)`` of them) to detections:
    the eager model, its traced TorchScript module or an onnxruntime session of its export.
    """
    if runtime == "eager":
        return lambda images: model([{"image": x} for x in images])
    if runtime == "torchscript":
        from atss.export import export_torchscript

        traced = export_torchscript(model, sample, os.path.join(workdir, "model.ts"))
        return lambda images: traced(*images)
    if runtime == "onnxruntime":
        from atss.export import export_onnx

        from .onnx_runtime import onnx_session

        path = os.path.join(workdir, "model.onnx")
        export_onnx(model, [x.cpu() for x in sample], path)
        session = onnx_session(path, str(sample[0].device), threads)
        names = [f"image{i}" for i in range(len(sample))]
        return lambda images: session.run(None, {n: x.cpu().numpy() for n, x in zip(names, images)})
    raise ValueError(f"unknown runtime {runtime!r}; choose one of {RUNTIMES}")


def _bench_infer(cfg, iters, warmup, device, runtime, threads, random_weights):
    model = _build_trained_model(cfg, device, random_weights)
    batch_size = int(cfg.dataloader.test.get("batch_size", 1))
    batches = _infer_batches(cfg, batch_size, min(iters + warmup, MAX_CACHED_BATCHES))
    batches = [[x.to(device) for x in b] for b in batches]
    with tempfile.TemporaryDirectory() as workdir:
        run = build_runtime(model, runtime, batches[0], workdir, threads)
        reset_cuda_peak(device)
        with torch.no_grad():
            seconds = time_iterations(
                lambda i: run(batches[i % len(batches)]), iters, warmup, device
            )
    extra = {
        "input_shapes": [tuple(x.shape) for x in batches[0]],
        "gflop_forward": dense_forward_flops(model, [{"image": x} for x in batches[0]]),
    }
    stats = summarize(seconds, batch_size)
    extra["achieved_gflops"] = extra["gflop_forward"] / stats["s_per_iter_median"]
    return stats, extra


def run_benchmark(
    cfg,
    task: str,
    runtime: str = "eager",
    iters: int = 10,
    warmup: int = 2,
    threads: Optional[int] = None,
    peaks: bool = True,
    random_weights: bool = False,
) -> Dict[str, object]:
    """
    Run one task on a configured LazyConfig (see :func:`configure`). ``eval`` and ``infer``
    time the trained model of ``train.init_checkpoint``
    (:class:`~.weights.WeightsError` without one), or with ``random_weights`` an untrained one.

    Returns:
        a dict with ``settings``, ``machine``, the timing summary (:func:`summarize`), peak
        memory, the FLOP figures of ``train``/``infer`` and, with ``peaks``, the measured conv
        and matmul peaks of this machine.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
    if runtime != "eager" and task != "infer":
        raise ValueError(f"--runtime {runtime} applies to --task infer only (got --task {task})")
    if threads:
        torch.set_num_threads(int(threads))
    device = cfg.train.device = available_device(cfg.train.get("device"))
    if task == "data":
        stats, extra = _bench_data(cfg, iters, warmup, device)
    elif task == "train":
        stats, extra = _bench_train(cfg, iters, warmup, device, random_weights)
    elif task == "eval":
        stats, extra = _bench_eval(cfg, iters, warmup, device, random_weights)
    else:
        stats, extra = _bench_infer(cfg, iters, warmup, device, runtime, threads, random_weights)
    result: Dict[str, object] = {
        "settings": {
            "task": task,
            "runtime": runtime,
            "iters": iters,
            "warmup": warmup,
            "train_batch": int(cfg.dataloader.train.total_batch_size),
            "test_batch": int(cfg.dataloader.test.get("batch_size", 1)),
        },
        "machine": describe_machine(device),
        **stats,
        **extra,
        "peak_rss_mib": peak_rss_mib(),
        "cuda_peak_mib": cuda_peak_mib(device),
    }
    if peaks and task in ("train", "infer"):
        result["conv3x3_peak_gflops"] = conv_peak_gflops(device, backward=task == "train")
        result["matmul_peak_gflops"] = matmul_peak_gflops(device)
        result["fraction_of_conv_peak"] = result["achieved_gflops"] / result["conv3x3_peak_gflops"]
    return result


def format_report(result: Dict[str, object]) -> str:
    """The result as ``key: value`` lines, settings and machine first."""
    lines = []
    for section in ("settings", "machine"):
        lines.append(f"{section}:")
        lines += [f"  {k}: {v}" for k, v in result[section].items()]
    lines.append("results:")
    for key, value in result.items():
        if key in ("settings", "machine"):
            continue
        lines.append(f"  {key}: {value:.4g}" if isinstance(value, float) else f"  {key}: {value}")
    return "\n".join(lines)
