"""The datasets every entry point registers: the generated shapes and the tree crowns."""

import logging
from typing import List

__all__ = ["register_project_datasets"]

logger = logging.getLogger(__name__)


def register_project_datasets() -> List[str]:
    """Register this project's datasets (``shapes_*``, ``treecrowns_*``) with Detectron2.

    Idempotent and cheap after the first call, so every launched process (``launch`` spawns
    workers that do not inherit registrations) and every entry point calls it. Without the
    ``deepforest`` package the tree-crown datasets are skipped with a warning, so shapes-only
    and COCO runs still work; any other error (a corrupt source file, a full disk) is raised.

    Returns:
        the registered names.
    """
    from atss.data import register_all_shapes, register_all_treecrowns

    names = register_all_shapes()
    try:
        names += register_all_treecrowns()
    except ModuleNotFoundError as e:  # deepforest is not installed
        logger.warning(f"Tree-crown datasets not registered: {e}")
    return names
