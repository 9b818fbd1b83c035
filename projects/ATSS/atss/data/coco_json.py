"""COCO-format datasets given on the command line: ``dataset.train/test.json_file/image_root``.

A config with a ``dataset`` node (``configs/Custom/*``) takes the data as overrides::

    dataset.train.json_file=PATH dataset.train.image_root=DIR
    dataset.test.json_file=PATH dataset.test.image_root=DIR

and every entry point calls :func:`register_datasets_from_config` once, after the overrides are
applied and before anything reads a dataset or the class count. It

1. checks the paths (an error names the config key and the path);
2. reads the categories of the train JSON (any ids, e.g. 3 and 7: Detectron2's
   ``load_coco_json`` maps the sorted ids to contiguous classes 0..N-1, and COCOEvaluator maps
   them back) and checks that the test JSON has the same ones (an error before training, not a
   wrong AP after it);
3. sets ``model.num_classes`` to their number unless the command line gave one (the Custom
   configs' ``"${dataset.num_classes}"``, or ``None``, means "from the data");
4. registers the datasets as ``custom_train`` and ``custom_test`` (the names the Custom configs'
   loaders and evaluator use), with the category names as ``thing_classes``.

It runs in every launched process (``train_net.py``'s ``main``), so ``--num-gpus N`` works.
Reading the annotations and validating them is left to the checked loader
(:func:`atss.data.get_checked_detection_dataset_dicts`), as for every other dataset.
"""

import json
import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple

from omegaconf import OmegaConf

from .registration import register_coco_json
from .validation import DatasetError

__all__ = [
    "CUSTOM_TRAIN",
    "CUSTOM_TEST",
    "read_coco_categories",
    "register_datasets_from_config",
]

logger = logging.getLogger(__name__)

CUSTOM_TRAIN = "custom_train"
CUSTOM_TEST = "custom_test"
_DATASET_NAMES = {"train": CUSTOM_TRAIN, "test": CUSTOM_TEST}


def read_coco_categories(json_file: str, key: str) -> List[Tuple[int, str]]:
    """The ``categories`` of a COCO JSON as ``(id, name)`` pairs sorted by id (the order of
    Detectron2's contiguous class ids).

    Args:
        json_file: path of the JSON.
        key: the config key that named it, for error messages.

    Raises:
        DatasetError: naming ``key`` and the file when the JSON cannot be read or its
            categories are missing, empty, malformed or have a repeated id.
    """
    where = f"{key}={json_file}"
    try:
        with open(json_file) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{where}: not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}")
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{where}: cannot be read: {e}") from e
    categories = data.get("categories") if isinstance(data, dict) else None
    if not isinstance(categories, list) or not categories:
        raise DatasetError(f"{where}: needs a non-empty top-level 'categories' list")
    pairs = []
    for c in categories:
        if not isinstance(c, dict) or not isinstance(c.get("id"), int) or "name" not in c:
            raise DatasetError(f"{where}: category {c!r:.80} needs an integer 'id' and a 'name'")
        pairs.append((c["id"], str(c["name"])))
    ids = [i for i, _ in pairs]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise DatasetError(f"{where}: category ids {repeated} appear more than once")
    return sorted(pairs)


def _split_paths(cfg, split: str) -> Optional[Tuple[str, str]]:
    """``(json_file, image_root)`` of ``cfg.dataset[split]``, absolute and checked; None when
    ``json_file`` is not set."""
    node = cfg.dataset.get(split) or {}
    json_file, image_root = node.get("json_file") or "", node.get("image_root") or ""
    if not json_file:
        if image_root:
            raise DatasetError(
                f"dataset.{split}.image_root is set but dataset.{split}.json_file is not"
            )
        return None
    if not os.path.isfile(json_file):
        raise DatasetError(f"dataset.{split}.json_file={json_file}: no such file")
    if not image_root:
        raise DatasetError(
            f"dataset.{split}.image_root is not set: give the folder that the file_name entries "
            f"of {json_file} are relative to"
        )
    if not os.path.isdir(image_root):
        raise DatasetError(f"dataset.{split}.image_root={image_root}: no such folder")
    return os.path.abspath(json_file), os.path.abspath(image_root)


def _check_same_categories(
    reference: List[Tuple[int, str]], reference_key: str, other: List[Tuple[int, str]], key: str
) -> None:
    """Raise a :class:`DatasetError` listing the differences when the categories differ."""
    if other == reference:
        return
    only_ref = sorted(set(reference) - set(other))
    only_other = sorted(set(other) - set(reference))
    raise DatasetError(
        f"the categories of {key} differ from those of {reference_key} (the model's classes): "
        f"only in {reference_key}: {only_ref or 'none'}; only in {key}: {only_other or 'none'} "
        "(id, name). Give both JSON files the same 'categories' list."
    )


def _set_num_classes(cfg, num_classes: int, source: str) -> None:
    """``model.num_classes`` from the data unless given. "From the data" is an interpolation
    (the Custom configs' ``"${dataset.num_classes}"``) or ``None``; a number (the command
    line's ``model.num_classes=N``) is the user's. A given count smaller than the data's is an
    error (labels would fall outside the classifier); a larger one leaves unused outputs, which
    is allowed."""
    from_data = OmegaConf.is_interpolation(cfg.model, "num_classes")
    given = None if from_data else cfg.model.get("num_classes")
    if given is None:
        if "num_classes" in cfg.dataset:
            cfg.dataset.num_classes = num_classes
        cfg.model.num_classes = num_classes
        logger.info(f"model.num_classes={num_classes}, from the categories of {source}")
    elif given < num_classes:
        raise DatasetError(
            f"model.num_classes={given} but {source} has {num_classes} categories; "
            "leave model.num_classes unset to take it from the data"
        )
    elif given > num_classes:
        logger.warning(
            f"model.num_classes={given} but {source} has only {num_classes} categories: "
            f"classes {num_classes}..{given - 1} are never trained"
        )
    head = cfg.model.get("head")
    if head is not None and "num_classes" in head and head.num_classes != cfg.model.num_classes:
        head.num_classes = cfg.model.num_classes  # a head spelled without "${..num_classes}"


def register_datasets_from_config(cfg, required: Sequence[str] = ("train", "test")) -> List[str]:
    """Register the COCO-format datasets named by ``cfg.dataset`` (see the module docstring).

    Args:
        cfg: a LazyConfig after the command-line overrides; one without a ``dataset`` node is
            left alone (returns ``[]``).
        required: splits that must be given: ``("train", "test")`` to train, ``("test",)`` to
            evaluate, ``()`` where only the classes matter (demo, export: at least one split).

    Returns:
        The registered dataset names (``custom_train`` and/or ``custom_test``).

    Raises:
        DatasetError: a missing key or path, unreadable categories, or train and test
            categories that differ; the message names the config key and the path.
    """
    if "dataset" not in cfg:
        return []
    paths: Dict[str, Tuple[str, str]] = {}
    for split in ("train", "test"):
        found = _split_paths(cfg, split)
        if found:
            paths[split] = found
    missing = [s for s in required if s not in paths] or ([] if paths else ["train"])
    if missing:
        keys = " ".join(f"dataset.{s}.json_file=PATH dataset.{s}.image_root=DIR" for s in missing)
        raise DatasetError(f"this config reads COCO-format data from the command line: give {keys}")

    categories = {
        s: read_coco_categories(json_file, f"dataset.{s}.json_file")
        for s, (json_file, _) in paths.items()
    }
    reference = "train" if "train" in paths else "test"
    reference_key = f"dataset.{reference}.json_file={paths[reference][0]}"
    for split in categories:
        if split != reference:
            key = f"dataset.{split}.json_file={paths[split][0]}"
            _check_same_categories(categories[reference], reference_key, categories[split], key)
    thing_classes = [name for _, name in categories[reference]]
    _set_num_classes(cfg, len(thing_classes), reference_key)

    names = []
    for split, (json_file, image_root) in paths.items():
        # Replaces a registration of the same name from other files (an earlier config in this
        # process, e.g. in tests or notebooks): the config is the source.
        register_coco_json(
            _DATASET_NAMES[split], json_file, image_root, thing_classes=thing_classes
        )
        names.append(_DATASET_NAMES[split])
    logger.info(
        f"registered {', '.join(names)}: {len(thing_classes)} classes "
        f"({', '.join(thing_classes[:5])}{', ...' if len(thing_classes) > 5 else ''})"
    )
    return names
