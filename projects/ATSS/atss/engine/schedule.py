"""Shortening a training schedule: one rule for every entry point that runs a shorter job."""

from typing import List, Sequence

__all__ = ["scale_milestones", "shortened_schedule_overrides"]


def scale_milestones(milestones: Sequence[int], full_iter: int, max_iter: int) -> List[int]:
    """The LR steps of a ``full_iter`` schedule moved proportionally to a ``max_iter`` one.

    ``floor(m * max_iter / full_iter)`` in integer arithmetic, so the full length gives the
    config's own steps back (1100 iterations, steps 800/1000: ``max_iter=1100`` -> [800, 1000],
    500 -> [363, 454]).
    """
    if full_iter <= 0 or max_iter <= 0:
        raise ValueError(f"schedule lengths must be positive, got {full_iter} and {max_iter}")
    return [int(m) * max_iter // full_iter for m in milestones]


def shortened_schedule_overrides(cfg, max_iter: int) -> List[str]:
    """Config overrides (``key=value``) that run ``cfg``'s schedule in ``max_iter`` iterations.

    ``train.max_iter`` and the scheduler's ``num_updates`` become ``max_iter``; the LR steps
    scale with :func:`scale_milestones`. The warmup of Detectron2's ``WarmupParamScheduler`` is
    a fraction of the schedule (``warmup_length``), so it scales by itself.

    Args:
        cfg: a LazyConfig with ``train.max_iter`` and ``lr_multiplier.scheduler.milestones``
            (Detectron2's ``MultiStepParamScheduler``).

    Raises:
        ValueError: the config's scheduler has no ``milestones``, or ``max_iter`` is too short
            to keep the scaled steps apart (each must lie strictly between the previous one,
            0 first, and ``max_iter``, or Detectron2's scheduler fails).
    """
    scheduler = cfg.lr_multiplier.scheduler
    milestones = scheduler.get("milestones", None)
    if milestones is None:
        raise ValueError(
            "lr_multiplier.scheduler has no 'milestones' (a MultiStepParamScheduler is needed "
            f"to shorten the schedule); its target is {scheduler.get('_target_')}"
        )
    steps = scale_milestones(milestones, int(cfg.train.max_iter), max_iter)
    bounds = [0] + steps + [max_iter]
    if any(later <= earlier for earlier, later in zip(bounds, bounds[1:])):
        raise ValueError(
            f"max_iter={max_iter} is too short for the LR steps {list(milestones)} of the "
            f"config's {cfg.train.max_iter} iterations (lr_multiplier.scheduler.milestones): "
            f"scaled, they become {steps}"
        )
    return [
        f"train.max_iter={max_iter}",
        f"lr_multiplier.scheduler.num_updates={max_iter}",
        f"lr_multiplier.scheduler.milestones=[{','.join(map(str, steps))}]",
    ]
