"""Loading registered datasets the validated way: the drop-in for Detectron2's
``get_detection_dataset_dicts`` that every config's loaders use. The rules it applies are
:mod:`.validation`'s; the project's own datasets are registered here on first use
(:mod:`.builtin`), so a config naming one works in any process."""

import logging
from typing import List, Sequence, Union

import torch.utils.data as torchdata
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.build import (
    filter_images_with_only_crowd_annotations,
    print_instances_class_histogram,
)
from detectron2.data.detection_utils import check_metadata_consistency

from .builtin import builtin_dataset_names, ensure_registered
from .coco_json import check_coco_json
from .validation import DatasetError, log_report, validate_dataset_dicts

__all__ = ["get_checked_detection_dataset_dicts"]

logger = logging.getLogger(__name__)


def _load_registered(name: str) -> List[dict]:
    """``DatasetCatalog.get(name)`` with errors that name the dataset and its source file; one
    of the project's datasets (shapes, tree crowns) is registered here on first use, so a config
    naming it works in any process (:mod:`atss.data.builtin`)."""
    if not ensure_registered(name):
        known = sorted(set(DatasetCatalog.list()) | set(builtin_dataset_names()))
        raise DatasetError(f"dataset '{name}' is not registered; known: {', '.join(known)}")
    source = getattr(MetadataCatalog.get(name), "json_file", None)
    try:
        return DatasetCatalog.get(name)
    except (OSError, ValueError, KeyError, TypeError, AssertionError) as e:
        detail = check_coco_json(source) if source else None
        if detail is None:
            detail = f"{type(e).__name__}: {e}" + (f" (source: {source})" if source else "")
        raise DatasetError(f"dataset '{name}': {detail}") from e


def get_checked_detection_dataset_dicts(
    names: Union[str, Sequence[str]],
    filter_empty: bool = True,
    check_files: bool = True,
) -> List[dict]:
    """Drop-in for Detectron2's ``get_detection_dataset_dicts`` (for box detection) that
    validates each dataset with :func:`validate_dataset_dicts` and logs one summary per dataset.

    Args:
        names: registered dataset name(s).
        filter_empty: remove images without non-crowd annotations (training); Detectron2's own
            filter, which logs how many it removed.
        check_files: check that every image file exists.

    Returns:
        The concatenated, validated records.
    """
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise DatasetError("no dataset names given")
    all_dicts = []
    for name in names:
        dicts = _load_registered(name)
        if isinstance(dicts, torchdata.Dataset):  # lazily loaded: nothing to check up front
            logger.warning(
                f"dataset '{name}' is a torch Dataset (loaded lazily): not validated up front; "
                "CheckedDatasetMapper still names unreadable images"
            )
            if len(names) > 1:
                raise DatasetError(f"dataset '{name}' is a torch Dataset; it cannot be combined")
            return dicts
        if not len(dicts):
            raise DatasetError(f"dataset '{name}' is empty")
        meta = MetadataCatalog.get(name)
        classes = getattr(meta, "thing_classes", None)
        source = getattr(meta, "json_file", None)
        dicts, report = validate_dataset_dicts(
            dicts,
            f"dataset '{name}' ({source})" if source else f"dataset '{name}'",
            num_classes=len(classes) if classes is not None else None,
            check_files=check_files,
        )
        log_report(report)
        all_dicts.extend(dicts)

    has_instances = "annotations" in all_dicts[0]
    if filter_empty and has_instances:
        all_dicts = filter_images_with_only_crowd_annotations(all_dicts)
        if not all_dicts:
            raise DatasetError(f"no image with a usable annotation in {', '.join(names)}")
    classes = getattr(MetadataCatalog.get(names[0]), "thing_classes", None)
    if has_instances and classes is not None:
        check_metadata_consistency("thing_classes", names)
        print_instances_class_histogram(all_dicts, classes)
    return all_dicts
