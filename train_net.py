#!/usr/bin/env python
"""Train or evaluate ATSS from a LazyConfig file (Detectron2's ``lazyconfig_train_net`` contract).

    python train_net.py --config-file configs/TreeCrowns/atss_MNV2_FPN_treecrowns.py
    python train_net.py --config-file CFG --eval-only train.init_checkpoint=PATH/model_final.pth
    python train_net.py --run RUN --eval-only                 # RUN/config.yaml, RUN/model_final.pth
    python train_net.py --config-file CFG --resume            # continue from train.output_dir
    python train_net.py --config-file CFG --num-gpus 2        # 2 processes (gloo on CPU)

Trailing ``key=value`` pairs override the config (``train.max_iter=100 train.device=cpu``); a key
the config does not have is refused before anything starts (``+key=value`` adds one). The work
is done by :func:`atss.engine.train_loop.main` (its docstring lists what it adds to Detectron2's
script); ``import atss`` needs the package installed (``pip install -e .``, which ``make venv``
does).
"""

from atss.engine.cli import (
    check_command_line,
    default_argument_parser,
    exit_on_usage_errors,
    launch_training,
    parse_launch_args,
)
from atss.engine.train_loop import main


def invoke_main() -> None:
    # Detectron2's flags + --dist-timeout; a --flag written among the overrides is refused.
    parser = default_argument_parser()
    args = parse_launch_args(parser)
    with exit_on_usage_errors(parser.prog):
        check_command_line(args)  # config file, overrides, weights: before any process starts
        print("Command Line Args:", args)
        launch_training(main, args)  # Detectron2's launch, bounded rendezvous


if __name__ == "__main__":
    invoke_main()
