#!/usr/bin/env python
"""
Peak memory and time of tiled vs untiled inference on large square mosaics made from the
tree-crown images (deepforest's largest YELL crop repeated to 1k, 4k, 8k, 16k px).

    python tools/bench_tiling.py                       # 1024 4096 8192 16384, tiled and demo
    python tools/bench_tiling.py --sizes 1024 4096 --modes tiled untiled demo \
        --weights output/TreeCrowns/atss_MNV2_FPN_treecrowns_xsite/model_final.pth

Modes: ``tiled`` / ``untiled`` run the model (``TiledDetector`` or not) on the mosaic held in
memory as a uint8 tensor; ``demo`` is the tiled demo path end to end, ``demo.py --tile-size
--input mosaic.npy --output-detections dets.csv`` (the mosaic written beforehand, by another
process, as an ``.npy`` that the demo reads a tile at a time; images over ``--max-draw-pixels``
are not drawn) with the config's test resize on each tile and its ``seconds`` counting the whole
``main()``: model set-up, reading, inference and writing.

Every case runs in a fresh subprocess (peak RSS = ``resource.getrusage`` maxrss of that process:
the model, the mosaic and the inference) under an address-space cap (``--mem-cap-gb``), so an
untiled case too large for this machine fails alone instead of swapping it; such a case is
reported as not fitting. Columns: ``rss_before_MB`` (model + mosaic loaded, before inference),
``peak_MB``, ``seconds`` (inference only), ``dets`` (detections returned).
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


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_demo_case(args) -> dict:
    """The tiled demo path on ``args.npy`` (the child)."""
    import tempfile

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
        argv += [f"train.init_checkpoint={args.weights}"] if args.weights else ["--random-weights"]
        start = time.perf_counter()
        status = demo_main(argv)
        seconds = time.perf_counter() - start
        if status != 0:
            raise RuntimeError(f"demo.py exited with {status}")
        dets = len(read_detections_csv(csv_path))
    return {
        "size": args.size,
        "mode": "demo",
        "rss_before_MB": round(before),
        "peak_MB": round(maxrss_mb()),
        "seconds": round(seconds, 1),
        "dets": dets,
    }


def write_mosaic(size: int, path: str) -> None:
    """The ``size`` px mosaic as an (H, W, 3) uint8 RGB ``.npy`` (run in its own process)."""
    import numpy as np

    from atss.data.treecrowns import tree_crown_mosaic

    np.save(path, tree_crown_mosaic(size))


def run_case(args) -> dict:
    """One measurement, in this process (the child)."""
    if args.mode == "demo":
        return run_demo_case(args)
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
    return {
        "size": n,
        "mode": args.mode,
        "rss_before_MB": round(before),
        "peak_MB": round(maxrss_mb()),
        "seconds": round(seconds, 1),
        "dets": len(out),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 8192, 16384])
    parser.add_argument(
        "--modes", nargs="+", default=["tiled", "demo"], choices=["tiled", "untiled", "demo"]
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
    parser.add_argument("--npy", help=argparse.SUPPRESS)  # child of mode demo: its mosaic
    parser.add_argument("--write-mosaic", help=argparse.SUPPRESS)  # child: write the mosaic
    args = parser.parse_args()

    if args.write_mosaic:
        write_mosaic(args.size, args.write_mosaic)
        return 0
    if args.size is not None:  # child process
        cap = int(args.mem_cap_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        print("RESULT " + json.dumps(run_case(args)), flush=True)
        return 0

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
        f"{'size':>6} {'mode':>8} {'rss_before_MB':>14} {'peak_MB':>8} {'seconds':>8} {'dets':>5}"
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_tiling_") as tmp:
        for size in args.sizes:
            run_size(args, size, common, tmp, rows)
    return 0


def run_size(args, size: int, common: list, tmp: str, rows: list) -> None:
    """Every mode at one size, each in a child process; rows appended to ``rows``."""
    npy = os.path.join(tmp, f"mosaic_{size}.npy")
    if "demo" in args.modes:  # written by a process of its own: not in the demo's peak
        subprocess.run(
            [sys.executable, __file__, f"--size={size}", f"--write-mosaic={npy}"], check=True
        )
    for mode in args.modes:
        cmd = [sys.executable, __file__, f"--size={size}", f"--mode={mode}", *common]
        cmd += [f"--npy={npy}"]
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
        rows.append(row)
        if args.json:  # every row as soon as it is measured
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
        if "failed" in row:
            print(f"{size:>6} {mode:>8}  did not fit: {row['failed']}", flush=True)
        else:
            print(
                f"{size:>6} {mode:>8} {row['rss_before_MB']:>14} {row['peak_MB']:>8} "
                f"{row['seconds']:>8} {row['dets']:>5}",
                flush=True,
            )
    if os.path.exists(npy):
        os.remove(npy)


if __name__ == "__main__":
    sys.exit(main())
