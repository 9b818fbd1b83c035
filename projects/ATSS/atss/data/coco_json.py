"""Reading a COCO instances JSON and checking it, with errors that name the file and the field.

:func:`read_coco_categories` is the one reader of a COCO file's categories (registration, the
``configs/Custom`` datasets, a run folder's class list); :func:`check_coco_json` names the
first problem that breaks loading (image id, annotation id and field) where pycocotools or
Detectron2's ``load_coco_json`` raise a bare ``KeyError`` or ``ValueError``. The dataset itself
is loaded by ``load_coco_json`` (:func:`~.registration.register_coco_json`), not here.
"""

import json
import os
from typing import List, Optional, Tuple

from .validation import DatasetError, _is_box

__all__ = ["check_coco_json", "read_coco_categories"]


def _load_json(json_file: str, where: str):
    """The parsed JSON, or a :class:`DatasetError` "``where``: what is wrong"."""
    if not os.path.isfile(json_file):
        raise DatasetError(f"{where}: annotation file not found")
    try:
        with open(json_file) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{where}: not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}")
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{where}: cannot be read: {e}") from e


def read_coco_categories(json_file: str, key: Optional[str] = None) -> List[Tuple[int, str]]:
    """The ``categories`` of a COCO JSON as ``(id, name)`` pairs sorted by id (the order of
    Detectron2's contiguous class ids).

    Args:
        json_file: path of the JSON.
        key: the config key that named it, for error messages (None: the file alone).

    Raises:
        DatasetError: naming ``key`` and the file when the JSON cannot be read or its
            categories are missing, empty, malformed or have a repeated id.
    """
    where = f"{key}={json_file}" if key else json_file
    data = _load_json(json_file, where)
    categories = data.get("categories") if isinstance(data, dict) else None
    if not isinstance(categories, list) or not categories:
        raise DatasetError(f"{where}: needs a non-empty top-level 'categories' list")
    pairs = []
    for c in categories:
        if not isinstance(c, dict) or not isinstance(c.get("id"), int) or "name" not in c:
            raise DatasetError(f"{where}: category {c!r:.80} needs an integer 'id' and a 'name'")
        pairs.append((c["id"], str(c["name"])))
    ids = [i for i, _ in pairs]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise DatasetError(f"{where}: category ids {repeated} appear more than once")
    return sorted(pairs)


def check_coco_json(json_file: str) -> Optional[str]:
    """The first problem in a COCO instances JSON that would break loading, or None.

    Used on the error path of :func:`atss.data.get_checked_detection_dataset_dicts` to turn a bare
    ``KeyError``/``ValueError`` from pycocotools or Detectron2's ``load_coco_json`` into a
    message with the image id, annotation id and field (the JSON is parsed only then).
    """
    try:
        data = _load_json(json_file, json_file)
    except DatasetError as e:
        return str(e)
    problem = _coco_structure_problem(json_file, data)
    if problem:
        return problem
    category_ids = {c["id"] for c in data["categories"]}
    for ann in data["annotations"]:
        problem = _coco_annotation_problem(json_file, ann, category_ids)
        if problem:
            return problem
    return None


def _coco_structure_problem(json_file: str, data) -> Optional[str]:
    if not isinstance(data, dict):
        return f"{json_file}: the top level must be an object with images/annotations/categories"
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            return f"{json_file}: top-level field '{key}' is missing or not a list"
    if not data["categories"]:
        return f"{json_file}: 'categories' is empty"
    for c in data["categories"]:
        if not isinstance(c, dict) or "id" not in c or "name" not in c:
            return f"{json_file}: category {c!r:.80} needs fields 'id' and 'name'"
    for img in data["images"]:
        for key in ("id", "file_name", "height", "width"):
            if not isinstance(img, dict) or key not in img:
                return f"{json_file}: image {img!r:.80}: field '{key}' is missing"
    return None


def _coco_annotation_problem(json_file: str, ann, category_ids: set) -> Optional[str]:
    if not isinstance(ann, dict):
        return f"{json_file}: annotation {ann!r:.80} is not an object"
    where = f"{json_file}: annotation id {ann.get('id')} (image_id {ann.get('image_id')})"
    for key in ("id", "image_id", "category_id", "bbox"):
        if key not in ann:
            return f"{where}: field '{key}' is missing"
    if ann["category_id"] not in category_ids:
        return (
            f"{where}: field 'category_id' is {ann['category_id']}, which is not in "
            f"'categories' (ids {sorted(category_ids)[:20]})"
        )
    if not _is_box(ann["bbox"]):
        return f"{where}: field 'bbox' must be 4 numbers [x, y, w, h], got {ann['bbox']!r}"
    if ann.get("ignore", 0):
        return f"{where}: field 'ignore' is set; use 'iscrowd' for regions to ignore"
    return None
