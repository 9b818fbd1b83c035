"""The config zoo of ``configs/``, packaged with atss, as ``detectron2.model_zoo`` packages
Detectron2's: an installed wheel (``pip install`` of the wheel or of the git URL, as on a
cluster) needs no checkout to load a config.

    from atss import model_zoo
    cfg = model_zoo.get_config("COCO/atss_R_50_FPN_1x.py")

``configs/`` stays at the repository's top level; ``atss/model_zoo/configs`` is a link to it,
which an editable install reads through and a wheel build copies (``package_data``). The
relative imports between config files (``from ..common.coco_data import dataloader``) work
because ``LazyConfig.load`` resolves them from the file's folder. The zoo: configs/README.md.
"""

import os

from detectron2.config import LazyConfig

__all__ = ["get_config", "get_config_file"]

_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def get_config_file(config_path: str) -> str:
    """The path of a packaged config.

    Args:
        config_path: relative to ``configs/``, e.g. ``"COCO/atss_R_50_FPN_1x.py"``.

    Raises:
        FileNotFoundError: naming the path looked for, when the zoo has no such config.
    """
    path = os.path.join(_CONFIGS, config_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{config_path!r} is not in atss's config zoo ({path} does not exist): give a path "
            "relative to configs/, e.g. 'COCO/atss_R_50_FPN_1x.py'"
        )
    return path


def get_config(config_path: str):
    """The config of :func:`get_config_file` (an ``omegaconf.DictConfig``), as
    ``detectron2.model_zoo.get_config`` returns Detectron2's LazyConfig files."""
    return LazyConfig.load(get_config_file(config_path))
