"""
Tiled inference on a large image, eager vs ONNX Runtime, measured interleaved in one process:
throughput in megapixels per second and whether both give the same detections.

    python tools/bench_tiled_runtimes.py --size 8192 --tile-size 512 --tile-overlap 64 \
        train.init_checkpoint=output/TreeCrowns/atss_MNV2_FPN_treecrowns_xsite/model_final.pth
    python tools/bench_tiled_runtimes.py --size 2048 --random-weights      # no trained model

The image is the largest tree-crown image repeated to ``--size`` px square
(:func:`atss.data.treecrowns.tree_crown_mosaic`); both predictors run it through
``ATSSPredictor.tile`` (tiles in image pixels, each through the config's test resize), one
round of each after the other (eager, ONNX Runtime, eager, ...), so both see the same machine
load. The ONNX export is made once before the rounds (cached next to the weights), and each
runtime runs one tile before them (warm-up).
"""

import argparse
import functools
import time

import numpy as np
import torch

from atss.data.treecrowns import tree_crown_mosaic
from atss.engine.config import load_config
from atss.engine.onnx_runtime import OnnxPredictor
from atss.engine.predictor import ATSSPredictor
from atss.engine.weights import add_weights_arguments, weights_overrides

CONFIG = "configs/TreeCrowns/atss_MNV2_FPN_treecrowns_xsite.py"


def agreement(a, b) -> str:
    """How far two detection sets are apart, independent of their order (near-equal scores may
    sort differently): counts, and the box gap, the largest distance from a detection of ``a``
    to the nearest detection of ``b`` of its class (L-inf over the box corners, px)."""
    if len(a) != len(b):
        return f"{len(a)} vs {len(b)} detections"
    if len(a) == 0:
        return "0 detections each"
    dist = (a.pred_boxes.tensor[:, None, :] - b.pred_boxes.tensor[None, :, :]).abs().amax(-1)
    dist[a.pred_classes[:, None] != b.pred_classes[None, :]] = float("inf")
    nearest = float(dist.min(dim=1).values.max())
    score = float((a.scores.sort().values - b.scores.sort().values).abs().max())
    return f"{len(a)} each, box gap {nearest:.2g} px, max |score| {score:.2g}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", default=CONFIG)
    parser.add_argument("--size", type=int, default=8192, help="side of the square image")
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument("--tile-overlap", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each runtime")
    parser.add_argument("--threads", type=int, default=2, help="torch and onnxruntime threads")
    add_weights_arguments(parser)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="key=value config overrides")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    opts = weights_overrides(args.opts + ["train.device=cpu"], random_weights=args.random_weights)
    cfg = load_config(args.config_file, opts)
    if args.random_weights:
        cfg.model.backbone.pretrained = False
    runtimes = {}
    onnx = functools.partial(OnnxPredictor, threads=args.threads)
    for name, make in (("eager", ATSSPredictor), ("onnxruntime", onnx)):
        torch.manual_seed(0)  # the same model in both, random weights included
        runtimes[name] = make(cfg, random_weights=args.random_weights)
    image = tree_crown_mosaic(args.size)  # RGB, the tree-crown models' input format
    for predictor in runtimes.values():
        assert predictor.input_format == "RGB", "the mosaic is RGB"
        predictor.tile(args.tile_size, args.tile_overlap)
    megapixels = args.size**2 / 1e6
    print(
        f"{args.size}x{args.size} px ({megapixels:.1f} Mpx), tiles {args.tile_size} px overlap "
        f"{args.tile_overlap}, {args.threads} thread(s), torch {torch.__version__}"
    )
    for predictor in runtimes.values():  # warm-up (first-call allocations, lazy init)
        predictor(image[: args.tile_size, : args.tile_size])
    rates = {name: [] for name in runtimes}
    last = {}
    for r in range(args.rounds):
        for name, predictor in runtimes.items():
            start = time.perf_counter()
            last[name] = predictor(image).to("cpu")
            seconds = time.perf_counter() - start
            rates[name].append(megapixels / seconds)
            print(f"round {r + 1} {name:>11}: {seconds:7.1f} s  {megapixels / seconds:6.3f} Mpx/s")
    median = {name: float(np.median(v)) for name, v in rates.items()}
    ratios = [o / e for e, o in zip(rates["eager"], rates["onnxruntime"])]
    print(
        f"median Mpx/s: eager {median['eager']:.3f}, onnxruntime {median['onnxruntime']:.3f}; "
        f"onnxruntime / eager per round: {', '.join(f'{x:.2f}' for x in ratios)}"
    )
    print("detections: " + agreement(last["eager"], last["onnxruntime"]))


if __name__ == "__main__":
    main()
