# The authors' schedules at 16 images per batch: constant warmup (x1/3) for 500 iterations, then
# LR x0.1 at each step. 1x = 90k iterations (steps 60k, 80k), 2x = 180k (steps 120k, 160k).
# Shorter runs (tree crowns, shapes) call atss_schedule with their own warmup.
from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler


def atss_schedule(
    max_iter, steps, warmup_iters=500, warmup_factor=1.0 / 3, warmup_method="constant"
):
    """
    LR multiplier: 1 until the first of `steps`, then x0.1 at each step; during the first
    `warmup_iters` iterations a `warmup_method` ("constant" or "linear") warmup from
    `warmup_factor` (Detectron2's WarmupParamScheduler).
    """
    return L(WarmupParamScheduler)(
        scheduler=L(MultiStepParamScheduler)(
            values=[10.0**-i for i in range(len(steps) + 1)],
            milestones=list(steps),
            num_updates=max_iter,
        ),
        warmup_length=warmup_iters / max_iter,
        warmup_method=warmup_method,
        warmup_factor=warmup_factor,
    )


lr_multiplier_1x = atss_schedule(90000, (60000, 80000))
lr_multiplier_2x = atss_schedule(180000, (120000, 160000))
