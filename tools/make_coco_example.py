"""Write a small COCO-format folder to try the "Train on your own data" commands on.

    python tools/make_coco_example.py /tmp/coco_example [--num-train 24 --num-val 8]

Writes ``images/*.png`` (RGB, every third one grey), ``train.json`` and ``val.json`` with two
classes of ids 3 and 7 (see :mod:`atss.utils.coco_example`).
"""

import argparse

from atss.utils.coco_example import write_coco_example


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
