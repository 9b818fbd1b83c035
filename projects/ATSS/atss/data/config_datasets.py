"""COCO-format datasets named by a config's ``dataset`` node (the ``configs/Custom`` configs):
``dataset.{train,test}.{json_file,image_root}=...`` on the command line.

The loaders and the class count the configs name (:func:`get_checked_coco_json_dicts`,
:func:`coco_json_num_classes`) read that node when instantiated, so the configs run under any
tool that instantiates them (Detectron2's ``tools/lazyconfig_train_net.py`` too) with no
registration step before. Both check the paths (an error names the config key and the path) and
that the test JSON has the train JSON's categories (any ids: Detectron2 maps the sorted ids to
classes 0..N-1 and COCOEvaluator maps them back), so other categories are refused before
training, not seen as a wrong AP after it. Our entry points also call
:func:`register_datasets_from_config`, which registers every given split at once and puts the
class count into ``model.num_classes``. What a user gives: docs/own_data.md.
"""

import logging
import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from omegaconf import OmegaConf

from .coco_json import read_coco_categories
from .loading import get_checked_detection_dataset_dicts
from .registration import register_coco_json
from .validation import DatasetError

__all__ = [
    "CUSTOM_TRAIN",
    "CUSTOM_TEST",
    "coco_json_num_classes",
    "get_checked_coco_json_dicts",
    "register_datasets_from_config",
]

logger = logging.getLogger(__name__)

CUSTOM_TRAIN = "custom_train"
CUSTOM_TEST = "custom_test"
_DATASET_NAMES = {"train": CUSTOM_TRAIN, "test": CUSTOM_TEST}


def _split_paths(splits: Mapping, split: str) -> Optional[Tuple[str, str]]:
    """``(json_file, image_root)`` of ``splits[split]`` (a config's ``dataset`` node), absolute
    and checked; None when ``json_file`` is not set."""
    node = splits.get(split) or {}
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
    is allowed. A config without a model (a common piece) gets ``dataset.num_classes`` only."""
    if "model" not in cfg:
        if "num_classes" in cfg.dataset:
            cfg.dataset.num_classes = num_classes
        return
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


def _read_splits(
    splits: Mapping,
    required: Sequence[str],
    model_classes: Optional[Tuple[List[Tuple[int, str]], str]] = None,
) -> Tuple[Dict[str, Tuple[str, str]], List[Tuple[int, str]], str]:
    """Check the given splits of a ``dataset`` node (paths, same categories).

    Args:
        model_classes: ``(categories, where)`` of a trained run (its ``classes.json``): the
            reference every given split must match; no split is then needed unless required.

    Returns:
        ``{split: (json_file, image_root)}`` of the given splits, the ``(id, name)`` categories
        sorted by id (``model_classes``, else the train JSON's, else the test JSON's) and
        ``key=path`` of where they were read.
    """
    paths: Dict[str, Tuple[str, str]] = {}
    for split in ("train", "test"):
        found = _split_paths(splits, split)
        if found:
            paths[split] = found
    missing = [s for s in required if s not in paths]
    if not paths and not model_classes:
        missing = missing or ["train"]
    if missing:
        keys = " ".join(f"dataset.{s}.json_file=PATH dataset.{s}.image_root=DIR" for s in missing)
        raise DatasetError(f"this config reads COCO-format data from the command line: give {keys}")

    categories = {
        s: read_coco_categories(json_file, f"dataset.{s}.json_file")
        for s, (json_file, _) in paths.items()
    }
    if model_classes:
        reference_categories, reference_key = model_classes
    else:
        reference = "train" if "train" in paths else "test"
        reference_key = f"dataset.{reference}.json_file={paths[reference][0]}"
        reference_categories = categories[reference]
    for split in categories:
        key = f"dataset.{split}.json_file={paths[split][0]}"
        if key != reference_key:
            _check_same_categories(reference_categories, reference_key, categories[split], key)
    return paths, reference_categories, reference_key


def _register_split(name: str, paths: Tuple[str, str], categories: List[Tuple[int, str]]) -> None:
    """Register one split as ``name`` with the classes and id map of ``categories``."""
    # Replaces a registration of the same name from other files (an earlier config in this
    # process, e.g. in tests or notebooks): the config is the source. The id map is set now, so
    # COCOEvaluator maps contiguous classes back to the JSON's category ids.
    json_file, image_root = paths
    register_coco_json(
        name,
        json_file,
        image_root,
        thing_classes=[category for _, category in categories],
        thing_dataset_id_to_contiguous_id={cid: i for i, (cid, _) in enumerate(categories)},
    )


def coco_json_num_classes(train: Mapping, test: Optional[Mapping] = None) -> int:
    """The class count of a config's ``dataset`` node: the number of categories of the train
    JSON (the test JSON's when no train JSON is given), after the checks of
    :func:`get_checked_coco_json_dicts`. What the Custom configs' ``dataset.num_classes`` calls.

    Args:
        train, test: ``{"json_file", "image_root"}`` of each split (``dataset.train`` and
            ``dataset.test``; a node cannot name its own parent).

    Raises:
        DatasetError: no split given, a bad path, or train and test categories that differ.
    """
    return len(_read_splits({"train": train, "test": test}, required=())[1])


def get_checked_coco_json_dicts(
    names: str,
    splits: Mapping,
    split: str,
    filter_empty: bool = True,
    check_files: bool = True,
) -> List[dict]:
    """The dataset dicts of ``splits[split]``, registered as ``names`` and loaded through
    :func:`atss.data.get_checked_detection_dataset_dicts` (validated).

    Args:
        names: the name to register the split as (what the config's evaluator names).
        splits: the config's ``dataset`` node: ``{"train": {"json_file", "image_root"},
            "test": {...}}``; every given split is checked, so the train loader refuses a test
            JSON with other categories before training starts.
        split: "train" or "test": which one to load (it must be given).
        filter_empty, check_files: as for ``get_checked_detection_dataset_dicts``.

    Raises:
        DatasetError: a missing key or path, unreadable categories, train and test categories
            that differ, or invalid annotations; the message names the config key and the path.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    paths, categories, _ = _read_splits(splits, required=(split,))
    _register_split(names, paths[split], categories)
    return get_checked_detection_dataset_dicts(
        names, filter_empty=filter_empty, check_files=check_files
    )


def register_datasets_from_config(
    cfg,
    required: Sequence[str] = ("train", "test"),
    model_classes: Optional[Tuple[List[Tuple[int, str]], str]] = None,
) -> List[str]:
    """Register the COCO-format datasets named by ``cfg.dataset`` and set ``model.num_classes``
    (see the module docstring); what our entry points call after the overrides.

    Args:
        cfg: a LazyConfig after the command-line overrides; one without a ``dataset`` node is
            left alone (returns ``[]``).
        required: splits that must be given: ``("train", "test")`` to train, ``("test",)`` to
            evaluate, ``()`` where only the classes matter (demo, export: at least one split,
            or ``model_classes``).
        model_classes: ``(categories, where)``, the ``(id, name)`` classes of a trained run
            (its ``classes.json``, :func:`atss.engine.config.read_run_classes`): they give the
            class count and every given split must have the same categories.

    Returns:
        The registered dataset names (``custom_train`` and/or ``custom_test``).

    Raises:
        DatasetError: a missing key or path, unreadable categories, or train and test
            categories that differ; the message names the config key and the path.
    """
    if "dataset" not in cfg:
        return []
    paths, categories, reference_key = _read_splits(cfg.dataset, required, model_classes)
    _set_num_classes(cfg, len(categories), reference_key)
    names = []
    for split, split_paths in paths.items():
        _register_split(_DATASET_NAMES[split], split_paths, categories)
        names.append(_DATASET_NAMES[split])
    thing_classes = [category for _, category in categories]
    logger.info(
        f"registered {', '.join(names)}: {len(thing_classes)} classes "
        f"({', '.join(thing_classes[:5])}{', ...' if len(thing_classes) > 5 else ''})"
    )
    return names
