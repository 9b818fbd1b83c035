"""
Check detection datasets before a long run: the same validation train_net.py's loaders apply
(missing files, malformed JSON, NaN/inf or non-box coordinates, unknown categories -> errors;
zero-size / out-of-image boxes -> repaired and counted; crowd boxes and empty images counted),
and with ``--decode`` every image is read as the mapper would read it, listing all unreadable
or wrongly sized images at once instead of failing at the first one mid-training.

    # registered datasets (Detectron2's builtin coco_*, this project's treecrowns_* / shapes_*)
    python tools/validate_dataset.py treecrowns_train treecrowns_val --decode
    # a COCO-format JSON of your own
    python tools/validate_dataset.py --coco-json ann.json --image-root images/ --decode
    # the data given to a config on the command line (configs/Custom/*)
    python tools/validate_dataset.py --config-file configs/Custom/atss_MNV2_FPN_coco_json.py \
        --decode dataset.train.json_file=train.json dataset.train.image_root=images/ \
        dataset.test.json_file=val.json dataset.test.image_root=images/

Overrides come last. Exit status 0 when the datasets can be used (repairs are reported, not
fatal), 1 otherwise.
"""

import argparse
import logging
import os
import sys
from typing import List, Sequence

from detectron2.data.detection_utils import SizeMismatchError, check_image_size, read_image

from atss.data import DatasetError, get_checked_detection_dataset_dicts, register_coco_json
from atss.engine.cli import parse_args
from atss.engine.config import ConfigError, config_dataset_names, load_config
from atss.fileio import UnsafeFileError


def find_unreadable_images(dataset_dicts: Sequence[dict]) -> List[str]:
    """Read every image of ``dataset_dicts`` as the mapper would; one message (file, image id,
    error) per image that cannot be used."""
    problems = []
    for record in dataset_dicts:
        try:
            image = read_image(record["file_name"], format="RGB")
            check_image_size(record, image)
        except (OSError, SizeMismatchError) as e:
            where = record["file_name"]
            if "image_id" in record:
                where += f" (image_id {record['image_id']})"
            problems.append(f"{where}: {type(e).__name__}: {e}")
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="registered dataset names")
    parser.add_argument("--coco-json", help="a COCO instances JSON to check (with --image-root)")
    parser.add_argument("--image-root", help="folder the JSON's file_name entries are relative to")
    parser.add_argument("--decode", action="store_true", help="read every image (slow)")
    parser.add_argument("--no-file-check", action="store_true", help="skip the existence check")
    parser.add_argument(
        "--config-file", help="a configs/Custom config; its key=value overrides come last"
    )
    args = parse_args(parser, argv)  # the overrides, cut off before the names: args.opts
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    names, overrides = list(args.names), args.opts
    if overrides and not args.config_file:
        parser.error(f"key=value overrides {overrides} need --config-file")
    try:
        # Registers the project's datasets (as in training) and those the config is given.
        cfg = load_config(args.config_file, overrides) if args.config_file else None
    except (DatasetError, ConfigError, UnsafeFileError) as e:  # also a missing config, a bad key
        print(f"ERROR {e}")
        print("FAILED")
        return 1
    if cfg is not None:
        names += config_dataset_names(cfg)
    if args.coco_json:
        if not args.image_root:
            parser.error("--coco-json needs --image-root")
        name = f"{os.path.abspath(args.coco_json)}@{os.path.abspath(args.image_root)}"
        try:
            register_coco_json(name, args.coco_json, args.image_root)
        except DatasetError as e:
            print(f"ERROR {e}")
            print("FAILED")
            return 1
        names.append(name)
    if not names:
        parser.error("give dataset names or --coco-json")

    failed = False
    for name in names:
        try:
            dicts = get_checked_detection_dataset_dicts(
                name, filter_empty=False, check_files=not args.no_file_check
            )
        except DatasetError as e:
            print(f"ERROR {e}")
            failed = True
            continue
        if args.decode:
            problems = find_unreadable_images(dicts)
            for p in problems:
                print(f"ERROR {name}: {p}")
            print(f"{name}: {len(dicts)} images read, {len(problems)} unusable")
            failed |= bool(problems)
    print("FAILED" if failed else "OK")
    return int(failed)


if __name__ == "__main__":
    sys.exit(main())
