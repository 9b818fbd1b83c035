#!/usr/bin/env python
"""
Benchmark a LazyConfig: data loading, training step, evaluation or inference speed.

    .venv/bin/python tools/benchmark.py \
        --config-file configs/TreeCrowns/atss_MNV2_FPN_treecrowns.py \
        --task train [--runtime eager|torchscript|onnxruntime] [--size H W] [--batch N] \
        [--threads T] [--iters K] [--warmup W] [--json out.json] [key=value ...]

Tasks (``--task``), measured the way Detectron2's ``tools/benchmark.py`` does, with what a user
needs to judge the numbers:

* ``data``: seconds per batch of the training loader (decode, augment, batch);
* ``train``: one optimizer step of Detectron2's :class:`SimpleTrainer` (forward, losses,
  backward, metrics, step) on batches loaded beforehand, so loading is not counted;
* ``eval``: the test loader and the model together, what an evaluation costs per batch;
* ``infer``: the model alone on test images loaded beforehand, in ``eager`` PyTorch, traced
  ``torchscript`` or ``onnxruntime`` (the exported graph of :mod:`atss.export`).

``--task eval`` and ``--task infer`` time a trained model: give its weights with
``train.init_checkpoint=PATH``, or ``--random-weights`` to time an
untrained one (its post-processing sees other candidate counts, so other times).

Prints the settings, the machine, seconds per iteration (median, min, max), images/s, peak
memory (process RSS; CUDA peak on a GPU) and, for train/infer, the FLOP count with the achieved
GFLOP/s next to a 3x3-conv and matmul peak measured on this machine (the measuring pieces:
:mod:`atss.utils.benchmark`). A training step is counted as 3 forwards (backward ~ 2 forwards),
an approximation that overstates the work of frozen layers (no weight gradients).
"""

import argparse
import itertools
import json
import os
import tempfile
from typing import Dict, List, Optional

import torch
from detectron2.config import instantiate
from detectron2.engine import SimpleTrainer
from detectron2.utils.events import EventStorage

from atss.engine.cli import (
    add_weights_arguments,
    config_and_overrides,
    exit_on_usage_errors,
)
from atss.engine.cli import parse_args as parse_overrides_last
from atss.engine.config import NO_WEIGHTS, RANDOM, START, TRAINED, build_model, load_config
from atss.engine.device import available_device
from atss.utils.benchmark import (
    configure,
    conv_peak_gflops,
    cuda_peak_mib,
    dense_forward_flops,
    describe_machine,
    matmul_peak_gflops,
    peak_rss_mib,
    reset_cuda_peak,
    summarize,
    time_iterations,
)

TASKS = ("data", "train", "eval", "infer")
RUNTIMES = ("eager", "torchscript", "onnxruntime")
# Distinct batches loaded before timing training/inference; the timed loop cycles over them.
MAX_CACHED_BATCHES = 8


def _build_model(cfg, device, random_weights: bool):
    """The model to train, from ``train.init_checkpoint`` as training starts (any part of a
    model, e.g. a pretrained backbone, or nothing); nothing loaded with ``random_weights``."""
    return build_model(cfg, NO_WEIGHTS if random_weights else START, device)


def _build_trained_model(cfg, device, random_weights: bool):
    """The model to time in evaluation / inference, in eval mode: a whole trained model from
    ``train.init_checkpoint`` or, with ``random_weights``, an untrained one
    (:func:`atss.engine.config.load_trained_weights`)."""
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
        from atss.export import export_onnx, onnx_input_names, onnx_session

        path = os.path.join(workdir, "model.onnx")
        export_onnx(model, [x.cpu() for x in sample], path)
        session = onnx_session(path, str(sample[0].device), threads)
        names = onnx_input_names(len(sample))
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
    time the trained model of ``train.init_checkpoint`` (:class:`atss.engine.config.
    WeightsError` without one), or with ``random_weights`` an untrained one.

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


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().split("\n")[0])
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument("--task", choices=TASKS, required=True)
    p.add_argument("--runtime", choices=RUNTIMES, default="eager", help="for --task infer")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="resize inputs to H x W")
    p.add_argument("--batch", type=int, help="images per iteration (train and test loaders)")
    p.add_argument("--threads", type=int, help="torch / onnxruntime intra-op threads")
    p.add_argument("--iters", type=int, default=10, help="timed iterations")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
    p.add_argument("--no-peaks", action="store_true", help="skip the conv/matmul peak runs")
    p.add_argument("--json", help="also write the results to this JSON file")
    add_weights_arguments(p)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="key=value config overrides")
    return parse_overrides_last(p, argv)


def main(argv=None):
    args = parse_args(argv)
    with exit_on_usage_errors("benchmark.py"):
        _, opts = config_and_overrides(args)
        cfg = configure(load_config(args.config_file, opts), size=args.size, batch=args.batch)
        result = run_benchmark(
            cfg,
            args.task,
            runtime=args.runtime,
            iters=args.iters,
            warmup=args.warmup,
            threads=args.threads,
            peaks=not args.no_peaks,
            random_weights=args.random_weights,
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
