"""Training and evaluation from a LazyConfig: the body of the repository's ``train_net.py``
(Detectron2's ``lazyconfig_train_net`` contract), importable by other entry points.

What it adds to Detectron2's script:

* ``train.device`` "cuda" (Detectron2's default; no config sets another) falls back to "cpu"
  when CUDA is unavailable, DDP on the CPU gets ``device_ids=None``, AMP on the CPU is refused
  (:func:`atss.engine.device.resolve_device`);
* checkpoints are written atomically and carry the RNG states and the config file they were
  written under; ``--resume`` continues the data stream where it stopped
  (:class:`AtomicDetectionCheckpointer`, :class:`RNGState`, :class:`ResumableTrainingSampler`)
  and refuses a last checkpoint of another config (:func:`atss.engine.resume.check_resume`);
* a non-finite loss stops training with a message naming the iteration and the last good
  checkpoint; no optimizer step is taken with it;
* evaluation, periodic and ``--eval-only``, runs the test-time-augmented model when
  ``test.aug.enabled`` (:func:`atss.modeling.tta.build_tta_model`);
* ``train.output_dir`` holds the class list (``classes.json``: ids and names) beside the
  config and the weights, so the folder alone serves inference (:mod:`.run_folder`);
* the data given on the command line to a ``configs/Custom`` config are checked before
  anything is built, and the class count is taken from them (:func:`~.config.load_config`);
  the datasets themselves are registered and built by the loaders the config names, in every
  process, as under Detectron2's own ``lazyconfig_train_net.py``;
* an override of a key the config does not have is refused (:mod:`.overrides`), and
  ``--eval-only`` needs the weights of a trained model in ``train.init_checkpoint`` or an
  explicit ``--random-weights`` (:mod:`.weights`); :func:`check_command_line` checks both
  before any process is launched.
"""

import logging

from detectron2.config import instantiate
from detectron2.engine import AMPTrainer, SimpleTrainer, default_setup, default_writers, hooks
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.registry import locate

from atss.evaluation import build_evaluator
from atss.inference import build_tiled_evaluation
from atss.modeling.tta import build_tta_model

from .checkpoint import AtomicDetectionCheckpointer, RNGState
from .config import NO_WEIGHTS, RANDOM, TRAINED, build_model, load_config
from .device import resolve_device
from .overrides import ConfigError, load_checked_config
from .resume import check_resume, config_identity
from .run_folder import keep_run_config, write_run_classes
from .sampler import ResumableTrainingSampler
from .weights import WeightsError, weights_overrides

__all__ = ["main", "do_train", "do_test", "build_train_loader", "check_command_line"]

logger = logging.getLogger("detectron2")


def do_test(cfg, model) -> dict:
    """Evaluate ``model`` (already wrapped for TTA if wanted) on ``cfg.dataloader.test`` with
    ``cfg.dataloader.evaluator`` and the field metrics (:func:`atss.evaluation.build_evaluator`),
    on tiles when ``test.tile.size`` is set (:func:`atss.inference.build_tiled_evaluation`); {} when
    the config has no evaluator."""
    if "evaluator" not in cfg.dataloader:
        return {}
    model, loader = build_tiled_evaluation(cfg, model)
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
    trainer_cls = AMPTrainer if cfg.train.amp.enabled else SimpleTrainer
    trainer = trainer_cls(model, train_loader, optimizer)
    checkpointer = AtomicDetectionCheckpointer(
        model,
        cfg.train.output_dir,
        config_file=config_identity(args.config_file),
        trainer=trainer,
        rng=RNGState(),
    )
    eval_model = build_tta_model(cfg, model)  # the model itself unless test.aug.enabled
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
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
    if args.resume and checkpointer.has_checkpoint():
        start_iter = trainer.iter + 1
    else:
        start_iter = 0
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
    :func:`~.onnx_runtime.export_cached`) as an :class:`~.onnx_runtime.OnnxDetector` on
    ``cfg.train.device``: evaluated like the eager model, on tiles too (``test.tile.*``). Each
    process runs its own session on its share of the test set (no DDP: nothing to train)."""
    from atss.export import onnx_session

    from .onnx_runtime import OnnxDetector, export_cached

    weights = str(cfg.train.get("init_checkpoint", "") or "")
    path = export_cached(model.cpu().eval(), cfg.model, weights)
    return OnnxDetector(onnx_session(path, cfg.train.device), model)


def check_command_line(args) -> None:
    """Refuse, before launching, what :func:`main` would refuse in every process: a missing
    config file, an override of an unknown key (:class:`~.overrides.ConfigError`), and
    ``--eval-only`` without weights and without ``--random-weights`` (:class:`WeightsError`).
    """
    random_weights = getattr(args, "random_weights", False)
    if random_weights and not args.eval_only:
        raise WeightsError(
            "--random-weights applies to --eval-only; training starts from "
            "train.init_checkpoint (empty: from scratch)"
        )
    weights_overrides(args.opts, random_weights=random_weights)
    cfg = load_checked_config(args.config_file, args.opts)
    if getattr(args, "runtime", "eager") == "onnxruntime":
        if not args.eval_only:
            raise ConfigError("--runtime onnxruntime applies to --eval-only; training runs eager")
        if cfg.get("test", {}).get("aug", {}).get("enabled", False):
            raise ConfigError(
                "--runtime onnxruntime with test.aug.enabled=True: the test-time augmentation "
                "runs the eager model only; drop one of them"
            )
    if args.eval_only and not random_weights and not cfg.train.get("init_checkpoint", ""):
        raise WeightsError(
            "--eval-only with an empty train.init_checkpoint: set train.init_checkpoint=PATH to "
            "a trained run's model_final.pth, or pass --random-weights to evaluate a randomly "
            "initialised model"
        )


def main(args):
    """Train, or with ``args.eval_only`` evaluate ``train.init_checkpoint``; the function each
    process runs under Detectron2's ``launch``.

    Args:
        args: parsed by Detectron2's ``default_argument_parser`` (``config_file``, ``opts``,
            ``eval_only``, ``resume``, ...; ``random_weights`` from
            :func:`atss.engine.cli.default_argument_parser`, False when absent).

    Returns:
        the evaluation results with ``--eval-only``, else None.

    Raises:
        ValueError: ``--resume`` with a last checkpoint in ``train.output_dir`` that another
            config file wrote (:func:`atss.engine.resume.check_resume`).
    """
    # Before default_setup, so that the saved config.yaml holds the class count of the data.
    cfg = load_config(
        args.config_file, args.opts, data_splits=("test",) if args.eval_only else ("train", "test")
    )
    resolve_device(cfg)
    if args.resume and not args.eval_only:  # before default_setup rewrites config.yaml there
        check_resume(cfg.train.output_dir, args.config_file)
    if args.eval_only:
        keep_run_config(cfg, args.config_file)
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
