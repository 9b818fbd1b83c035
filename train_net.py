#!/usr/bin/env python
"""Train or evaluate ATSS from a LazyConfig file (Detectron2's ``lazyconfig_train_net`` contract).

    python train_net.py --config-file configs/TreeCrowns/atss_MNV2_FPN_treecrowns.py
    python train_net.py --config-file CFG --eval-only train.init_checkpoint=PATH/model_final.pth
    python train_net.py --config-file CFG --resume            # continue from train.output_dir
    python train_net.py --config-file CFG --num-gpus 2        # 2 processes (gloo on CPU)

Trailing ``key=value`` pairs override the config (``train.max_iter=100 train.device=cpu``).

Additions to Detectron2's script:
* ``train.device`` "cuda" falls back to "cpu" (with a log line) when CUDA is unavailable; with
  several processes on CPU, DDP gets ``device_ids=None`` (gloo) automatically;
* ``train.amp.enabled`` is refused on CPU (Detectron2's AMPTrainer needs CUDA);
* checkpoints are written atomically and carry the RNG states; ``--resume`` continues the data
  stream where it stopped (see :mod:`atss.engine`);
* a non-finite loss stops training with a clear message; no optimizer step is taken with it,
  and the checkpoints already written stay valid;
* the tree-crown and shapes datasets are registered in every process.
"""

import logging
import os
import sys

# Use the `atss` package of this checkout (ahead of any installed copy), so the script works
# from a fresh clone without `pip install -e`.
_PROJECT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "projects", "ATSS")
if os.path.isdir(_PROJECT) and _PROJECT not in sys.path:
    sys.path.insert(0, _PROJECT)

import torch  # noqa: E402
from detectron2.config import LazyConfig, instantiate  # noqa: E402
from detectron2.engine import (  # noqa: E402
    AMPTrainer,
    SimpleTrainer,
    default_argument_parser,
    default_setup,
    default_writers,
    hooks,
    launch,
)
from detectron2.engine.defaults import create_ddp_model  # noqa: E402
from detectron2.evaluation import inference_on_dataset, print_csv_format  # noqa: E402
from detectron2.utils import comm  # noqa: E402

from atss.engine import (  # noqa: E402
    AtomicDetectionCheckpointer,
    ResumableTrainingSampler,
    RNGState,
)
from atss.evaluation import build_evaluator  # noqa: E402
from atss.inference import build_tiled_model  # noqa: E402

logger = logging.getLogger("detectron2")


def register_datasets():
    """Register the project's datasets (idempotent); runs in every launched process."""
    from atss.data import register_all_shapes, register_all_treecrowns

    register_all_shapes()
    try:
        register_all_treecrowns()
    except Exception as e:  # e.g. deepforest missing: shapes-only runs still work
        logging.getLogger(__name__).warning(f"Tree-crown datasets not registered: {e}")


def resolve_device(cfg):
    """Pick ``train.device``: CUDA falls back to CPU when absent; DDP on CPU needs
    ``device_ids=None``; AMP needs CUDA."""
    device = str(cfg.train.get("device", "cuda"))
    if device.startswith("cuda") and not torch.cuda.is_available():
        logger.warning(f"train.device={device} but CUDA is not available: using the CPU.")
        device = "cpu"
    cfg.train.device = device
    if device == "cpu" and comm.get_world_size() > 1 and "device_ids" not in cfg.train.ddp:
        cfg.train.ddp.device_ids = None
    if cfg.train.get("amp", {}).get("enabled", False) and device == "cpu":
        raise ValueError(
            "train.amp.enabled=True needs CUDA (Detectron2's AMPTrainer is GPU-only); "
            "run with train.amp.enabled=False on the CPU."
        )
    return device


def do_test(cfg, model):
    if "evaluator" not in cfg.dataloader:
        return {}
    results = inference_on_dataset(
        build_tiled_model(cfg, model), instantiate(cfg.dataloader.test), build_evaluator(cfg)
    )
    if comm.is_main_process():
        print_csv_format(results)
    return results


def maybe_wrap_tta(cfg, model):
    # --- test-time augmentation hook (atss.modeling.tta is written separately) -------------
    if not cfg.get("test", {}).get("aug", {}).get("enabled", False):
        return model
    try:
        from atss.modeling.tta import build_tta_model
    except ImportError as e:
        raise RuntimeError(
            "test.aug.enabled=True but atss.modeling.tta.build_tta_model is not available"
        ) from e
    return build_tta_model(cfg, model)


def build_train_loader(cfg):
    """``cfg.dataloader.train`` with a :class:`ResumableTrainingSampler` when the config sets
    no sampler (its start is set after the checkpoint is loaded, before the first batch)."""
    loader_cfg = cfg.dataloader.train
    kwargs = {k: instantiate(loader_cfg[k]) for k in loader_cfg if k != "_target_"}
    sampler = kwargs.get("sampler")
    if sampler is None:
        sampler = ResumableTrainingSampler(len(kwargs["dataset"]), seed=cfg.train.get("seed"))
        kwargs["sampler"] = sampler
    target = loader_cfg._target_
    if isinstance(target, str):
        from detectron2.utils.registry import locate

        target = locate(target)
    return target(**kwargs), sampler


def do_train(args, cfg):
    model = instantiate(cfg.model)
    logger.info(f"Model:\n{model}")
    model.to(cfg.train.device)

    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    train_loader, sampler = build_train_loader(cfg)

    model = create_ddp_model(model, **cfg.train.ddp)
    trainer_cls = AMPTrainer if cfg.train.amp.enabled else SimpleTrainer
    trainer = trainer_cls(model, train_loader, optimizer)
    checkpointer = AtomicDetectionCheckpointer(
        model, cfg.train.output_dir, trainer=trainer, rng=RNGState()
    )
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            (
                hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer)
                if comm.is_main_process()
                else None
            ),
            hooks.EvalHook(cfg.train.eval_period, lambda: do_test(cfg, model)),
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


def main(args):
    register_datasets()
    cfg = LazyConfig.load(args.config_file)
    cfg = LazyConfig.apply_overrides(cfg, args.opts)
    resolve_device(cfg)
    default_setup(cfg, args)

    if args.eval_only:
        model = instantiate(cfg.model)
        model.to(cfg.train.device)
        model = create_ddp_model(model, **cfg.train.ddp)
        AtomicDetectionCheckpointer(model).load(cfg.train.init_checkpoint)
        model = maybe_wrap_tta(cfg, model)
        return do_test(cfg, model)
    do_train(args, cfg)
    return None


def invoke_main() -> None:
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    invoke_main()
