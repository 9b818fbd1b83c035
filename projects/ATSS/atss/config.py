"""What the config files under ``configs/`` import to compose Detectron2's own configs.

:func:`get_detectron2_config` is ``detectron2.model_zoo.get_config`` for LazyConfig files
without importing ``detectron2.model_zoo``: that module imports ``pkg_resources``, which
setuptools >= 81 no longer ships, so on a current stack every config that composed
Detectron2's ``common`` configs through ``model_zoo`` failed to load.
"""

import os

import detectron2
from detectron2.config import LazyConfig

__all__ = ["detectron2_configs_dir", "get_detectron2_config"]


def detectron2_configs_dir() -> str:
    """The folder of the configs Detectron2 ships: ``detectron2/model_zoo/configs`` in an
    installed package (a link to the source tree's ``configs/`` in an editable install)."""
    return os.path.join(os.path.dirname(detectron2.__file__), "model_zoo", "configs")


def get_detectron2_config(config_path: str):
    """Load one of Detectron2's bundled LazyConfig files.

    Args:
        config_path: relative to Detectron2's ``configs/`` folder, e.g. ``"common/train.py"``.

    Returns:
        the file's config (an ``omegaconf.DictConfig``), as ``model_zoo.get_config`` returns it.

    Raises:
        FileNotFoundError: naming the path looked for, when this Detectron2 does not ship it.
    """
    path = os.path.join(detectron2_configs_dir(), config_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Detectron2's config {config_path!r} not found at {path}: this detectron2 "
            f"installation ({os.path.dirname(detectron2.__file__)}) does not ship it"
        )
    return LazyConfig.load(path)
