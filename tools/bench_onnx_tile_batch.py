"""
Does running several tiles per ONNX Runtime call help? The model exported with a batch of 1
and of N tiles (TracingAdapter freezes the batch size at export), the same tiles through
each, rounds alternating the order in one process: seconds per tile and the ratio.

    python tools/bench_onnx_tile_batch.py --tile-size 512 --batches 1 4 --tiles 8 --rounds 5

The model is the config's (tree-crown xsite by default) with random weights: the time of a
forward pass does not depend on the weights' values, only on the candidate count, which the
tiles fix alike for every batch size. The tiles are random 0-255 images.
"""

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import torch

from atss.engine.config import RANDOM, build_model, load_config
from atss.engine.onnx_runtime import OPSET
from atss.export import export_onnx, onnx_input_names, onnx_session

CONFIG = "configs/TreeCrowns/atss_MNV2_FPN_treecrowns_xsite.py"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", default=CONFIG)
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4], help="tiles per call")
    parser.add_argument(
        "--tiles", type=int, default=8, help="tiles per round (a multiple of each batch)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the first is dropped")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="key=value config overrides")
    args = parser.parse_args(argv)
    if any(args.tiles % b for b in args.batches) or args.rounds < 2:
        parser.error("--tiles must be a multiple of every --batches value, --rounds >= 2")

    cfg = load_config(args.config_file, args.opts + ["train.device=cpu"])
    cfg.model.backbone.pretrained = False
    torch.manual_seed(0)
    model = build_model(cfg, RANDOM, "cpu")
    size = args.tile_size
    sessions = {}
    folder = tempfile.mkdtemp(prefix="atss_tile_batch_")
    for batch in args.batches:
        path = os.path.join(folder, f"batch{batch}.onnx")
        export_onnx(model, [torch.rand(3, size, size) * 255 for _ in range(batch)], path, OPSET)
        sessions[batch] = onnx_session(path, "cpu", args.threads)
    rng = np.random.default_rng(0)
    tiles = [rng.uniform(0, 255, (3, size, size)).astype(np.float32) for _ in range(args.tiles)]
    seconds = {b: [] for b in args.batches}
    for r in range(args.rounds):
        for batch in args.batches if r % 2 == 0 else reversed(args.batches):
            session = sessions[batch]
            names = onnx_input_names(batch)
            start = time.perf_counter()
            for i in range(0, len(tiles), batch):
                session.run(None, dict(zip(names, tiles[i : i + batch])))
            seconds[batch].append((time.perf_counter() - start) / len(tiles))
    base = args.batches[0]
    reference = _outputs(sessions[base], tiles, base)
    print(f"{size}x{size} tiles, {args.tiles} per round, {args.rounds} rounds (first dropped), "
          f"{args.threads} thread(s)")  # fmt: skip
    for batch in args.batches:
        median = statistics.median(seconds[batch][1:])
        ratio = statistics.median(seconds[base][1:]) / median
        rounds = ", ".join(f"{s:.3f}" for s in seconds[batch][1:])
        print(f"batch {batch}: {median:.3f} s/tile ({rounds}); speed vs batch {base}: {ratio:.2f}x")
        print(f"batch {batch}: detections vs batch {base}: "
              f"{_gap(_outputs(sessions[batch], tiles, batch), reference)}")  # fmt: skip


def _outputs(session, tiles, batch):
    """Per tile, (boxes, classes, scores) of ``session`` run ``batch`` tiles per call."""
    names = onnx_input_names(len(session.get_inputs()))
    per_tile = []
    for i in range(0, len(tiles), batch):
        flat = session.run(None, dict(zip(names, tiles[i : i + batch])))
        per_tile += [flat[k : k + 3] for k in range(0, len(flat), 4)]  # without image_size
    return per_tile


def _gap(a, b) -> str:
    """ "same counts, max |difference| X" or where the two differ first."""
    gap = 0.0
    for t, (x, y) in enumerate(zip(a, b)):
        if [len(v) for v in x] != [len(v) for v in y]:
            return f"tile {t}: {len(x[2])} vs {len(y[2])} detections"
        for u, v in zip(x, y):
            if len(u):
                gap = max(gap, float(np.abs(u.astype(np.float64) - v.astype(np.float64)).max()))
    return f"same counts ({sum(len(x[2]) for x in a)} in all), max |difference| {gap:.2g}"


if __name__ == "__main__":
    main()
