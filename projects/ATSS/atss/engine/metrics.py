"""Reading the ``metrics.json`` that Detectron2's JSONWriter appends to during training."""

import json
import os
from typing import List, Optional

__all__ = ["read_metrics", "median_iteration_time", "summarize_training"]


def read_metrics(path: str) -> List[dict]:
    """The records of a ``metrics.json`` (one JSON object per line), in order; [] when the file
    does not exist."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def median_iteration_time(records: List[dict]) -> Optional[float]:
    """Median of the logged seconds per iteration (Detectron2's ``time``), None if none."""
    times = sorted(r["time"] for r in records if r.get("time") is not None)
    return times[len(times) // 2] if times else None


def summarize_training(records: List[dict]) -> dict:
    """Final AP / AP50 / AP75, training seconds and the AP-vs-training-time curve of a run.

    Training seconds add up each logged ``time`` (the average seconds per iteration since the
    previous log) times the iterations it covers; evaluation time is not included.

    Returns:
        dict with AP, AP50, AP75, train_s, iterations and curve ([(train_s, AP), ...] at every
        evaluation).

    Raises:
        ValueError: the run logged no evaluation (``bbox/AP``).
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
    final = evaluations[-1]
    return dict(
        AP=final["bbox/AP"],
        AP50=final["bbox/AP50"],
        AP75=final["bbox/AP75"],
        train_s=train_s,
        iterations=last_iter + 1,
        curve=curve,
    )
