"""Training and evaluation from a LazyConfig: the body of ``train_net.py`` (Detectron2's
``lazyconfig_train_net`` contract), importable by the tools.

What it adds to Detectron2's script: ``train.device`` resolved at run time, and mixed precision
on every device from Detectron2's one switch, ``train.amp.enabled``, for training and evaluation
alike (:func:`~.device.autocast_dtype`: fp16 with a gradient scaler on CUDA, bf16 on a CPU that
has it); atomic checkpoints carrying the RNG states, the config and the LR schedule, and a
``--resume`` that continues the data stream where it stopped
(:class:`ResumableTrainingSampler`), refuses another config's checkpoint and says what another
schedule changes (:mod:`.checkpoint`); a non-finite loss stops training naming the last good
checkpoint; evaluation with the test-time augmentation, on tiles, or in ONNX Runtime; and
``classes.json`` in the run folder, so the folder alone serves inference (docs/own_data.md).
"""

import itertools
import logging
import os
from typing import Optional

import torch
from detectron2.config import instantiate
from detectron2.data.samplers import TrainingSampler
from detectron2.engine import AMPTrainer, SimpleTrainer, default_setup, default_writers, hooks
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.registry import locate
from torch import nn

from atss.evaluation import build_evaluator
from atss.inference import build_tiled_evaluation
from atss.modeling.tta import build_tta_model

from .checkpoint import (
    AtomicDetectionCheckpointer,
    RNGState,
    ScheduleRecord,
    check_resume,
    config_identity,
)
from .config import NO_WEIGHTS, RANDOM, TRAINED, build_model, load_config, read_run_classes
from .device import autocast, autocast_dtype, resolve_device
from .predictor import write_run_classes

__all__ = [
    "AutocastForward",
    "ResumableAMPTrainer",
    "ResumableTrainingSampler",
    "build_train_loader",
    "build_trainer",
    "do_test",
    "do_train",
    "main",
]

logger = logging.getLogger("detectron2")


class ResumableTrainingSampler(TrainingSampler):
    """Detectron2's :class:`TrainingSampler` (an infinite, seeded stream of shuffled indices,
    dealt round-robin to the processes) that skips the first ``start_index`` indices of the
    global stream.

    After ``k`` finished iterations at a global batch of ``B`` images, ``start_index = k * B``
    gives exactly the batches an uninterrupted run would draw next, provided batches take
    consecutive indices (``aspect_ratio_grouping=False``: grouping keeps leftovers in
    per-aspect buckets, which a restart loses), the batch interleaving of several loader
    workers does not change, and the seed is the first run's (set ``train.seed``).
    """

    def __init__(self, size: int, shuffle: bool = True, seed=None, start_index: int = 0):
        super().__init__(size, shuffle=shuffle, seed=seed)
        self.start_index = int(start_index)

    def __iter__(self):
        start = self.start_index + self._rank
        yield from itertools.islice(self._infinite_indices(), start, None, self._world_size)


class AutocastForward(nn.Module):
    """``module`` whose forward runs under ``torch.autocast(device, dtype)``: for a detector in
    training, the network and the losses, as Detectron2's ``AMPTrainer`` wraps them; the
    backward pass and the optimizer step stay outside."""

    def __init__(self, module: nn.Module, device: str, dtype: torch.dtype):
        super().__init__()
        self.module = module
        self.device, self.dtype = device, dtype

    def forward(self, *args, **kwargs):
        with autocast(self.device, self.dtype):
            return self.module(*args, **kwargs)


class ResumableAMPTrainer(AMPTrainer):
    """Detectron2's :class:`AMPTrainer` (autocast in fp16 and a gradient scaler, CUDA) that also
    resumes a checkpoint without a scaler state, one written in fp32 or bf16: the scaler then
    starts afresh, as at the start of a run."""

    def load_state_dict(self, state_dict):
        super().load_state_dict({"grad_scaler": self.grad_scaler.state_dict(), **state_dict})


def build_trainer(model, data_loader, optimizer, device: str, dtype: Optional[torch.dtype]):
    """The trainer of the autocast ``dtype`` on ``device`` (:func:`~.device.autocast_dtype`):
    for float16, :class:`ResumableAMPTrainer`; for bfloat16, Detectron2's
    :class:`SimpleTrainer` on the model's :class:`AutocastForward` (bf16 has fp32's exponent
    range: gradients need no scaling); for None (fp32), :class:`SimpleTrainer`. The model's
    parameters stay fp32 in all three, so a run resumes in any precision."""
    if dtype == torch.float16:
        # torch.amp's scaler: Detectron2's default, torch.cuda.amp's, is deprecated in torch 2.4+.
        scaler = torch.amp.GradScaler("cuda")
        return ResumableAMPTrainer(model, data_loader, optimizer, grad_scaler=scaler)
    if dtype is not None:
        model = AutocastForward(model, device, dtype)
    return SimpleTrainer(model, data_loader, optimizer)


def do_test(cfg, model) -> dict:
    """Evaluate ``model`` (already wrapped for TTA if wanted) on ``cfg.dataloader.test`` with
    ``cfg.dataloader.evaluator`` and the field metrics (:func:`atss.evaluation.build_evaluator`),
    on tiles when ``test.tile.size`` is set (:func:`atss.inference.build_tiled_evaluation`), in
    the precision of ``cfg.train.amp`` (:func:`~.device.autocast_dtype`); {} when the config has
    no evaluator."""
    if "evaluator" not in cfg.dataloader:
        return {}
    model, loader = build_tiled_evaluation(cfg, model)
    device = cfg.train.device
    with autocast(device, autocast_dtype(device, cfg.train.get("amp", {}))):
        results = inference_on_dataset(model, loader, build_evaluator(cfg))
    if comm.is_main_process():
        print_csv_format(results)
    return results


def build_train_loader(cfg):
    """``cfg.dataloader.train`` with a :class:`ResumableTrainingSampler` when the config sets
    no sampler (its start is set after the checkpoint is loaded, before the first batch).

    Returns:
        (data loader, sampler)
    """
    loader_cfg = cfg.dataloader.train
    kwargs = {k: instantiate(loader_cfg[k]) for k in loader_cfg if k != "_target_"}
    sampler = kwargs.get("sampler")
    if sampler is None:
        sampler = ResumableTrainingSampler(len(kwargs["dataset"]), seed=cfg.train.get("seed"))
        kwargs["sampler"] = sampler
    target = loader_cfg._target_
    if isinstance(target, str):
        target = locate(target)
    return target(**kwargs), sampler


def do_train(args, cfg):
    """Train ``cfg.model`` for ``cfg.train.max_iter`` iterations (from the last checkpoint with
    ``args.resume``), checkpointing and evaluating periodically.

    Raises:
        FloatingPointError: the loss became NaN or inf (logged with the last good checkpoint).
    """
    model = build_model(cfg, NO_WEIGHTS, cfg.train.device)  # the checkpointer loads its start
    logger.info(f"Model:\n{model}")

    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    train_loader, sampler = build_train_loader(cfg)

    model = create_ddp_model(model, **cfg.train.ddp)
    device = cfg.train.device
    dtype = autocast_dtype(device, cfg.train.get("amp", {}))
    trainer = build_trainer(model, train_loader, optimizer, device, dtype)
    multiplier = instantiate(cfg.lr_multiplier)
    schedule = ScheduleRecord(cfg, multiplier, trainer)
    checkpointer = AtomicDetectionCheckpointer(
        model,
        cfg.train.output_dir,
        config_file=config_identity(args.config_file),
        trainer=trainer,
        rng=RNGState(),
        schedule=schedule,
    )
    eval_model = build_tta_model(cfg, model)  # the model itself unless test.aug.enabled
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=multiplier),
            (
                hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer)
                if comm.is_main_process()
                else None
            ),
            hooks.EvalHook(cfg.train.eval_period, lambda: do_test(cfg, eval_model)),
            (
                hooks.PeriodicWriter(
                    default_writers(cfg.train.output_dir, cfg.train.max_iter),
                    period=cfg.train.log_period,
                )
                if comm.is_main_process()
                else None
            ),
        ]
    )

    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    start_iter = 0
    if args.resume and checkpointer.has_checkpoint():
        start_iter = trainer.iter + 1
        group = optimizer.param_groups[hooks.LRScheduler.get_best_param_group_id(optimizer)]
        change = schedule.change(start_iter, group.get("initial_lr", cfg.optimizer.lr))
        if change:
            logger.warning(change)
    if isinstance(sampler, ResumableTrainingSampler):
        sampler.start_index = start_iter * cfg.dataloader.train.total_batch_size
    try:
        trainer.train(start_iter, cfg.train.max_iter)
    except FloatingPointError as e:
        last = checkpointer.get_checkpoint_file() if checkpointer.has_checkpoint() else None
        logger.error(
            f"Training stopped: the loss is not finite at iteration {trainer.iter} ({e}). "
            "The failing step was not applied. Last good checkpoint: "
            f"{last or 'none written yet'}. Try a lower optimizer.lr or a longer warmup."
        )
        raise
    return trainer


def onnxruntime_model(cfg, model):
    """``model``'s ONNX export (made once, cached next to ``train.init_checkpoint``:
    :func:`atss.inference.onnx_runtime.export_cached`) as an ``OnnxDetector`` on
    ``cfg.train.device``: evaluated like the eager model, on tiles too (``test.tile.*``). Each
    process runs its own session on its share of the test set (no DDP: nothing to train)."""
    from atss.export import onnx_session
    from atss.inference.onnx_runtime import OnnxDetector, export_cached

    weights = str(cfg.train.get("init_checkpoint", "") or "")
    path = export_cached(model.cpu().eval(), cfg.model, weights)
    return OnnxDetector(onnx_session(path, cfg.train.device), model)


def main(args):
    """Train, or with ``args.eval_only`` evaluate ``train.init_checkpoint``; the function each
    process runs under Detectron2's ``launch``.

    Args:
        args: parsed by Detectron2's ``default_argument_parser`` (``config_file``, ``opts``,
            ``eval_only``, ``resume``, ...; ``random_weights`` from
            :func:`~.cli.default_argument_parser`, False when absent).

    Returns:
        the evaluation results with ``--eval-only``, else None.

    Raises:
        ValueError: ``--resume`` with a last checkpoint in ``train.output_dir`` that another
            config file wrote (:func:`~.checkpoint.check_resume`).
    """
    # Before default_setup, so that the saved config.yaml holds the class count of the data.
    cfg = load_config(
        args.config_file, args.opts, data_splits=("test",) if args.eval_only else ("train", "test")
    )
    resolve_device(cfg)
    if args.resume and not args.eval_only:  # before default_setup rewrites config.yaml there
        check_resume(cfg.train.output_dir, args.config_file)
    if args.eval_only:
        keep_run_folder(cfg, args.config_file)
    default_setup(cfg, args)
    if not args.eval_only and comm.is_main_process():  # the run folder names its classes
        write_run_classes(cfg, cfg.train.output_dir)

    if args.eval_only:
        random_weights = getattr(args, "random_weights", False)
        model = build_model(
            cfg, RANDOM if random_weights else TRAINED, cfg.train.device, what="evaluate"
        )
        if getattr(args, "runtime", "eager") == "onnxruntime":
            return do_test(cfg, onnxruntime_model(cfg, model))
        model = create_ddp_model(model, **cfg.train.ddp)
        return do_test(cfg, build_tta_model(cfg, model))
    do_train(args, cfg)
    return None


def keep_run_folder(cfg, config_file: str) -> None:
    """``--eval-only`` from a run's own config with ``train.output_dir`` still the run folder:
    evaluate into ``RUN/eval`` instead, so that Detectron2's ``default_setup`` does not replace
    the run's ``config.yaml`` by the evaluation's."""
    folder = os.path.dirname(os.path.abspath(config_file))
    if os.path.abspath(cfg.train.output_dir) == folder and read_run_classes(folder) is not None:
        cfg.train.output_dir = os.path.join(folder, "eval")
        logger.warning(
            f"--eval-only from the run folder {folder}: writing into {cfg.train.output_dir} "
            "(give train.output_dir=DIR for another place)"
        )
