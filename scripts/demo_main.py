"""Main job of `make demo`: train ATSS on the tree-crown tiles on the CPU, evaluate, visualise.

1. trains ``configs/TreeCrowns/atss_MNV2_FPN_treecrowns.py`` (MobileNetV2-FPN, 1100 iterations
   at batch 4) on ``treecrowns_train`` through ``train_net.py``'s ``main``;
2. evaluates ``model_final.pth`` on ``treecrowns_val`` with COCOEvaluator (maxDets 300) and
   prints the AP table;
3. saves a PNG with the ground truth of a validation crop next to the detections;
4. prints where everything went (default ``output/treecrowns_demo/``).

Extra ``key=value`` arguments are config overrides, e.g. ``train.max_iter=300`` for a quick run.
"""

import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import train_net  # noqa: E402  (puts this checkout's projects/ATSS on sys.path)
from atss.engine.cli import reject_flags_in_overrides  # noqa: E402

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
        help="shorter run: scales the LR steps, warmup fraction kept (default: config, 1100)",
    )
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides key=value")
    return p.parse_args(argv)


def d2_args(config_file, opts, eval_only=False):
    return train_net.default_argument_parser().parse_args(
        ["--config-file", config_file] + (["--eval-only"] if eval_only else []) + list(opts)
    )


def training_speed(output_dir):
    """Median seconds per iteration logged in metrics.json (Detectron2's `time`)."""
    path = os.path.join(output_dir, "metrics.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        times = [json.loads(line).get("time") for line in f if line.strip()]
    times = sorted(t for t in times if t is not None)
    return times[len(times) // 2] if times else None


def visualise(cfg, output_dir):
    """GT (left / top) and detections (right / bottom) on the val crop with the most trees."""
    import numpy as np
    import torch
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import instantiate
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.detection_utils import read_image
    from detectron2.utils.visualizer import Visualizer
    from PIL import Image

    name = cfg.dataloader.test.dataset.names
    record = max(DatasetCatalog.get(name), key=lambda d: len(d["annotations"]))
    meta = MetadataCatalog.get(name)
    model = instantiate(cfg.model).to(cfg.train.device).eval()
    DetectionCheckpointer(model).load(os.path.join(output_dir, "model_final.pth"))
    image = read_image(record["file_name"], format="RGB")
    with torch.no_grad():
        tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        inputs = {"image": tensor, "height": image.shape[0], "width": image.shape[1]}
        inst = model([inputs])[0]["instances"].to("cpu")
    inst = inst[inst.scores >= SCORE_THRESH]
    gt = Visualizer(image, meta).draw_dataset_dict(record).get_image()
    pred = Visualizer(image, meta).draw_instance_predictions(inst).get_image()
    axis = 1 if image.shape[0] >= image.shape[1] else 0  # wide crops are stacked vertically
    gap = np.full((image.shape[0], 8, 3) if axis == 1 else (8, image.shape[1], 3), 255, np.uint8)
    path = os.path.join(output_dir, "val_detections_vs_gt.png")
    Image.fromarray(np.concatenate([gt, gap, pred], axis=axis)).save(path)
    return path, record, len(record["annotations"]), len(inst)


def main(argv=None):
    args = parse_args(argv)
    reject_flags_in_overrides(args.opts, argv)
    out = os.path.abspath(args.output_dir)
    opts = [f"train.output_dir={out}"]
    if args.max_iter:
        n = args.max_iter
        opts += [
            f"train.max_iter={n}",
            f"train.eval_period={n}",
            f"train.checkpointer.period={max(n // 3, 1)}",
            f"lr_multiplier.scheduler.num_updates={n}",
            f"lr_multiplier.scheduler.milestones=[{n * 11 // 15},{n * 9 // 10}]",
        ]
    opts += list(args.opts)
    t0 = time.time()
    if not args.skip_train:
        train_net.main(d2_args(args.config_file, opts))
    t_train = time.time() - t0
    final = os.path.join(out, "model_final.pth")
    eval_args = d2_args(args.config_file, opts + [f"train.init_checkpoint={final}"], True)
    t1 = time.time()
    results = train_net.main(eval_args)
    t_eval = time.time() - t1

    cfg = train_net.LazyConfig.apply_overrides(
        train_net.LazyConfig.load(args.config_file), eval_args.opts
    )
    train_net.resolve_device(cfg)
    png, record, n_gt, n_det = visualise(cfg, out)

    bbox = results.get("bbox", {})
    speed = training_speed(out)
    print("\n==== ATSS tree-crown demo ====")
    print("COCO box AP on", cfg.dataloader.test.dataset.names, "(maxDets 300):")
    print("  " + "  ".join(f"{k}={v:.2f}" for k, v in bbox.items() if not k.startswith("AP-")))
    if speed:
        print(f"training: {speed:.3f} s/iter (median), {t_train / 60:.1f} min wall-clock in total")
    print(f"evaluation: {t_eval:.1f} s")
    print(f"outputs in {out}:")
    print("  model_final.pth, metrics.json, log.txt, config.yaml, events.out.tfevents.*")
    print(
        f"  {os.path.basename(png)}: {os.path.basename(record['file_name'])}, "
        f"{n_gt} GT trees vs {n_det} detections with score >= {SCORE_THRESH}"
    )
    with open(os.path.join(out, "demo_results.json"), "w") as f:
        json.dump(
            {
                "bbox": bbox,
                "s_per_iter": speed,
                "train_wall_s": t_train,
                "eval_wall_s": t_eval,
                "png": png,
            },
            f,
            indent=1,
        )
    return results


if __name__ == "__main__":
    main()
