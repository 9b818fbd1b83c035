"""Write a small COCO-format folder to try the "Train on your own data" commands on.

    python tools/make_coco_example.py /tmp/coco_example [--num-train 24 --num-val 8]

Writes ``images/*.png`` (RGB, every third one 8-bit grey), ``train.json`` and ``val.json``:
rectangles and ellipses of :mod:`atss.data.shapes` with category ids 3 and 7, not 1..N, as
annotation tools that keep their own ids export them.
"""

import argparse
from typing import Dict, Tuple

from atss.data.shapes import write_shapes_coco

CATEGORIES = {"rectangle": 3, "ellipse": 7}


def write_coco_example(
    folder: str, num_train: int = 24, num_val: int = 8, size: Tuple[int, int] = (160, 256), seed=0
) -> Dict[str, str]:
    """The example folder; returns ``{"train_json", "val_json", "image_root"}`` paths. Images
    ``0..num_train-1`` are the train split, the next ``num_val`` the val split; ``size`` is
    (smallest, largest) image side in pixels."""
    splits = [("train", num_train), ("val", num_val)]
    paths = write_shapes_coco(folder, splits, seed, size, categories=CATEGORIES, grey_every=3)
    return {
        "train_json": paths["train"],
        "val_json": paths["val"],
        "image_root": paths["image_root"],
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--num-train", type=int, default=24)
    parser.add_argument("--num-val", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    paths = write_coco_example(args.folder, args.num_train, args.num_val, seed=args.seed)
    for key, path in paths.items():
        print(f"{key}: {path}")


if __name__ == "__main__":
    main()
