"""
Benchmark a LazyConfig: data loading, training step, evaluation or inference speed.

    .venv/bin/python tools/benchmark.py \
        --config-file configs/TreeCrowns/atss_MNV2_FPN_treecrowns.py \
        --task train [--runtime eager|torchscript|onnxruntime] [--size H W] [--batch N] \
        [--threads T] [--iters K] [--warmup W] [--json out.json] [key=value ...]

``--task eval`` and ``--task infer`` time a trained model: give its weights with
``train.init_checkpoint=PATH`` (or ``--weights PATH``), or ``--random-weights`` to time an
untrained one (its post-processing sees other candidate counts, so other times).

Prints the settings, the machine, seconds per iteration (median, min, max), images/s, peak
memory (process RSS; CUDA peak on a GPU) and, for train/infer, the FLOP count with the achieved
GFLOP/s next to a 3x3-conv and matmul peak measured on this machine. The logic lives in
:mod:`atss.engine.benchmark`.
"""

import argparse
import json

from atss.engine.benchmark import (
    RUNTIMES,
    TASKS,
    configure,
    format_report,
    run_benchmark,
)
from atss.engine.cli import exit_on_usage_errors, reject_flags_in_overrides
from atss.engine.config import load_config
from atss.engine.weights import add_weights_arguments, weights_overrides


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
    add_weights_arguments(p, alias=True)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="key=value config overrides")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    reject_flags_in_overrides(args.opts, argv)
    with exit_on_usage_errors("benchmark.py"):
        opts = weights_overrides(args.opts, args.weights, args.random_weights)
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
