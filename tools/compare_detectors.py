"""
Compare ATSS with Detectron2's own FCOS and RetinaNet (#A = 1, IoU assigner) on the tree crowns,
with the same MobileNetV2-FPN backbone, 2 x 128 GN head, data, solver and schedule.

Two parts, both printed as tables (and saved under --output):

* ``timing``: train-step (forward + backward + SGD step) and inference time per image of each
  detector on identical inputs (one real training batch; the validation crops), interleaved
  rounds, medians; ratios to FCOS. Freshly initialised models, or with ``--trained`` the
  seed-0 weights of a ``train`` run (realistic post-processing load).
* ``train``: train_net.py runs for every detector x seed x split, evaluated every
  ``--eval-period`` iterations; a table of AP / AP50 / AP75 (mean ± std over seeds) and training
  time, and a plot of AP against training time.

    .venv/bin/python tools/compare_detectors.py timing
    .venv/bin/python tools/compare_detectors.py timing --trained output/compare/spatial
    .venv/bin/python tools/compare_detectors.py train --seeds 0 1 2 --splits spatial xsite
    .venv/bin/python tools/compare_detectors.py train --seeds 0 --splits spatial --max-iter 300
    .venv/bin/python tools/compare_detectors.py train --output DIR optimizer.lr=0.0025

Trailing ``key=value`` overrides of ``train`` go to every run (every detector alike), after the
script's own. ``--max-iter N`` gives ``train.max_iter=N``, which rescales the LR steps and the
warmup with it (Detectron2 evaluates the schedule at ``iteration / max_iter``).
"""

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time

from atss.engine.cli import parse_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DETECTORS = {
    "ATSS": "configs/TreeCrowns/atss_MNV2_FPN_treecrowns.py",
    "FCOS": "configs/TreeCrowns/fcos_MNV2_FPN_treecrowns.py",
    "RetinaNet(#A=1)": "configs/TreeCrowns/retinanet_MNV2_FPN_treecrowns.py",
}
SPLITS = {
    "spatial": ("treecrowns_train", "treecrowns_val"),
    "xsite": ("treecrowns_xsite_train", "treecrowns_xsite_val"),
}


# ------------------------------------------------------------------------------------ timing
def timing(args):
    import torch
    from detectron2.config import instantiate
    from detectron2.data import DatasetCatalog, DatasetMapper
    from detectron2.utils.events import EventStorage

    from atss.data import register_all_treecrowns
    from atss.engine.config import NO_WEIGHTS, TRAINED, build_model, load_config

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    register_all_treecrowns()
    models, optims = {}, {}
    for name, path in DETECTORS.items():
        if args.trained:
            # Trained weights make inference realistic: an untrained head scores nothing above
            # the thresholds, so post-processing (top-k, decoding, NMS) would cost nothing.
            ckpt = os.path.join(args.trained, _slug(name), "seed0", "model_final.pth")
            cfg = load_config(os.path.join(ROOT, path), [f"train.init_checkpoint={ckpt}"])
            models[name] = build_model(cfg, TRAINED, "cpu", what="time")
        else:
            cfg = load_config(os.path.join(ROOT, path))
            models[name] = build_model(cfg, NO_WEIGHTS, "cpu")
        cfg.optimizer.params.model = models[name]
        optims[name] = instantiate(cfg.optimizer)
    cfg = load_config(os.path.join(ROOT, DETECTORS["ATSS"]))
    train_mapper = instantiate(cfg.dataloader.train.mapper)
    test_mapper = DatasetMapper(
        cfg.dataloader.test.mapper.is_train, augmentations=[], image_format="RGB"
    )
    train_dicts = DatasetCatalog.get("treecrowns_train")
    batch = [train_mapper(d) for d in train_dicts[: cfg.dataloader.train.total_batch_size]]
    val = [test_mapper(d) for d in DatasetCatalog.get("treecrowns_val")]

    def train_step(name):
        m, opt = models[name], optims[name]
        m.train()
        with EventStorage():
            loss = sum(m(batch).values())
        opt.zero_grad()
        loss.backward()
        opt.step()

    # Inference uses its own copy, so the training steps timed in between do not change it.
    infer_models = {name: copy.deepcopy(m).eval() for name, m in models.items()}

    def infer(name):
        with torch.no_grad():
            return [infer_models[name]([x])[0]["instances"] for x in val]

    step_t = {n: [] for n in DETECTORS}
    infer_t = {n: [] for n in DETECTORS}
    dets = {}
    for name in DETECTORS:  # warm-up
        train_step(name)
        dets[name] = statistics.mean(len(x) for x in infer(name))
    for _ in range(args.rounds):  # interleaved, so load changes hit every detector alike
        for name in DETECTORS:
            t = time.perf_counter()
            train_step(name)
            step_t[name].append(time.perf_counter() - t)
            t = time.perf_counter()
            infer(name)
            infer_t[name].append((time.perf_counter() - t) / len(val))
    rows = []
    fcos_step, fcos_inf = statistics.median(step_t["FCOS"]), statistics.median(infer_t["FCOS"])
    print(
        f"\nTiming on identical inputs ({len(batch)}-image training batch, {len(val)} "
        f"validation crops), {args.rounds} interleaved rounds, {args.threads} threads, "
        + (f"weights of {args.trained}" if args.trained else "freshly initialised models")
    )
    print(
        f"{'detector':<16} | {'train step s':>12} | {'vs FCOS':>7} | {'infer s/img':>11} | "
        f"{'vs FCOS':>7} | {'dets/img':>8}"
    )
    for name in DETECTORS:
        s, i = statistics.median(step_t[name]), statistics.median(infer_t[name])
        rows.append(
            dict(
                detector=name,
                step_s=s,
                step_ratio=s / fcos_step,
                infer_s=i,
                infer_ratio=i / fcos_inf,
                detections_per_image=dets[name],
            )
        )
        print(
            f"{name:<16} | {s:>12.3f} | {s / fcos_step:>7.3f} | {i:>11.3f} | "
            f"{i / fcos_inf:>7.3f} | {dets[name]:>8.1f}"
        )
    _save(args, "timing.json", rows)


# ------------------------------------------------------------------------------------- train
def train(args):
    results = []
    for split in args.splits:
        train_set, val_set = SPLITS[split]
        for name in args.detectors:
            for seed in args.seeds:
                out = os.path.join(args.output, split, _slug(name), f"seed{seed}")
                metrics = os.path.join(out, "metrics.json")
                if not (args.reuse and os.path.exists(os.path.join(out, "model_final.pth"))):
                    _run_train_net(args, DETECTORS[name], out, seed, train_set, val_set)
                summary = summarize_training(read_metrics(metrics))
                results.append(
                    dict(split=split, detector=name, seed=seed, opts=args.opts, **summary)
                )
                _save(args, "train_runs.json", results)
    _print_table(args, results)
    _plot(args, results)


def read_metrics(path):
    """The records of a run's ``metrics.json`` (Detectron2's JSONWriter: one object a line)."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def summarize_training(records):
    """Final AP / AP50 / AP75, training seconds and the AP-vs-training-time curve of a run.

    Training seconds add up each logged ``time`` (the mean seconds per iteration since the
    previous log) times the iterations it covers; evaluation time is not included.

    Returns:
        dict with AP, AP50, AP75, train_s, iterations and curve ([(train_s, AP), ...] at every
        evaluation). Raises ValueError when the run logged no evaluation (``bbox/AP``) or no
        iteration time.
    """
    train_s, last_iter, curve = 0.0, -1, []
    for r in records:
        if "time" in r and "iteration" in r:
            train_s += r["time"] * (r["iteration"] - last_iter)
            last_iter = r["iteration"]
        if "bbox/AP" in r:
            curve.append((train_s, r["bbox/AP"]))
    evaluations = [r for r in records if "bbox/AP" in r]
    if not evaluations:
        raise ValueError("metrics.json has no evaluation (bbox/AP): was train.eval_period set?")
    if last_iter < 0:
        raise ValueError(
            "metrics.json has no iteration time (Detectron2 logs it from iteration 20 on, every "
            "train.log_period): run more iterations or set train.log_period=1"
        )
    final = evaluations[-1]
    return dict(
        AP=final["bbox/AP"],
        AP50=final["bbox/AP50"],
        AP75=final["bbox/AP75"],
        train_s=train_s,
        iterations=last_iter + 1,
        curve=curve,
    )


def _run_train_net(args, config, out, seed, train_set, val_set):
    opts = [
        f"train.output_dir={out}",
        f"train.seed={seed}",
        f"train.eval_period={args.eval_period}",
        f"dataloader.train.dataset.names={train_set}",
        f"dataloader.test.dataset.names={val_set}",
    ]
    if args.max_iter:
        opts.append(f"train.max_iter={args.max_iter}")
    opts += args.opts  # the same extra overrides for every detector, seed and split
    cmd = [sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file", config, *opts]
    print("running:", " ".join(cmd), flush=True)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "stdout.log"), "w") as log:
        subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=True)


def _print_table(args, results):
    """Markdown table (mean ± std over seeds), printed and saved as table.md."""
    from atss.engine.config import load_config

    lines = [
        "| split | detector | AP | AP50 | AP75 | train min | train s/img | seeds |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    names = list(dict.fromkeys(r["detector"] for r in results))
    batch = {  # images per iteration, read once per detector
        n: load_config(os.path.join(ROOT, DETECTORS[n])).dataloader.train.total_batch_size
        for n in names
    }
    for split in dict.fromkeys(r["split"] for r in results):
        for name in names:
            rs = [r for r in results if r["split"] == split and r["detector"] == name]
            if not rs:
                continue
            per_img = [r["train_s"] / (r["iterations"] * batch[name]) for r in rs]
            cell = {k: _mean_std([r[k] for r in rs]) for k in ("AP", "AP50", "AP75")}
            mins = statistics.mean(r["train_s"] for r in rs) / 60
            lines.append(
                f"| {split} | {name} | {cell['AP']} | {cell['AP50']} | {cell['AP75']} | "
                f"{mins:.1f} | {statistics.mean(per_img):.3f} | {len(rs)} |"
            )
    print("\n" + "\n".join(lines))
    with open(os.path.join(args.output, "table.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def _mean_std(values):
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def _plot(args, results):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = list(dict.fromkeys(r["split"] for r in results))
    fig, axes = plt.subplots(1, len(splits), figsize=(6 * len(splits), 4), squeeze=False)
    for ax, split in zip(axes[0], splits):
        # One colour per detector, one line style per seed.
        for color, name in enumerate(dict.fromkeys(r["detector"] for r in results)):
            runs = [r for r in results if r["split"] == split and r["detector"] == name]
            for style, r in zip(["-", "--", ":", "-."] * len(runs), runs):
                t, ap = zip(*r["curve"]) if r["curve"] else ((), ())
                ax.plot([x / 60 for x in t], ap, style, color=f"C{color}", marker="o",
                        markersize=3, label=f"{name} seed {r['seed']}")  # fmt: skip
        ax.set(title=f"tree crowns, {split} split", xlabel="training time (min)", ylabel="AP")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    path = os.path.join(args.output, "ap_vs_training_time.png")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


def _save(args, name, obj):
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, name), "w") as f:
        json.dump(obj, f, indent=1)


def _slug(name):
    return name.replace("(", "_").replace(")", "").replace("#", "").replace("=", "")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    t = sub.add_parser("timing")
    t.add_argument("--rounds", type=int, default=10)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument(
        "--trained",
        help="folder of `train` runs of one split (e.g. output/compare/spatial): time the seed-0 "
        "final weights instead of freshly initialised models",
    )
    r = sub.add_parser("train")
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--splits", nargs="+", choices=list(SPLITS), default=list(SPLITS))
    r.add_argument("--detectors", nargs="+", choices=list(DETECTORS), default=list(DETECTORS))
    r.add_argument("--max-iter", type=int, default=0, help="shorter schedule (steps scaled)")
    r.add_argument("--eval-period", type=int, default=300)
    r.add_argument("--reuse", action="store_true", help="skip runs that already finished")
    for p in (t, r):
        p.add_argument("--output", default=os.path.join(ROOT, "output", "compare"))
    r.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        help="extra train_net.py overrides for every run, after the flags: optimizer.lr=0.0025",
    )
    args = parse_args(parser, argv)
    if args.mode == "timing" and args.opts:
        parser.error(f"timing takes no config overrides: {' '.join(args.opts)}")
    timing(args) if args.mode == "timing" else train(args)


if __name__ == "__main__":
    main()
