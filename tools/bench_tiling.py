#!/usr/bin/env python
"""
Peak memory and time of tiled inference on large square mosaics made from the tree-crown
images (deepforest's largest YELL crop repeated to 1k, 4k, 8k, 16k px): the model on tiles, the
tiled demo end to end on both runtimes, and tiled evaluation.

    python tools/bench_tiling.py                       # 1024 4096 8192 16384, default modes
    python tools/bench_tiling.py --sizes 1024 4096 --modes tiled untiled demo \
        --weights output/TreeCrowns/atss_MNV2_FPN_treecrowns_xsite/model_final.pth

Modes:

* ``tiled`` / ``untiled``: the model (``TiledDetector`` or not) on the mosaic held in memory as
  a uint8 tensor;
* ``demo``: the tiled demo path end to end, ``demo.py --tile-size --input mosaic.npy
  --output-detections dets.csv --runtime R`` for each of ``--runtimes`` (the mosaic written
  beforehand, by another process, as an ``.npy`` that the demo reads a tile at a time; images
  over ``--max-draw-pixels`` are not drawn), with the config's test resize on each tile;
  ``seconds`` counts the whole ``main()``: model set-up, reading, inference and writing (the
  ONNX export is made beforehand for random weights; with ``--weights`` the first ONNX Runtime
  case makes it, unless the cache beside the weights holds it already);
* ``eval-npy`` / ``eval-png``: tiled evaluation as ``train_net.py --eval-only`` runs it
  (``atss.engine.train_loop.main``: the Custom MobileNetV2 config on a one-image COCO JSON of
  the mosaic, ``test.tile.*``, COCOEvaluator and the field metrics), the mosaic stored as
  ``.npy`` or PNG; ``eval-png-d2mapper`` is ``eval-png`` with Detectron2's test mapper kept
  (the evaluation path before :class:`atss.inference.lazy_image.TiledImageMapper`; PIL's
  pixel limit lifted so that it can read 16k px at all).

Every case runs in a fresh subprocess (peak RSS = ``resource.getrusage`` maxrss of that process:
the model, the mosaic and the inference) under an address-space cap (``--mem-cap-gb``), so an
untiled case too large for this machine fails alone instead of swapping it; such a case is
reported as not fitting. Columns: ``rss_before_MB`` (model + mosaic loaded, before inference;
for ``demo`` and ``eval-*``: before their set-up), ``peak_MB``, ``seconds`` (inference only
for ``tiled`` / ``untiled``), ``dets`` (detections returned; for ``eval-*``
the number of images evaluated, 1).
"""

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG = os.path.join(ROOT, "configs", "TreeCrowns", "atss_MNV2_FPN_treecrowns_xsite.py")
EVAL_CONFIG = os.path.join(ROOT, "configs", "Custom", "atss_MNV2_FPN_coco_json.py")
MODES = ["tiled", "untiled", "demo", "eval-npy", "eval-png", "eval-png-d2mapper"]


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _row(args, before: float, seconds: float, dets: int) -> dict:
    """A case's table row; the peak RSS is read now, at its end."""
    return {
        "size": args.size,
        "mode": args.mode,
        "runtime": args.runtime,
        "rss_before_MB": round(before),
        "peak_MB": round(maxrss_mb()),
        "seconds": round(seconds, 1),
        "dets": dets,
    }


def run_demo_case(args) -> dict:
    """The tiled demo path on ``args.npy`` (the child)."""
    import torch

    from atss.engine.detection_files import read_detections_csv

    # demo.py is a script at the checkout's root, not a module on the path: load it by file.
    spec = importlib.util.spec_from_file_location("demo", os.path.join(ROOT, "demo.py"))
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    demo_main = demo.main

    torch.set_num_threads(args.threads)
    before = maxrss_mb()
    with tempfile.TemporaryDirectory(prefix="bench_tiling_demo_") as out:
        csv_path = os.path.join(out, "dets.csv")
        argv = ["--config-file", args.config_file, "--input", args.npy, "--output", out]
        argv += [f"--tile-size={args.tile_size}", f"--tile-overlap={args.tile_overlap}"]
        argv += ["--output-detections", csv_path, "--confidence-threshold=0"]
        argv += [f"--runtime={args.runtime}", f"--threads={args.threads}"]
        argv += [f"train.init_checkpoint={args.weights}"] if args.weights else ["--random-weights"]
        start = time.perf_counter()
        status = demo_main(argv)
        seconds = time.perf_counter() - start
        if status != 0:
            raise RuntimeError(f"demo.py exited with {status}")
        dets = len(read_detections_csv(csv_path))
    return _row(args, before, seconds, dets)


def write_mosaic(size: int, path: str) -> None:
    """The ``size`` px mosaic as an (H, W, 3) uint8 RGB ``.npy``, or as a picture for any other
    extension (run in its own process)."""
    import numpy as np
    from PIL import Image

    from atss.data.treecrowns import tree_crown_mosaic

    if path.endswith(".npy"):
        np.save(path, tree_crown_mosaic(size))
    else:
        Image.fromarray(tree_crown_mosaic(size)).save(path, compress_level=1)


def run_eval_case(args) -> dict:
    """Tiled evaluation of the mosaic as ``train_net.py --eval-only`` runs it (the child)."""
    import PIL.Image
    import torch

    import atss.inference.tiled_detector as tiled_detector
    from atss.engine.cli import default_argument_parser
    from atss.engine.train_loop import main as train_or_evaluate

    torch.set_num_threads(args.threads)
    if args.mode == "eval-png-d2mapper":  # the evaluation path before TiledImageMapper
        tiled_detector._reads_whole_images = lambda mapper: False
        PIL.Image.MAX_IMAGE_PIXELS = None
    image = args.npy if args.mode == "eval-npy" else args.png
    n = args.size
    with tempfile.TemporaryDirectory(prefix="bench_tiling_eval_") as out:
        gt = {
            "images": [{"id": 1, "file_name": os.path.basename(image), "height": n, "width": n}],
            "annotations": [
                {
                    "id": 1,
                    "image_id": 1,
                    "category_id": 1,
                    "bbox": [8, 8, 40, 40],
                    "area": 1600,
                    "iscrowd": 0,
                }
            ],
            "categories": [{"id": 1, "name": "tree"}],
        }
        json_file = os.path.join(out, "gt.json")
        with open(json_file, "w") as f:
            json.dump(gt, f)
        argv = ["--config-file", EVAL_CONFIG, "--eval-only", "--random-weights"]
        argv += [f"dataset.test.json_file={json_file}"]
        argv += [f"dataset.test.image_root={os.path.dirname(image)}"]
        argv += [f"test.tile.size={args.tile_size}", f"test.tile.overlap={args.tile_overlap}"]
        argv += [f"train.output_dir={out}", "train.device=cpu"]
        parsed = default_argument_parser().parse_args(argv)
        before = maxrss_mb()
        start = time.perf_counter()
        train_or_evaluate(parsed)
        seconds = time.perf_counter() - start
    return _row(args, before, seconds, 1)


def run_case(args) -> dict:
    """One measurement, in this process (the child)."""
    if args.mode == "demo":
        return run_demo_case(args)
    if args.mode.startswith("eval-"):
        return run_eval_case(args)
    import numpy as np
    import torch

    from atss.data.treecrowns import tree_crown_mosaic
    from atss.engine.config import RANDOM, TRAINED, build_model, load_config
    from atss.inference import TiledDetector

    torch.set_num_threads(args.threads)
    opts = [f"train.init_checkpoint={args.weights}"] if args.weights else []
    cfg = load_config(args.config_file, opts)
    cfg.model.backbone.pretrained = False  # the weights come from --weights (or stay random)
    model = build_model(cfg, TRAINED if args.weights else RANDOM, "cpu", what="benchmark")
    if args.mode == "tiled":
        model = TiledDetector(model, size=args.tile_size, overlap=args.tile_overlap).eval()

    n = args.size
    mosaic = np.ascontiguousarray(tree_crown_mosaic(n).transpose(2, 0, 1))  # RGB: the model's
    image = torch.from_numpy(mosaic)  # uint8 (3, n, n), held once
    before = maxrss_mb()
    start = time.perf_counter()
    with torch.no_grad():
        out = model([{"image": image, "height": n, "width": n}])[0]["instances"]
    seconds = time.perf_counter() - start
    return _row(args, before, seconds, len(out))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 8192, 16384])
    parser.add_argument(
        "--modes", nargs="+", default=["tiled", "demo", "eval-npy", "eval-png"], choices=MODES
    )
    parser.add_argument(
        "--runtimes",
        nargs="+",
        default=["eager", "onnxruntime"],
        choices=["eager", "onnxruntime"],
        help="runtimes of the demo mode",
    )
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument("--tile-overlap", type=int, default=64)
    parser.add_argument("--config-file", default=CONFIG)
    parser.add_argument("--weights", default="", help="checkpoint (default: random weights)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per case")
    parser.add_argument("--mem-cap-gb", type=float, default=10.0, help="address-space cap")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per case")
    parser.add_argument("--json", default="", help="also write the rows to this file")
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)  # child: one case
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--npy", help=argparse.SUPPRESS)  # child of mode demo/eval: its mosaic
    parser.add_argument("--png", help=argparse.SUPPRESS)  # child of mode eval-png*: its mosaic
    parser.add_argument("--runtime", default="eager", help=argparse.SUPPRESS)  # child of demo
    parser.add_argument("--write-mosaic", help=argparse.SUPPRESS)  # child: write the mosaic
    parser.add_argument("--prepare-weights", help=argparse.SUPPRESS)  # child: see prepare_weights
    args = parser.parse_args()

    if args.write_mosaic:
        write_mosaic(args.size, args.write_mosaic)
        return 0
    if args.prepare_weights:
        prepare_weights(args.config_file, args.prepare_weights, "onnxruntime" in args.runtimes)
        return 0
    if args.size is not None:  # child process
        cap = int(args.mem_cap_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        print("RESULT " + json.dumps(run_case(args)), flush=True)
        return 0

    with tempfile.TemporaryDirectory(prefix="bench_tiling_") as tmp:
        if not args.weights and "demo" in args.modes and "onnxruntime" in args.runtimes:
            # The demo's ONNX Runtime rows should measure inference, not the one-time export:
            # random weights saved as a checkpoint, exported once into the cache beside it.
            args.weights = os.path.join(tmp, "random_weights.pth")
            subprocess.run(
                [sys.executable, __file__, f"--prepare-weights={args.weights}"]
                + [f"--config-file={args.config_file}", "--runtimes", *args.runtimes],
                check=True,
            )
        run_all(args, tmp)
    return 0


def prepare_weights(config_file: str, path: str, export: bool) -> None:
    """Save the config's model with random weights to ``path`` (a checkpoint a demo loads as
    ``train.init_checkpoint``) and, with ``export``, fill the ONNX cache beside it."""
    import torch

    from atss.engine.config import RANDOM, build_model, load_config
    from atss.engine.onnx_runtime import OnnxPredictor

    cfg = load_config(config_file)
    torch.save({"model": build_model(cfg, RANDOM, "cpu").state_dict()}, path)
    if export:
        cfg.train.init_checkpoint = path
        OnnxPredictor(cfg)


def run_all(args, tmp: str) -> None:
    """Every size, a table row per case."""
    common = [
        f"--tile-size={args.tile_size}",
        f"--tile-overlap={args.tile_overlap}",
        f"--config-file={args.config_file}",
        f"--weights={args.weights}",
        f"--threads={args.threads}",
        f"--mem-cap-gb={args.mem_cap_gb}",
    ]
    print(
        f"tiles {args.tile_size} px, overlap {args.tile_overlap} px; {args.threads} thread(s); "
        f"address space capped at {args.mem_cap_gb:g} GB per case"
    )
    print(
        f"{'size':>6} {'mode':>18} {'runtime':>11} {'rss_before_MB':>14} {'peak_MB':>8} "
        f"{'seconds':>8} {'dets':>5}"
    )
    rows = []
    for size in args.sizes:
        run_size(args, size, common, tmp, rows)


def _cases(args):
    """(mode, runtime) of every case at one size: the demo once per runtime."""
    for mode in args.modes:
        for runtime in args.runtimes if mode == "demo" else ["eager"]:
            yield mode, runtime


def run_size(args, size: int, common: list, tmp: str, rows: list) -> None:
    """Every case at one size, each in a child process; rows appended to ``rows``."""
    npy = os.path.join(tmp, f"mosaic_{size}.npy")
    png = os.path.join(tmp, f"mosaic_{size}.png")
    # written by a process of their own: not in the measured peaks
    if any(m in ("demo", "eval-npy") for m in args.modes):
        subprocess.run(
            [sys.executable, __file__, f"--size={size}", f"--write-mosaic={npy}"], check=True
        )
    if any(m.startswith("eval-png") for m in args.modes):
        subprocess.run(
            [sys.executable, __file__, f"--size={size}", f"--write-mosaic={png}"], check=True
        )
    for mode, runtime in _cases(args):
        cmd = [sys.executable, __file__, f"--size={size}", f"--mode={mode}", *common]
        cmd += [f"--npy={npy}", f"--png={png}", f"--runtime={runtime}"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
            lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode == 0 and lines:
                row = json.loads(lines[-1][len("RESULT ") :])
            else:
                tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
                row = {"size": size, "mode": mode, "failed": tail[:200]}
        except subprocess.TimeoutExpired:
            row = {"size": size, "mode": mode, "failed": f"over {args.timeout:g} s"}
        row["runtime"] = runtime
        rows.append(row)
        if args.json:  # every row as soon as it is measured
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
        if "failed" in row:
            print(f"{size:>6} {mode:>18} {runtime:>11}  did not fit: {row['failed']}", flush=True)
        else:
            print(
                f"{size:>6} {mode:>18} {runtime:>11} {row['rss_before_MB']:>14} "
                f"{row['peak_MB']:>8} {row['seconds']:>8} {row['dets']:>5}",
                flush=True,
            )
    for path in (npy, png):
        if os.path.exists(path):
            os.remove(path)


if __name__ == "__main__":
    sys.exit(main())
