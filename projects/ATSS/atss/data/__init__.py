"""atss.data: datasets registered with Detectron2.

* :mod:`.treecrowns` — real aerial tree-crown data shipped offline by ``deepforest``
  (``treecrowns_train/val``, ``treecrowns_xsite_train/val``); call :func:`register_all_treecrowns`.
* :mod:`.validation` — the data rules (:func:`validate_dataset_dicts`,
  :class:`CheckedDatasetMapper`): bad data fails early with file, image id and field, or is
  repaired and counted; :mod:`.loading` — :func:`get_checked_detection_dataset_dicts`, the
  loaders' validated drop-in for Detectron2's ``get_detection_dataset_dicts``.
* :mod:`.shapes` — a small generated dataset for fast tests (``shapes_train/val``); call
  :func:`register_all_shapes` or :func:`register_shapes`.
* :mod:`.builtin` — :func:`register_builtin_dataset`: the names above, registered (no file
  written) when the checked loader is first asked for one, so configs naming them work in any
  process; the files are generated into the cache when the dataset is first read.
* :mod:`.coco_json` — COCO-format files named by a config's ``dataset`` node
  (:func:`~.coco_json.get_checked_coco_json_dicts`, the ``configs/Custom`` loaders).
* :mod:`.registration` — :func:`register_dataset` and :func:`register_coco_json`, the one way
  every dataset above (and a COCO JSON of one's own) is registered with Detectron2.
* :mod:`.voc` (Pascal VOC XML), :mod:`.tiling` (windows and the boxes in them), :mod:`.cache`
  (where generated datasets are written, atomically): the pieces the tree crowns are built from.
"""

from .builtin import builtin_dataset_names, register_builtin_dataset
from .cache import default_cache_root
from .loading import get_checked_detection_dataset_dicts
from .registration import register_coco_json, register_dataset
from .shapes import SHAPES_CLASSES, build_shapes_cache, register_all_shapes, register_shapes
from .treecrowns import (
    TREECROWNS_CLASSES,
    TREECROWNS_MAX_DETS_PER_IMAGE,
    TREECROWNS_SPLITS,
    TreeCrownSplitParams,
    build_treecrowns_cache,
    find_annotated_images,
    plan_treecrown_splits,
    register_all_treecrowns,
)
from .validation import (
    CheckedDatasetMapper,
    DatasetError,
    DatasetReport,
    check_coco_json,
    find_unreadable_images,
    repair_xyxy_boxes,
    validate_dataset_dicts,
)
