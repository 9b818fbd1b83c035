"""The project's named datasets (``shapes_*``, ``treecrowns_*``), registered when first asked for.

Detectron2 registers its builtin datasets when ``detectron2.data`` is imported; these are
registered only when something asks for one of the names, so importing ``atss`` or loading a
config registers nothing and writes no file. The checked loader the configs name
(:func:`atss.data.get_checked_detection_dataset_dicts`) registers such a name on first use, so
a config works under any tool that instantiates it, not only under our entry points. The
metadata (``thing_classes``, the category id map, ``json_file``) is set at registration, so
COCOEvaluator built after the test loader (as Detectron2's tools build it) finds the ground
truth; the files themselves are generated into the cache (:mod:`.cache`) when first read.
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
