"""The project's named datasets (``shapes_*``, ``treecrowns_*``), registered when first asked for.

Detectron2 registers its builtin datasets when ``detectron2.data`` is imported; this project
registers its own only when something asks for one of these names, so that importing ``atss``
or loading a config registers nothing and writes no file (a config that trains on COCO never
builds the shapes or the tree crowns). The checked loader the configs name
(:func:`atss.data.get_checked_detection_dataset_dicts`) calls :func:`register_builtin_dataset`
for a name that is not registered yet, so a config works under any tool that instantiates it
(Detectron2's ``tools/lazyconfig_train_net.py``, a notebook), not only under our entry points.

Registering writes nothing either: the files of a dataset are generated into the cache
(:mod:`atss.data.cache`) by its loader, the first time ``DatasetCatalog.get`` reads it. The
metadata (``thing_classes``, ``thing_dataset_id_to_contiguous_id``, ``json_file``) is set at
registration, so COCOEvaluator, built after the test loader as Detectron2's tools build it, finds
the ground truth and the category ids.
"""

from typing import Tuple

from .shapes import SHAPES_DATASETS, register_shapes
from .treecrowns import TREECROWNS_SPLITS, register_all_treecrowns

__all__ = ["builtin_dataset_names", "ensure_registered", "register_builtin_dataset"]


def builtin_dataset_names() -> Tuple[str, ...]:
    """The names :func:`register_builtin_dataset` knows."""
    return tuple(SHAPES_DATASETS) + tuple(TREECROWNS_SPLITS)


def register_builtin_dataset(name: str) -> bool:
    """Register ``name`` if it is one of the project's datasets, without writing any file.

    A tree-crown name registers the four tree-crown splits (their cache key hashes the
    ``deepforest`` source files, which are read, not written).

    Returns:
        True when ``name`` is a project dataset (now registered), False otherwise.

    Raises:
        ModuleNotFoundError: a tree-crown name without the ``deepforest`` package (the message
            names the fix).
    """
    if name in SHAPES_DATASETS:
        num_images, seed = SHAPES_DATASETS[name]
        register_shapes(name, num_images=num_images, seed=seed, build=False)
        return True
    if name in TREECROWNS_SPLITS:
        register_all_treecrowns(build=False)
        return True
    return False


def ensure_registered(name: str) -> bool:
    """True when ``name`` is in Detectron2's ``DatasetCatalog``: already, or registered now as
    one of the project's datasets (:func:`register_builtin_dataset`, which writes nothing)."""
    from detectron2.data import DatasetCatalog

    return name in DatasetCatalog.list() or register_builtin_dataset(name)
