"""Loading a LazyConfig the way every entry point does: one home for that rule.

``train_net.py``, ``demo.py``, ``scripts/export_model.py`` and ``scripts/validate_dataset.py``
all load a config file, apply ``key=value`` overrides, and must then see the same datasets: the
project's own (shapes, tree crowns) and the COCO-format files given on the command line with
``dataset.{train,test}.{json_file,image_root}=...`` (which also fix the class count).
"""

from typing import List, Sequence

from detectron2.data import DatasetCatalog

from atss.data.coco_json import register_datasets_from_config

from .datasets import register_project_datasets
from .overrides import load_checked_config

__all__ = ["config_dataset_names", "load_config"]


def load_config(config_file: str, opts: Sequence[str] = (), *, data_splits: Sequence[str] = ()):
    """Load ``config_file``, apply ``opts`` and register every dataset the config can name.

    Args:
        config_file: a LazyConfig ``.py`` / ``.yaml`` file.
        opts: ``key=value`` overrides, in order; one whose key the config does not have is
            refused (:func:`~.overrides.check_override`).
        data_splits: the splits of a ``dataset`` node (``configs/Custom``) that must be given,
            e.g. ``("train", "test")`` for training, ``("test",)`` for evaluation, ``()`` when any
            given split will do (demo, export, validation). Configs without a ``dataset`` node
            are not affected.

    Returns:
        the config, with ``model.num_classes`` taken from the data when the config reads it
        from its ``dataset`` node. Raises :class:`atss.data.DatasetError` naming the key and the
        path when a given file or folder does not exist or the splits' categories differ, and
        :class:`~.overrides.ConfigError` for a missing config file or an unknown override key.
    """
    register_project_datasets()
    cfg = load_checked_config(config_file, list(opts))
    register_datasets_from_config(cfg, required=tuple(data_splits))
    return cfg


def config_dataset_names(cfg) -> List[str]:
    """The registered datasets that the config's train and test loaders read, in that order
    (a split of a ``configs/Custom`` config that was not given is not registered, so not listed).
    """
    names: List[str] = []
    for split in ("train", "test"):
        dataset = cfg.get("dataloader", {}).get(split, {}).get("dataset", {})
        given = dataset.get("names", ()) if hasattr(dataset, "get") else ()
        for name in [given] if isinstance(given, str) else list(given):
            if name in DatasetCatalog.list() and name not in names:
                names.append(name)
    return names
