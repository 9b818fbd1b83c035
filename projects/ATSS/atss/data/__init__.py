"""atss.data: the project's datasets for Detectron2, and validated loading for every dataset.

Reading a format (:mod:`.coco_json`, :mod:`.voc`) is apart from registering datasets
(:mod:`.registration`; the project's named datasets in :mod:`.builtin`, the ``dataset`` node of
the ``configs/Custom`` configs in :mod:`.config_datasets`), as in Detectron2. Every config loads
through :func:`get_checked_detection_dataset_dicts` (:mod:`.validation`'s rules) and maps
through :class:`CheckedDatasetMapper`. Generated datasets (:mod:`.shapes`, :mod:`.treecrowns`,
cut with :mod:`.crops`) are written into :mod:`.cache` when first read. The data rules and what
bad data does: docs/own_data.md.
"""

from .builtin import builtin_dataset_names, register_builtin_dataset
from .cache import default_cache_root
from .loading import get_checked_detection_dataset_dicts
from .mappers import CheckedDatasetMapper
from .registration import register_coco_json, register_dataset
from .shapes import SHAPES_CLASSES, register_shapes
from .treecrowns import (
    TREECROWNS_CLASSES,
    TREECROWNS_MAX_DETS_PER_IMAGE,
    TREECROWNS_SPLITS,
    register_all_treecrowns,
)
from .validation import DatasetError, DatasetReport, validate_dataset_dicts
