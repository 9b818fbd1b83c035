"""`make demo`: train ATSS on the tree-crown tiles on the CPU, evaluate, visualise.

1. trains ``configs/TreeCrowns/atss_MNV2_FPN_treecrowns.py`` (MobileNetV2-FPN, 1100 iterations
   at batch 4) on ``treecrowns_train`` (:func:`atss.engine.train_loop.main`, as train_net.py);
2. evaluates ``model_final.pth`` on ``treecrowns_val`` with COCOEvaluator (maxDets 300) and
   prints the AP table;
3. saves a PNG with the ground truth of a validation crop next to the detections;
4. prints where everything went (default ``output/treecrowns_demo/``).

Training, evaluation and the picture run in mixed precision (``train.amp.enabled=True``,
:func:`atss.engine.device.autocast_dtype`): bf16 on a CPU that has it natively, fp32 (saying so
in one log line) on a CPU without it, fp16 on CUDA; ``train.amp.enabled=False`` runs fp32
everywhere.

``--max-iter N`` runs a shorter schedule: ``train.max_iter=N``, which rescales the LR steps and
the warmup with it (Detectron2 evaluates the schedule at ``iteration / max_iter``). Trailing
``key=value`` arguments are config overrides, e.g. ``dataloader.train.num_workers=0``.
"""

import argparse
import json
import os
import statistics
import time

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.engine import default_argument_parser
from detectron2.utils.visualizer import Visualizer
from PIL import Image

from atss.engine import resolve_device
from atss.engine.cli import parse_args as parse_overrides_last
from atss.engine.config import load_config
from atss.engine.device import autocast_dtype
from atss.engine.predictor import ATSSPredictor
from atss.engine.train_loop import main as train_or_evaluate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs/TreeCrowns/atss_MNV2_FPN_treecrowns.py")
SCORE_THRESH = 0.3  # detections drawn in the PNG (the AP uses all of them)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--output-dir", default=os.path.join(REPO, "output/treecrowns_demo"))
    p.add_argument("--config-file", default=CONFIG)
    p.add_argument("--skip-train", action="store_true", help="only evaluate model_final.pth")
    p.add_argument(
        "--max-iter",
        type=int,
        default=None,
        help="shorter run: LR steps and warmup scaled with it (default: the config's, 1100)",
    )
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides key=value")
    return parse_overrides_last(p, argv)


def train_net_args(config_file, opts, eval_only=False):
    """The arguments train_net.py would parse for this run."""
    return default_argument_parser().parse_args(
        ["--config-file", config_file] + (["--eval-only"] if eval_only else []) + list(opts)
    )


def median_iteration_time(metrics_json):
    """Median of the seconds per iteration the run logged (Detectron2's ``time``), or None."""
    with open(metrics_json) as f:
        times = [r["time"] for r in map(json.loads, filter(str.strip, f)) if "time" in r]
    return statistics.median(times) if times else None


def visualise(cfg, output_dir):
    """GT (left / top) and detections (right / bottom) on the val crop with the most trees.

    Returns:
        (png path, the crop's dataset record, number of GT boxes, number of drawn detections)
    """
    name = cfg.dataloader.test.dataset.names
    record = max(DatasetCatalog.get(name), key=lambda d: len(d["annotations"]))
    meta = MetadataCatalog.get(name)
    predictor = ATSSPredictor(cfg)
    image = read_image(record["file_name"], format=predictor.input_format)
    inst = predictor(image).to("cpu")
    inst = inst[inst.scores >= SCORE_THRESH]
    rgb = image if predictor.input_format == "RGB" else image[:, :, ::-1]
    gt = Visualizer(rgb, meta).draw_dataset_dict(record).get_image()
    pred = Visualizer(rgb, meta).draw_instance_predictions(inst).get_image()
    axis = 1 if rgb.shape[0] >= rgb.shape[1] else 0  # wide crops are stacked vertically
    gap = np.full((rgb.shape[0], 8, 3) if axis == 1 else (8, rgb.shape[1], 3), 255, np.uint8)
    path = os.path.join(output_dir, "val_detections_vs_gt.png")
    Image.fromarray(np.concatenate([gt, gap, pred], axis=axis)).save(path)
    return path, record, len(record["annotations"]), len(inst)


def main(argv=None):
    args = parse_args(argv)
    out = os.path.abspath(args.output_dir)
    opts = ["train.amp.enabled=True", f"train.output_dir={out}"]  # overrides after it win
    if args.max_iter:
        n = args.max_iter
        opts += [f"train.max_iter={n}", f"train.eval_period={n}"]
        opts += [f"train.checkpointer.period={max(n // 3, 1)}"]
    opts += list(args.opts)
    t0 = time.time()
    if not args.skip_train:
        train_or_evaluate(train_net_args(args.config_file, opts))
    t_train = time.time() - t0
    final = os.path.join(out, "model_final.pth")
    eval_args = train_net_args(args.config_file, opts + [f"train.init_checkpoint={final}"], True)
    t1 = time.time()
    results = train_or_evaluate(eval_args)
    t_eval = time.time() - t1

    cfg = load_config(args.config_file, eval_args.opts)
    device = resolve_device(cfg)
    precision = str(autocast_dtype(device, cfg.train.amp) or torch.float32)
    png, record, n_gt, n_det = visualise(cfg, out)

    bbox = results.get("bbox", {})
    speed = median_iteration_time(os.path.join(out, "metrics.json"))
    print("\n==== ATSS tree-crown demo ====")
    print("COCO box AP on", cfg.dataloader.test.dataset.names, "(maxDets 300):")
    print("  " + "  ".join(f"{k}={v:.2f}" for k, v in bbox.items() if not k.startswith("AP-")))
    if speed:
        print(f"training: {speed:.3f} s/iter (median), {t_train / 60:.1f} min wall-clock in total")
    print(f"evaluation: {t_eval:.1f} s; the network in {precision}")
    print(f"outputs in {out}:")
    print("  model_final.pth, metrics.json, log.txt, config.yaml, events.out.tfevents.*")
    print(
        f"  {os.path.basename(png)}: {os.path.basename(record['file_name'])}, "
        f"{n_gt} GT trees vs {n_det} detections with score >= {SCORE_THRESH}"
    )
    summary = {
        "bbox": bbox,
        "s_per_iter": speed,
        "train_wall_s": t_train,
        "eval_wall_s": t_eval,
        "precision": precision,
        "png": png,
        "drawn_detections": n_det,
    }
    with open(os.path.join(out, "demo_results.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return results


if __name__ == "__main__":
    main()
