#!/usr/bin/env python
"""
Benchmark a LazyConfig (data loading, a training step, evaluation, inference) or the matcher.

    .venv/bin/python tools/benchmark.py --config-file FILE --task data|train|eval|infer \
        [--runtime eager torchscript onnxruntime] [--precision fp32 bf16 fp16] \
        [--size H W] [--batch N] \
        [--tile-size S --image-size N] [--threads T] [--iters K] [--warmup W] [--json out.json] \
        [key=value ...]
    .venv/bin/python tools/benchmark.py --task matcher [--gts 10 100 1000 5000] [--iters K]

Tasks, timed as Detectron2's ``tools/benchmark.py`` times them:

* ``data``: seconds per batch of the training loader (decode, augment, batch);
* ``train``: one step of the trainer ``train_net.py`` uses (:func:`atss.engine.train_loop.
  build_trainer`) on batches loaded beforehand;
* ``eval``: the test loader and the model together;
* ``infer``: the model alone on test images loaded beforehand, or with ``--tile-size`` the
  tiled predictor (``demo.py --tile-size``) on an ``--image-size`` square mosaic of the first
  test image;
* ``matcher``: ``atss_match`` against the usual dense anchors x GTs form on an 800x1333 input,
  each (form, GT count) in a fresh process so that its peak memory is its own.

Several ``--runtime`` values (eager, traced TorchScript, ONNX Runtime on the export of
:mod:`atss.export`) and ``--precision`` values (the eager network in fp32, bf16 or fp16 under
autocast; the exports stay fp32) are timed in turns, one iteration each, so that they share the
machine's load; each reports its ratio to the first. A variant is named by its runtime, with
``-bf16`` / ``-fp16`` in mixed precision. Without ``--precision`` the config's switch decides
(``train.amp.enabled=True``: :func:`atss.engine.device.autocast_dtype`); an explicit ``bf16``
runs bf16 even on a CPU without native bf16 (emulated). ``eval`` and ``infer`` time the model of
``train.init_checkpoint=PATH``, or with ``--random-weights`` an untrained one.

Reports the settings, the machine, seconds per iteration (median, min, max), images/s, peak
memory and, for ``train``/``infer``, fvcore's FLOP count (a training step counted as 3
forwards) next to a 3x3-conv and matmul rate measured on the same machine. Every timed
iteration ends with a device synchronisation. Measured figures: docs/benchmarks.md.
"""

import argparse
import contextlib
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from detectron2.config import LazyCall as L
from detectron2.config import instantiate
from detectron2.data import detection_utils
from detectron2.data import transforms as T
from detectron2.structures import Boxes, pairwise_iou
from detectron2.utils.events import EventStorage
from torch import nn

from atss.engine.cli import add_weights_arguments, config_and_overrides, exit_on_usage_errors
from atss.engine.cli import parse_args as parse_overrides_last
from atss.engine.config import NO_WEIGHTS, RANDOM, START, TRAINED, build_model, load_config
from atss.engine.device import PRECISIONS, autocast, autocast_dtype, available_device
from atss.engine.train_loop import build_trainer

TASKS = ("data", "train", "eval", "infer", "matcher")
RUNTIMES = ("eager", "torchscript", "onnxruntime")
# Distinct batches loaded before timing training/inference; the timed loop cycles over them.
MAX_CACHED_BATCHES = 8
MATCHER_GTS = (10, 100, 1000, 5000)


# ------------------------------------------------------------------------------ measuring
def synchronize(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


def time_round_robin(
    steps: Dict[str, Callable[[int], object]], iters: int, warmup: int, device
) -> Dict[str, List[float]]:
    """
    Call every ``step(i)`` for i = 0 .. warmup + iters - 1, the steps taking turns within each
    i (a(0), b(0), a(1), b(1), ...) so that all see the same machine load.

    Returns:
        per step, the ``iters`` wall-clock durations after the ``warmup`` untimed ones, each
        ending with a device synchronisation.
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    seconds: Dict[str, List[float]] = {name: [] for name in steps}
    synchronize(device)
    for i in range(warmup + iters):
        for name, step in steps.items():
            start = time.perf_counter()
            step(i)
            synchronize(device)
            if i >= warmup:
                seconds[name].append(time.perf_counter() - start)
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


def describe_machine(device: str) -> Dict[str, object]:
    """CPU model and core count, torch threads and versions, and the CUDA device if used."""
    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    info: Dict[str, object] = {
        "cpu": cpu,
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


def peak_rss_mib() -> float:
    """Peak resident memory of this process in MiB: Linux's VmHWM, which a new process starts
    afresh (``ru_maxrss`` carries the parent's peak over into a child); NaN without /proc."""
    if not os.path.exists("/proc/self/status"):
        return float("nan")
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 2**10


def reset_cuda_peak(device) -> None:
    if str(device).startswith("cuda"):
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(torch.device(device))


def cuda_peak_mib(device) -> Optional[float]:
    """Peak memory allocated by tensors on ``device`` since the last reset (MiB), or None."""
    if not str(device).startswith("cuda"):
        return None
    synchronize(device)
    return torch.cuda.max_memory_allocated(torch.device(device)) / 2**20


def _best_rate(fn: Callable[[], object], work: float, rounds: int, device) -> float:
    """``work`` / the fastest of ``rounds`` timed calls, after one warm-up call."""
    return work / min(time_round_robin({"": lambda _: fn()}, rounds, 1, device)[""])


def conv_peak_gflops(device, channels=128, size=80, batch=4, rounds=5, backward=False) -> float:
    """Measured fp32 rate of a 3x3 convolution (``channels`` -> ``channels`` on ``batch`` x
    ``size`` x ``size``) in GFLOP/s (multiply-adds); with ``backward`` forward + backward,
    counted as 3 forwards as the training FLOP count is."""
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
    """Measured fp32 (n x n) @ (n x n) rate in GFLOP/s (multiply-adds)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    return _best_rate(lambda: a @ b, n**3 / 1e9, rounds, device)


class _DenseForward(nn.Module):
    """Backbone + head of a dense detector, as one module of the padded image batch."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.backbone, self.head = detector.backbone, detector.head
        self.in_features = list(detector.head_in_features)

    def forward(self, images: torch.Tensor):
        features = self.backbone(images)
        return self.head([features[f] for f in self.in_features])


def dense_forward_flops(detector: nn.Module, batched_inputs: List[dict]) -> float:
    """fvcore's FLOP count (multiply-adds, GFLOP) of the backbone + head forward on the
    normalised, padded batch of ``batched_inputs``; matcher, losses and post-processing are
    not counted (little arithmetic, no convolutions)."""
    from fvcore.nn import FlopCountAnalysis

    with torch.no_grad():
        images = detector.preprocess_image(batched_inputs).tensor
        analysis = FlopCountAnalysis(_DenseForward(detector).eval(), (images,))
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        return analysis.total() / 1e9


def configure(cfg, size: Optional[Sequence[int]] = None, batch: Optional[int] = None):
    """Apply ``--size H W`` (every train and test input resized to exactly H x W) and
    ``--batch N`` (train and test batch size) to a LazyConfig, in place."""
    if size is not None:
        height, width = (int(s) for s in size)
        for split in ("train", "test"):
            cfg.dataloader[split].mapper.augmentations = [L(T.Resize)(shape=(height, width))]
    if batch is not None:
        cfg.dataloader.train.total_batch_size = int(batch)
        cfg.dataloader.test.batch_size = int(batch)
    return cfg


# ------------------------------------------------------------------------------ tasks
def timed_variants(runtimes: Sequence[str], dtypes: Dict[str, Optional[torch.dtype]]):
    """(name, runtime, autocast dtype) of each timed variant: the eager runtime in each
    precision of ``dtypes`` (name -> dtype), the exported ones in fp32 (their graphs are fp32);
    named by the runtime, with ``-<precision>`` in mixed precision."""
    out = {}
    for runtime in runtimes:
        for precision, dtype in dtypes.items() if runtime == "eager" else [("fp32", None)]:
            name = runtime if precision == "fp32" else f"{runtime}-{precision}"
            out[name] = (name, runtime, dtype)
    return list(out.values())


def _only_eager(variants, task):
    if {runtime for _, runtime, _ in variants} != {"eager"}:
        raise ValueError(f"--runtime applies to --task infer, not {task}")


def _bench_data(cfg, variants, **_):
    if [name for name, _, _ in variants] != ["eager"]:
        raise ValueError("--runtime and --precision apply to train, eval and infer, not data")
    loader = iter(instantiate(cfg.dataloader.train))
    return {"eager": lambda _: next(loader)}, int(cfg.dataloader.train.total_batch_size), {}


def _bench_train(cfg, variants, device, random_weights, stack, **_):
    _only_eager(variants, "train")
    batches = list(itertools.islice(instantiate(cfg.dataloader.train), MAX_CACHED_BATCHES))
    storage = stack.enter_context(EventStorage(0))  # the trainers write their metrics here
    steps = {}
    for name, _, dtype in variants:  # one model each, the same at the start
        torch.manual_seed(0)
        model = build_model(cfg, NO_WEIGHTS if random_weights else START, device)
        cfg.optimizer.params.model = model
        trainer = build_trainer(
            model, itertools.cycle(batches), instantiate(cfg.optimizer), device, dtype
        )

        def step(i, trainer=trainer):
            trainer.iter = storage.iter = i
            trainer.run_step()

        steps[name] = step
    gflop = dense_forward_flops(model, batches[0])
    extra = {"input_shapes": [tuple(d["image"].shape) for d in batches[0]], "gflop_forward": gflop}
    return steps, len(batches[0]), {**extra, "gflop_step": 3 * gflop}


def _bench_eval(cfg, variants, device, random_weights, **_):
    _only_eager(variants, "eval")
    model = build_model(cfg, RANDOM if random_weights else TRAINED, device, what="benchmark")
    loader = instantiate(cfg.dataloader.test)
    batches = itertools.chain.from_iterable(itertools.repeat(loader))  # start it again
    steps = {}
    for name, _, dtype in variants:

        @torch.no_grad()
        def step(_, dtype=dtype):
            with autocast(device, dtype):
                return model(next(batches))

        steps[name] = step
    return steps, int(cfg.dataloader.test.get("batch_size", 1)), {}


def build_runtime(model, runtime: str, sample: List[torch.Tensor], workdir: str, threads=None):
    """A callable mapping a list of ``len(sample)`` (3, H, W) images to detections: the eager
    model, its traced TorchScript module or an ONNX Runtime session of its export."""
    if runtime == "eager":
        return lambda images: model([{"image": x} for x in images])
    if runtime == "torchscript":
        from atss.export import export_torchscript

        traced = export_torchscript(model, sample, os.path.join(workdir, "model.ts"))
        return lambda images: traced(*images)
    from atss.export import export_onnx, onnx_input_names, onnx_session

    path = os.path.join(workdir, "model.onnx")
    export_onnx(model, [x.cpu() for x in sample], path)
    session = onnx_session(path, str(sample[0].device), threads)
    names = onnx_input_names(len(sample))
    return lambda images: session.run(None, {n: x.cpu().numpy() for n, x in zip(names, images)})


def _bench_infer(cfg, variants, device, random_weights, threads, stack, iters, tile=None):
    if tile:
        return _bench_tiled(cfg, variants, random_weights, threads, **tile)
    model = build_model(cfg, RANDOM if random_weights else TRAINED, device, what="benchmark")
    batch_size = int(cfg.dataloader.test.get("batch_size", 1))
    num_batches = min(iters, MAX_CACHED_BATCHES)
    loaded = itertools.islice(instantiate(cfg.dataloader.test), num_batches)
    images = [d["image"].float().to(device) for batch in loaded for d in batch]
    if not images:
        raise ValueError(f"test dataset {cfg.dataloader.test.dataset.names!r} is empty")
    cycled = itertools.cycle(images)
    batches = [[next(cycled) for _ in range(batch_size)] for _ in range(num_batches)]
    workdir = stack.enter_context(tempfile.TemporaryDirectory())
    steps = {}
    for name, runtime, dtype in variants:
        run = build_runtime(model, runtime, batches[0], workdir, threads)

        @torch.no_grad()
        def step(i, run=run, dtype=dtype):
            with autocast(device, dtype):
                return run(batches[i % len(batches)])

        steps[name] = step
    extra = {
        "input_shapes": [tuple(x.shape) for x in batches[0]],
        "gflop_forward": dense_forward_flops(model, [{"image": x} for x in batches[0]]),
    }
    return steps, batch_size, extra


def _bench_tiled(cfg, variants, random_weights, threads, size, overlap, image_size):
    """The tiled predictor of each runtime on an ``image_size`` square mosaic of the first
    test image, read in the model's channel order, as ``demo.py --tile-size`` runs it."""
    from atss.engine.predictor import ATSSPredictor
    from atss.inference.onnx_runtime import OnnxPredictor

    if "torchscript" in [runtime for _, runtime, _ in variants]:
        raise ValueError("--tile-size times the runtimes of demo.py: eager and onnxruntime")
    predictors = {}
    for name, runtime, dtype in variants:
        torch.manual_seed(0)  # random weights: the same model on every runtime
        if runtime == "eager":
            predictors[name] = ATSSPredictor(cfg, random_weights=random_weights)
            predictors[name].autocast_dtype = dtype
        else:
            predictors[name] = OnnxPredictor(cfg, threads=threads, random_weights=random_weights)
        predictors[name].tile(size, overlap)
    first = instantiate(cfg.dataloader.test.dataset)[0]["file_name"]
    pixels = detection_utils.read_image(first, format=next(iter(predictors.values())).input_format)
    reps = (-(-image_size // pixels.shape[0]), -(-image_size // pixels.shape[1]), 1)
    mosaic = np.ascontiguousarray(np.tile(pixels, reps)[:image_size, :image_size])
    steps = {name: lambda _, p=p: p(mosaic) for name, p in predictors.items()}
    return steps, 1, {"image_size": image_size, "megapixels": image_size**2 / 1e6}


BENCHMARKS = {
    "data": _bench_data,
    "train": _bench_train,
    "eval": _bench_eval,
    "infer": _bench_infer,
}


def run_benchmark(
    cfg,
    task: str,
    runtimes: Sequence[str] = ("eager",),
    iters: int = 10,
    warmup: int = 2,
    threads: Optional[int] = None,
    peaks: bool = True,
    random_weights: bool = False,
    tile: Optional[Dict[str, int]] = None,
    precisions: Optional[Sequence[str]] = None,
) -> Dict[str, object]:
    """
    Time one task of a configured LazyConfig (:func:`configure`), each variant in turn: each
    runtime, the eager one in each of ``precisions`` (:func:`timed_variants`; default: the
    precision of the config's ``train.amp``). ``eval`` and ``infer`` time the trained model of
    ``train.init_checkpoint`` (a :class:`atss.engine.config.WeightsError` without one), or with
    ``random_weights`` an untrained one. ``tile``: ``{"size", "overlap", "image_size"}`` for
    tiled inference.

    Returns:
        ``settings``, ``machine``, the FLOP figures of train/infer, peak memory and ``runs``:
        per variant :func:`summarize`'s figures, ``achieved_gflops`` where FLOPs are counted,
        ``megapixels_per_s`` when tiled, and ``ratio_to_<first variant>``, the median of the
        per-iteration ratios of the first variant's time to this one's.
    """
    if task not in BENCHMARKS:
        raise ValueError(f"unknown task {task!r}; choose one of {tuple(BENCHMARKS)}")
    unknown = set(runtimes) - set(RUNTIMES)
    if unknown or not runtimes:
        raise ValueError(f"unknown runtime {sorted(unknown)}; choose among {RUNTIMES}")
    if threads:
        torch.set_num_threads(int(threads))
    device = cfg.train.device = available_device(cfg.train.get("device"))
    if not precisions:
        dtype = autocast_dtype(device, cfg.train.get("amp", {}))
        precisions = [name for name, d in PRECISIONS.items() if d == dtype]
    # The device's rule for each: ValueError for fp16 on the CPU, bf16 on a GPU without it.
    dtypes = {p: autocast_dtype(device, dict(enabled=p != "fp32", precision=p)) for p in precisions}
    with contextlib.ExitStack() as stack:  # what the timed steps need until they are done
        steps, images, extra = BENCHMARKS[task](
            cfg,
            variants=timed_variants(runtimes, dtypes),
            device=device,
            random_weights=random_weights,
            threads=threads,
            stack=stack,
            iters=iters + warmup,
            tile=tile,
        )
        reset_cuda_peak(device)
        seconds = time_round_robin(steps, iters, warmup, device)
    first = next(iter(seconds))
    runs = {}
    for name, times in seconds.items():
        runs[name] = summarize(times, images)
        if "gflop_forward" in extra:
            work = extra.get("gflop_step", extra["gflop_forward"])
            runs[name]["achieved_gflops"] = work / runs[name]["s_per_iter_median"]
        if "megapixels" in extra:
            runs[name]["megapixels_per_s"] = extra["megapixels"] / runs[name]["s_per_iter_median"]
        if len(seconds) > 1:
            ratios = [a / b for a, b in zip(seconds[first], times)]
            runs[name][f"ratio_to_{first}"] = statistics.median(ratios)
    result: Dict[str, object] = {
        "settings": {
            "task": task,
            "runtimes": list(runtimes),
            "precisions": list(precisions),
            "iters": iters,
            "warmup": warmup,
            "train_batch": int(cfg.dataloader.train.total_batch_size),
            "test_batch": int(cfg.dataloader.test.get("batch_size", 1)),
            "tile": tile,
        },
        "machine": describe_machine(device),
        **extra,
        "peak_rss_mib": peak_rss_mib(),
        "cuda_peak_mib": cuda_peak_mib(device),
        "runs": runs,
    }
    if peaks and "gflop_forward" in extra:
        result["conv3x3_peak_gflops"] = conv_peak_gflops(device, backward=task == "train")
        result["matmul_peak_gflops"] = matmul_peak_gflops(device)
        for run in runs.values():
            run["fraction_of_conv_peak"] = run["achieved_gflops"] / result["conv3x3_peak_gflops"]
    return result


# ------------------------------------------------------------------------------ matcher
def dense_atss_match(anchors_per_level: List[torch.Tensor], gt: torch.Tensor, topk: int = 9):
    """ATSS in the usual vectorised form (the authors' code, mmdetection): full A x G IoU and
    centre-distance matrices, per-level top-k, a -inf-filled A x G matrix for conflicts."""
    anchors = torch.cat(anchors_per_level)
    ious = pairwise_iou(Boxes(anchors), Boxes(gt))  # (A, G)
    centres, gt_centres = (anchors[:, :2] + anchors[:, 2:]) / 2, (gt[:, :2] + gt[:, 2:]) / 2
    dist = (centres[:, None, :] - gt_centres[None, :, :]).pow(2).sum(-1).sqrt()  # (A, G)
    candidates, start = [], 0
    for level in anchors_per_level:
        nearest = dist[start : start + len(level)].topk(min(topk, len(level)), dim=0, largest=False)
        candidates.append(nearest.indices + start)
        start += len(level)
    candidates = torch.cat(candidates)  # (K, G)
    gt_index = torch.arange(len(gt), device=gt.device)[None].expand_as(candidates)
    candidate_ious = ious[candidates, gt_index]
    positive = candidate_ious >= candidate_ious.mean(0) + candidate_ious.std(0)
    c = centres[candidates]  # (K, G, 2)
    ltrb = torch.cat([c - gt[None, :, :2], gt[None, :, 2:] - c], dim=-1)
    positive &= ltrb.amin(-1) > 0.01
    full = torch.full_like(ious, -float("inf"))
    full[candidates[positive], gt_index[positive]] = ious[candidates[positive], gt_index[positive]]
    value, index = full.max(1)
    return torch.where(value > -float("inf"), index, torch.full_like(index, -1))


def matcher_run(form: str, num_gt: int, iters: int, device: str) -> Dict[str, float]:
    """Time (median ms) and peak memory growth (MiB) of one matcher ``form`` ("sparse":
    ``atss_match``, "dense": :func:`dense_atss_match`) at ``num_gt`` random GTs on an 800x1333
    input; the memory is the growth of the process's peak over the first call, so call this
    in a fresh process (``--task matcher`` does)."""
    from atss import atss_match
    from atss.utils.testing import grid_anchors, random_boxes

    anchors, sizes, _ = grid_anchors(800, 1344)  # an 800x1333 image padded to /32
    gt = random_boxes(num_gt, 800, 1333, torch.Generator().manual_seed(0), min_size=8, max_size=400)
    anchors, gt = [a.to(device) for a in anchors], gt.to(device)
    if form == "sparse":
        match = lambda _: atss_match(anchors, gt, grid_sizes=sizes)  # noqa: E731
    else:
        match = lambda _: dense_atss_match(anchors, gt)  # noqa: E731
    reset_cuda_peak(device)
    before = torch.cuda.memory_allocated(device) if device.startswith("cuda") else peak_rss_mib()
    out = match(0)
    if device.startswith("cuda"):
        extra_mib = cuda_peak_mib(device) - before / 2**20
    else:
        extra_mib = peak_rss_mib() - before
    seconds = time_round_robin({form: match}, iters, 0, device)[form]
    return {
        "ms": 1000 * statistics.median(seconds),
        "extra_mib": extra_mib,
        "anchors": sum(len(a) for a in anchors),
        "positives": int((out >= 0).sum()),
        "checksum": int(out.sum()),
    }


_MATCHER_CHILD = """import json, runpy, sys, torch
torch.set_num_threads(int(sys.argv[6]))
tool = runpy.run_path(sys.argv[1])
print(json.dumps(tool["matcher_run"](sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])))
"""


def run_matcher_benchmark(gts=MATCHER_GTS, iters=5, threads=None, device="cpu"):
    """:func:`matcher_run` of both forms at each GT count, each in a fresh process; prints a
    row per count as it comes. Returns settings, machine and the rows."""
    threads = threads or torch.get_num_threads()
    print(f"ATSS assignment on an 800x1333 input (22400 anchors), {device}, {threads} threads")
    header = (
        f"{'GTs':>6} | {'sparse ms':>9} | {'sparse MB':>9} | {'dense ms':>9} | "
        f"{'dense MB':>9} | {'speed-up':>8} | same"
    )
    print(header + "\n" + "-" * len(header))
    rows = []
    for g in gts:
        row = {"gts": g}
        for form in ("sparse", "dense"):
            argv = [os.path.abspath(__file__), form, str(g), str(iters), device, str(threads)]
            proc = subprocess.run(
                [sys.executable, "-c", _MATCHER_CHILD, *argv], capture_output=True, text=True
            )
            if proc.returncode != 0:
                raise RuntimeError(f"the {form} matcher at {g} GTs failed:\n{proc.stderr[-2000:]}")
            row[form] = json.loads(proc.stdout.strip().splitlines()[-1])
        s, d = row["sparse"], row["dense"]
        row["same"] = (s["positives"], s["checksum"]) == (d["positives"], d["checksum"])
        print(
            f"{g:>6} | {s['ms']:>9.1f} | {s['extra_mib']:>9.1f} | {d['ms']:>9.1f} | "
            f"{d['extra_mib']:>9.1f} | {d['ms'] / s['ms']:>7.1f}x | "
            f"{'yes' if row['same'] else 'NO'} ({s['positives']} positives)"
        )
        rows.append(row)
    settings = {"task": "matcher", "gts": list(gts), "iters": iters, "threads": threads}
    return {"settings": settings, "machine": describe_machine(device), "rows": rows}


# ------------------------------------------------------------------------------ command line
def format_report(result: Dict[str, object]) -> str:
    """The result as ``key: value`` lines: settings, machine, results, then each runtime's."""
    lines = []
    sections = {k: v for k, v in result.items() if isinstance(v, dict) and k != "runs"}
    sections["results"] = {k: v for k, v in result.items() if not isinstance(v, dict)}
    sections.update(result.get("runs", {}))
    for title, values in sections.items():
        lines.append(f"{title}:")
        lines += [
            f"  {k}: {v:.4g}" if isinstance(v, float) else f"  {k}: {v}" for k, v in values.items()
        ]
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().split("\n")[0])
    p.add_argument("--config-file", metavar="FILE", help="required except for --task matcher")
    p.add_argument("--task", choices=TASKS, required=True)
    p.add_argument("--runtime", choices=RUNTIMES, nargs="+", default=["eager"], help="infer")
    p.add_argument(
        "--precision",
        choices=list(PRECISIONS),
        nargs="+",
        help="train, eval, infer: the eager network's (default: train.amp's)",
    )
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="resize inputs to H x W")
    p.add_argument("--batch", type=int, help="images per iteration (train and test loaders)")
    p.add_argument("--tile-size", type=int, help="infer: time the tiled predictor on tiles of S")
    p.add_argument("--tile-overlap", type=int, default=64, help="with --tile-size")
    p.add_argument("--image-size", type=int, default=4096, help="the mosaic's side, with tiles")
    p.add_argument("--gts", type=int, nargs="+", default=MATCHER_GTS, help="matcher GT counts")
    p.add_argument("--device", default="cpu", help="matcher: cpu or cuda (else train.device=)")
    p.add_argument("--threads", type=int, help="torch / onnxruntime intra-op threads")
    p.add_argument("--iters", type=int, default=10, help="timed iterations")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
    p.add_argument("--no-peaks", action="store_true", help="skip the conv/matmul peak runs")
    p.add_argument("--json", help="also write the results to this JSON file")
    add_weights_arguments(p)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="key=value config overrides")
    args = parse_overrides_last(p, argv)
    if args.task != "matcher" and not args.config_file:
        p.error(f"--task {args.task} needs --config-file")
    if args.tile_size and args.task != "infer":
        p.error("--tile-size applies to --task infer")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.task == "matcher":
        result = run_matcher_benchmark(
            args.gts, args.iters, args.threads, available_device(args.device)
        )
    else:
        tile = None
        if args.tile_size:
            tile = dict(size=args.tile_size, overlap=args.tile_overlap, image_size=args.image_size)
        with exit_on_usage_errors("benchmark.py"):
            _, opts = config_and_overrides(args)
            cfg = configure(load_config(args.config_file, opts), size=args.size, batch=args.batch)
            result = run_benchmark(
                cfg,
                args.task,
                runtimes=args.runtime,
                iters=args.iters,
                warmup=args.warmup,
                threads=args.threads,
                peaks=not args.no_peaks,
                random_weights=args.random_weights,
                tile=tile,
                precisions=args.precision,
            )
        result["settings"].update(
            config_file=args.config_file, size=args.size, threads=args.threads, overrides=args.opts
        )
        print(format_report(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
