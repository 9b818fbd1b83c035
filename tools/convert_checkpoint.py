r"""
Convert a published ATSS checkpoint (the authors' maskrcnn-benchmark release or mmdetection's)
into a Detectron2 checkpoint of this project's model.

    python tools/convert_checkpoint.py ATSS_R_50_FPN_1x.pth \
        output/converted/ATSS_R_50_FPN_1x.pth \
        --config-file configs/COCO/converted/atss_R_50_FPN_1x_authors.py

Then run it with ``train.init_checkpoint=output/converted/ATSS_R_50_FPN_1x.pth`` (``demo.py``,
``train_net.py --eval-only``). With ``--config-file`` the converted weights are checked against
the model the config builds (names and shapes, as a strict load would); the exit status is 1 when
they do not match. The format is detected from the key names unless ``--format`` is given; a
checkpoint in neither published format is kept as it is (``detectron2``).

A file that holds Python objects beside the weights is refused, as everywhere in the project,
because unpickling them can run code. ``--allow-pickle`` unpickles it fully: the one place in
the project that does, for a file you trust. The file it writes holds the weights only, and
loads without it (docs/published_weights.md):

    python tools/convert_checkpoint.py --allow-pickle TRUSTED.pth OUT.pth
"""

import argparse
import logging
import os
import sys
from typing import Dict, Optional

import torch

from atss.converters import FORMATS, check_against_model, convert_checkpoint

logger = logging.getLogger("convert_checkpoint")


def format_report(report: Dict[str, list], limit: Optional[int] = 10) -> str:
    """A readable summary of ``check_against_model``'s result."""
    lines = []
    for name in ("missing", "unexpected", "shape_mismatch"):
        items = report[name]
        if items:
            shown = items if limit is None else items[:limit]
            more = "" if len(shown) == len(items) else f" (+{len(items) - len(shown)} more)"
            lines.append(f"{len(items)} {name}{more}: {shown}")
    return "\n".join(lines) if lines else "all keys and shapes match"


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="checkpoint to convert (.pth, or a model-zoo .pkl)")
    parser.add_argument("output", help="converted checkpoint to write (.pth)")
    parser.add_argument(
        "--format",
        default="auto",
        choices=("auto",) + FORMATS,
        help="auto: the authors' or mmdetection's from the key names, else detectron2 (kept)",
    )
    parser.add_argument(
        "--config-file",
        default="",
        help="LazyConfig whose model the converted weights must fit (checked, not required)",
    )
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="unpickle the input fully, running whatever it names (the one place in the "
        "project that does): only for a file you trust; the output then loads safely",
    )
    return parser


def build_model_state(config_file):
    """The state dict of the model ``config_file`` builds (on the CPU, randomly initialised)."""
    from atss.engine.config import NO_WEIGHTS, build_model, load_config

    return build_model(load_config(config_file), NO_WEIGHTS, "cpu").state_dict()


def main(argv=None):
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        fmt, checkpoint = convert_checkpoint(args.input, args.format, args.allow_pickle)
    except (OSError, ValueError) as e:
        logger.error("error: %s", e)
        return 2
    state_dict = checkpoint["model"]
    logger.info("%s: %s checkpoint, %d tensors converted", args.input, fmt, len(state_dict))
    status = 0
    if args.config_file:
        report = check_against_model(state_dict, build_model_state(args.config_file))
        logger.info("check against %s: %s", args.config_file, format_report(report))
        status = 1 if any(report.values()) else 0
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    torch.save(checkpoint, args.output)
    logger.info("wrote %s", args.output)
    return status


if __name__ == "__main__":
    sys.exit(main())
