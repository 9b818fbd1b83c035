#!/usr/bin/env python
"""
Where the time of a training step goes: data, backbone, FPN, head convs, GroupNorm, matcher,
losses, optimizer, forward and backward separately.

The step is run under ``torch.profiler`` with the model's parts labelled by ``record_function``
(the labels are put on the instance for the profiled steps only). Forward time is the
labelled ranges' own time; a backward op is charged to the part whose forward op created its
autograd node (matched by the autograd sequence number), so "head convs, backward" is the
backward of the head's convolutions wherever the engine ran it.

    .venv/bin/python tools/profile_train_step.py \
        --config-file configs/TreeCrowns/atss_MNV2_FPN_treecrowns.py \
        [--size H W] [--batch N] [--steps 2] [--warmup 1] [--threads 1] [key=value ...]

prints the table of ``docs/profile_train_step.md`` (part, forward ms, backward ms, total ms,
share of the step), on the CPU with the model's random initialisation unless
``train.init_checkpoint=`` names a start (as training would load it).
"""

import argparse
import contextlib
import time
from collections import defaultdict
from typing import Dict, List, Tuple

import torch
from detectron2.config import instantiate
from detectron2.utils.events import EventStorage
from torch.profiler import ProfilerActivity, profile, record_function

from atss.engine.cli import exit_on_usage_errors, reject_flags_in_overrides
from atss.engine.config import START, build_model, load_config
from atss.utils.benchmark import configure

# (label, object path from the model, attribute) of the labelled parts; inner ones win.
_LABELS = [
    ("preprocess", "", "preprocess_image"),
    ("fpn", "backbone", "forward"),
    ("backbone", "backbone.bottom_up", "forward"),
    ("head", "head", "forward"),
    ("matcher", "", "label_anchors"),
    ("losses", "", "losses"),
]
PARTS = [
    "data",
    "preprocess",
    "backbone convs",
    "backbone other (FrozenBN, ReLU6, adds)",
    "FPN",
    "head convs",
    "head GroupNorm",
    "head other (ReLU, scales)",
    "matcher",
    "losses",
    "optimizer (zero_grad, step)",
    "other (anchors, transposes, metrics, grad accumulation)",
]
_STEP_LABELS = {"data", "optimizer", "metrics"}


def _resolve(model, path: str):
    obj = model
    for name in filter(None, path.split(".")):
        obj = getattr(obj, name)
    return obj


@contextlib.contextmanager
def _labelled(model):
    """Wrap the parts' methods in ``record_function`` ranges (instance attributes, removed on
    exit)."""
    patched = []
    for label, path, attr in _LABELS:
        obj = _resolve(model, path)
        method = getattr(obj, attr)

        def wrapped(*args, _method=method, _label=label, **kwargs):
            with record_function(_label):
                return _method(*args, **kwargs)

        setattr(obj, attr, wrapped)
        patched.append((obj, attr))
    try:
        yield
    finally:
        for obj, attr in patched:
            delattr(obj, attr)


def _region(event, regions) -> str:
    while event is not None:
        if event.name in regions:
            return event.name
        event = event.cpu_parent
    return ""


def _part(region: str, op: str) -> str:
    """The table row of an op (forward op name, or the backward node's forward name)."""
    conv = "conv" in op.lower()
    if region == "backbone":
        return "backbone convs" if conv else "backbone other (FrozenBN, ReLU6, adds)"
    if region == "head":
        if "group_norm" in op.lower() or "groupnorm" in op.lower():
            return "head GroupNorm"
        return "head convs" if conv else "head other (ReLU, scales)"
    return {
        "fpn": "FPN",
        "data": "data",
        "preprocess": "preprocess",
        "matcher": "matcher",
        "losses": "losses",
        "optimizer": "optimizer (zero_grad, step)",
    }.get(region, "other (anchors, transposes, metrics, grad accumulation)")


def _attribute(events) -> Dict[Tuple[str, str], float]:
    """(part, "forward" | "backward") -> microseconds, from the profiler's CPU events."""
    regions = {label for label, _, _ in _LABELS} | _STEP_LABELS
    times: Dict[Tuple[str, str], float] = defaultdict(float)
    forward_of_seq: Dict[int, Tuple[str, str]] = {}
    for e in events:
        is_op = e.cpu_parent is None or e.cpu_parent.name in regions
        if e.name in regions or not is_op:
            continue
        if e.name.startswith("autograd::engine::evaluate_function"):
            region, op = forward_of_seq.get(e.sequence_nr, ("", e.name))
            times[(_part(region, op), "backward")] += e.cpu_time_total
            continue
        region = _region(e.cpu_parent, regions)
        if e.sequence_nr >= 0:
            # Ops that create no autograd node carry the next node's number: the last op with
            # a number is the one whose backward bears it.
            forward_of_seq[e.sequence_nr] = (region, e.name)
        times[(_part(region, e.name), "forward")] += e.cpu_time_total
    return times


def _train_step(model, optimizer, batches):
    with record_function("data"):
        batch = next(batches)
    loss_dict = model(batch)
    losses = sum(loss_dict.values())
    with record_function("optimizer"):
        optimizer.zero_grad()
    losses.backward()
    with record_function("metrics"):  # SimpleTrainer's per-step host read of the losses
        {k: v.item() for k, v in loss_dict.items()}
    with record_function("optimizer"):
        optimizer.step()


def profile_train_step(cfg, steps: int = 2, warmup: int = 1, model=None) -> Dict[str, object]:
    """
    Profile ``steps`` training steps (after ``warmup`` unprofiled ones) of a LazyConfig on the
    CPU, with batches read from its training loader inside the step (so "data" is counted).
    ``model``: profile this model instead of a new one built from ``cfg.model``.

    Returns:
        ``{"rows": [(part, forward ms, backward ms)], "step_ms": mean profiled step time}``,
        times per step.
    """
    if model is None:
        model = build_model(cfg, START, cfg.train.device)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    batches = iter(instantiate(cfg.dataloader.train))
    model.train()
    with EventStorage(0):
        for _ in range(warmup):
            _train_step(model, optimizer, batches)
        with _labelled(model), profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                _train_step(model, optimizer, batches)
    times = _attribute(prof.events())
    rows = [
        (p, times[(p, "forward")] / steps / 1e3, times[(p, "backward")] / steps / 1e3)
        for p in PARTS
    ]
    return {"rows": rows, "step_ms": sum(f + b for _, f, b in rows)}


def format_profile_table(result: Dict[str, object]) -> str:
    """A markdown table: part, forward ms, backward ms, total ms, share of the step."""
    total = result["step_ms"]
    lines = ["| part | forward ms | backward ms | total ms | share |", "|---|---:|---:|---:|---:|"]
    rows: List[Tuple[str, float, float]] = result["rows"]
    for part, fwd, bwd in rows:
        lines.append(
            f"| {part} | {fwd:.0f} | {bwd:.0f} | {fwd + bwd:.0f} | {(fwd + bwd) / total:.1%} |"
        )
    forward, backward = sum(r[1] for r in rows), sum(r[2] for r in rows)
    lines.append(f"| **step** | {forward:.0f} | {backward:.0f} | {total:.0f} | 100% |")
    return "\n".join(lines)


def interleaved_train_steps(models: Dict[str, torch.nn.Module], cfg, batches, rounds: int):
    """
    Train every model of ``models`` (same initial weights expected) on the same ``batches``
    (a list, one per round), alternating the models within each round so that a change in the
    machine's load hits all of them alike.

    Returns:
        ``{name: {"seconds": [per round], "losses": [per round, dict], "model": model}}``.
    """
    out = {}
    optimizers = {}
    for name, model in models.items():
        model.train()
        cfg.optimizer.params.model = model
        optimizers[name] = instantiate(cfg.optimizer)
        out[name] = {"seconds": [], "losses": [], "model": model}
    with EventStorage(0):
        for r in range(rounds):
            order = list(models) if r % 2 == 0 else list(reversed(list(models)))
            for name in order:
                model, optimizer = models[name], optimizers[name]
                start = time.perf_counter()
                loss_dict = model(batches[r % len(batches)])
                losses = sum(loss_dict.values())
                optimizer.zero_grad()
                losses.backward()
                optimizer.step()
                out[name]["seconds"].append(time.perf_counter() - start)
                out[name]["losses"].append({k: v.item() for k, v in loss_dict.items()})
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().split("\n")[0])
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="resize inputs to H x W")
    p.add_argument("--batch", type=int, help="images per training step")
    p.add_argument("--steps", type=int, default=2, help="profiled steps")
    p.add_argument("--warmup", type=int, default=1, help="unprofiled steps first")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="key=value config overrides")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    reject_flags_in_overrides(args.opts, argv)
    torch.set_num_threads(args.threads)
    with exit_on_usage_errors("profile_train_step.py"):
        cfg = load_config(args.config_file, ["train.device=cpu", *args.opts])
    cfg = configure(cfg, size=args.size, batch=args.batch)
    result = profile_train_step(cfg, steps=args.steps, warmup=args.warmup)
    print(format_profile_table(result))
    return result


if __name__ == "__main__":
    main()
