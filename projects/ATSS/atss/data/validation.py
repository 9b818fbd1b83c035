"""Validated loading of detection datasets: bad data fails early with a message that names the
dataset, file, image id and field, or is repaired/filtered and counted in one logged summary.

The rule for each problem (the README's "Bad data" section is the user-facing copy):

================================================  =============================================
problem                                           what happens
================================================  =============================================
dataset not registered                            error, lists the registered names
annotation JSON missing / not JSON / malformed    error: JSON file (line and column for syntax
(missing field, unknown category or image id)     errors; image id, annotation id and field)
image file missing                                error: how many, the first few (file, image
                                                  id); ``check_files=False`` skips the check
image unreadable / corrupt / other size than      error when it is read (:class:`
the JSON says                                     CheckedDatasetMapper`): file and image id;
                                                  :func:`find_unreadable_images` (``tools/
                                                  validate_dataset.py --decode``) lists all of
                                                  them before a run
image height/width missing or not positive        error
annotation without bbox / bbox_mode /             error: file, image id, annotation, field
category_id; bbox not 4 numbers; NaN/inf
category id outside ``thing_classes``             error
box with zero or negative width or height         dropped, counted
box partly outside the image                      clipped to the image, counted
box wholly outside the image                      dropped, counted
crowd box (``iscrowd=1``)                         kept and counted: Detectron2's mapper leaves it
                                                  out of the training targets, COCOEvaluator
                                                  ignores detections that match it
image with no (non-crowd) annotation              training: removed (Detectron2's
                                                  ``filter_empty``, logged); evaluation: kept
================================================  =============================================

Why errors for some and filtering for others: a missing file, a NaN or an unknown category says
the dataset and its description disagree (wrong image root, wrong category list, a broken
export), and training on a silently shrunken dataset would hide it. A zero-size or out-of-image
box is a common, harmless annotation artefact with one sensible repair (the authors' COCO loader
clips boxes and drops empty ones too); it is repaired and counted.
"""

import functools
import json
import logging
import math
import numbers
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from detectron2.data import DatasetMapper
from detectron2.data.detection_utils import SizeMismatchError, check_image_size, read_image
from detectron2.structures import BoxMode

__all__ = [
    "DatasetError",
    "DatasetReport",
    "CheckedDatasetMapper",
    "repair_box",
    "repair_xyxy_boxes",
    "check_coco_json",
    "find_unreadable_images",
    "log_report",
    "read_coco_categories",
    "unusable_image",
    "validate_dataset_dicts",
]

logger = logging.getLogger(__name__)

# Counted repairs, in the order the summary lists them.
DROPPED_ZERO_SIZE = "boxes with zero or negative size dropped"
CLIPPED = "boxes partly outside the image clipped to it"
DROPPED_OUTSIDE = "boxes wholly outside the image dropped"
CROWD = "crowd boxes kept for evaluation only"
NO_ANNOTATIONS = "images without annotations"
_REPAIRS = (DROPPED_ZERO_SIZE, CLIPPED, DROPPED_OUTSIDE, CROWD, NO_ANNOTATIONS)
_MAX_LISTED = 5  # missing files / examples named in one message


class DatasetError(ValueError):
    """A dataset problem that stops loading; the message names the dataset, file, image id and
    field concerned."""


@dataclass
class DatasetReport:
    """What :func:`validate_dataset_dicts` found in one dataset.

    ``counts[reason]`` is the number of boxes (or images) repaired or filtered for that reason,
    ``examples[reason]`` names the first one ("file (image_id N) annotation i").
    """

    dataset: str
    images: int = 0
    boxes: int = 0
    counts: Counter = field(default_factory=Counter)
    examples: Dict[str, str] = field(default_factory=dict)

    def add(self, reason: str, where: Callable[[], str]) -> None:
        """Count one case; ``where()`` (built only for the first case) names it."""
        self.counts[reason] += 1
        if reason not in self.examples:
            self.examples[reason] = where()

    def changed_boxes(self) -> int:
        """How many boxes were clipped or dropped (crowd boxes and empty images are normal)."""
        return sum(self.counts[r] for r in (DROPPED_ZERO_SIZE, CLIPPED, DROPPED_OUTSIDE))

    def summary(self) -> str:
        text = f"{self.dataset}: {self.images} images, {self.boxes} boxes kept"
        found = [r for r in _REPAIRS if self.counts[r]]
        if not found:
            return text + "; nothing to repair."
        items = [f"{self.counts[r]} {r} (first: {self.examples[r]})" for r in found]
        return text + "; " + "; ".join(items) + "."


# ------------------------------------------------------------------------- dataset dicts
def _where(dataset: Optional[str], record: dict, index=None, ann: Optional[dict] = None) -> str:
    """ "dataset: file (image_id N) annotation i (id M)", the parts that are known."""
    text = f"{dataset}: " if dataset else ""
    text += str(record.get("file_name", "<no file_name>"))
    if "image_id" in record:
        text += f" (image_id {record['image_id']})"
    if index is not None:
        text += f" annotation {index}"
        if ann is not None and "id" in ann:
            text += f" (id {ann['id']})"
    return text


def _is_number(x) -> bool:
    # The exact-type test first: the ABC check alone is most of the per-box cost.
    return type(x) in (int, float) or (isinstance(x, numbers.Real) and not isinstance(x, bool))


def _is_box(bbox) -> bool:
    return (
        isinstance(bbox, (list, tuple, np.ndarray))
        and len(bbox) == 4
        and all(map(_is_number, bbox))
    )


def _check_annotation(ann, num_classes, dataset: str, where: Callable[[], str]) -> None:
    """Raise DatasetError ("dataset: location: problem") unless ``ann`` is a usable box."""

    def fail(problem):
        raise DatasetError(f"{dataset}: {where()}: {problem}")

    for key in ("bbox", "bbox_mode", "category_id"):
        if key not in ann:
            fail(f"field '{key}' is missing")
    bbox = ann["bbox"]
    if not _is_box(bbox):
        fail(f"field 'bbox' must be 4 numbers, got {bbox!r}")
    if not all(math.isfinite(v) for v in bbox):
        fail(f"field 'bbox' has a non-finite coordinate: {[float(v) for v in bbox]}")
    if ann["bbox_mode"] not in (BoxMode.XYXY_ABS, BoxMode.XYWH_ABS):
        fail(
            f"field 'bbox_mode' is {ann['bbox_mode']!r}; axis-aligned absolute boxes "
            "(BoxMode.XYXY_ABS or BoxMode.XYWH_ABS) are supported"
        )
    cat = ann["category_id"]
    is_int = type(cat) is int or (isinstance(cat, numbers.Integral) and not isinstance(cat, bool))
    if not is_int or cat < 0:
        fail(f"field 'category_id' must be an int >= 0, got {cat!r}")
    if num_classes is not None and cat >= num_classes:
        fail(
            f"field 'category_id' is {cat}, but the dataset's thing_classes has "
            f"{num_classes} entries (contiguous ids 0..{num_classes - 1})"
        )


def repair_box(report: DatasetReport, ann: dict, width, height, where) -> Optional[dict]:
    """The repair policy for one box (the module docstring's table): the annotation with its
    box clipped to the image, or None when it is dropped; ``report`` counts what was done.

    Args:
        ann: an annotation with a finite ``bbox`` in ``bbox_mode`` XYXY_ABS or XYWH_ABS.
        width, height: image size; None when unknown (then only zero-size boxes are dropped).
        where: called once per kind of repair to name the first case.

    Plain float arithmetic (no tensors): this runs once per box of the dataset."""
    b = [float(v) for v in ann["bbox"]]
    xywh = ann["bbox_mode"] == BoxMode.XYWH_ABS
    x0, y0, x1, y1 = (b[0], b[1], b[0] + b[2], b[1] + b[3]) if xywh else b
    if x1 <= x0 or y1 <= y0 or not _positive_in_float32(b, xywh):
        report.add(DROPPED_ZERO_SIZE, where)
        return None
    if width is None:  # size unknown until the image is read; the mapper clips later
        return ann
    c = [min(max(x0, 0.0), width), min(max(y0, 0.0), height)]
    c += [min(max(x1, 0.0), width), min(max(y1, 0.0), height)]
    repaired = [c[0], c[1], c[2] - c[0], c[3] - c[1]] if xywh else c
    if c[2] <= c[0] or c[3] <= c[1] or not _positive_in_float32(repaired, xywh):
        report.add(DROPPED_OUTSIDE, where)
        return None
    if c != [x0, y0, x1, y1]:
        report.add(CLIPPED, where)
        return {**ann, "bbox": repaired}
    return ann


def _positive_in_float32(bbox: List[float], xywh: bool) -> bool:
    """Whether ``bbox`` still has a positive width and height once Detectron2 holds it in
    float32 (``BoxMode.convert`` and the mapper's tensors): a box 1e-7 px high in float64 is
    empty there, and an empty target box would reach the loss."""
    a = [np.float32(v) for v in bbox]
    if xywh:  # converted to XYXY by float32 additions
        return bool(a[0] + a[2] > a[0] and a[1] + a[3] > a[1])
    return bool(a[2] > a[0] and a[3] > a[1])


def repair_xyxy_boxes(boxes: np.ndarray, width: int, height: int, source: str) -> np.ndarray:
    """:func:`repair_box` on an array of boxes of one image (e.g. parsed from a VOC file):
    clip them to the image and drop the empty ones, logging one warning with the counts.

    Args:
        boxes: (N, 4) float XYXY_ABS; clipped in place.
        width, height: image size.
        source: file name used in messages.

    Returns:
        keep: bool array (N,); ``boxes[keep]`` are the valid boxes after clipping.

    Raises:
        ValueError: a coordinate is NaN or infinite (a corrupt file, not a fixable box).
    """
    bad = ~np.isfinite(boxes).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{source}: {int(bad.sum())} box(es) with NaN/inf coordinates, "
            f"first is object #{i}: {boxes[i].tolist()}"
        )
    report = DatasetReport(source)
    keep = np.zeros(len(boxes), dtype=bool)
    for i, box in enumerate(boxes.tolist()):
        ann = {"bbox": box, "bbox_mode": BoxMode.XYXY_ABS}
        repaired = repair_box(report, ann, width, height, lambda i=i: f"object #{i}")
        if repaired is not None:
            keep[i] = True
            boxes[i] = repaired["bbox"]
    if report.changed_boxes():
        logger.warning(
            f"{source}: dropped {report.counts[DROPPED_ZERO_SIZE]} box(es) of zero/negative "
            f"size and {report.counts[DROPPED_OUTSIDE]} lying outside the {width}x{height} "
            f"image; clipped {report.counts[CLIPPED]} box(es) to the image."
        )
    return keep


def validate_dataset_dicts(
    dataset_dicts: Sequence[dict],
    dataset_name: str,
    *,
    num_classes: Optional[int] = None,
    check_files: bool = True,
) -> Tuple[List[dict], DatasetReport]:
    """Check (and repair) the records of one dataset in Detectron2's standard format.

    Args:
        dataset_dicts: records with ``file_name``, ``height``/``width`` (optional: then boxes
            are not checked against the image), ``image_id`` and ``annotations``.
        dataset_name: used in every message.
        num_classes: ``len(thing_classes)``; category ids must lie in ``[0, num_classes)``.
        check_files: check that every ``file_name`` exists (one ``stat`` per image).

    Returns:
        ``(records, report)``: new records (the input is not modified) with out-of-image boxes
        clipped and empty or outside boxes removed, and what was repaired.

    Raises:
        DatasetError: on the problems listed in the module docstring.
    """
    report = DatasetReport(dataset_name)
    out, missing = [], []
    for record in dataset_dicts:
        if not isinstance(record, dict) or "file_name" not in record:
            raise DatasetError(f"{dataset_name}: a record has no 'file_name': {record!r:.200}")
        if check_files and not os.path.isfile(record["file_name"]):
            missing.append(record)
        width, height = record.get("width"), record.get("height")
        for key, value in (("width", width), ("height", height)):
            if value is not None and (not _is_number(value) or not value > 0):
                raise DatasetError(
                    f"{_where(dataset_name, record)}: field '{key}' must be a positive number, "
                    f"got {value!r}"
                )
        if (width is None) != (height is None):
            raise DatasetError(f"{_where(dataset_name, record)}: only one of height/width is set")
        annotations = record.get("annotations")
        if annotations is None:
            out.append(record)
            continue
        kept = []
        for i, ann in enumerate(annotations):
            where = functools.partial(_where, None, record, i, ann)
            _check_annotation(ann, num_classes, dataset_name, where)
            ann = repair_box(report, ann, width, height, where)
            if ann is None:
                continue
            if ann.get("iscrowd", 0):
                report.add(CROWD, where)
            kept.append(ann)
        if not kept:
            report.add(NO_ANNOTATIONS, functools.partial(_where, None, record))
        report.boxes += len(kept)
        out.append({**record, "annotations": kept})
    report.images = len(out)
    if missing:
        listed = "; ".join(_where(dataset_name, r) for r in missing[:_MAX_LISTED])
        more = f" and {len(missing) - _MAX_LISTED} more" if len(missing) > _MAX_LISTED else ""
        raise DatasetError(
            f"{dataset_name}: {len(missing)} of {len(dataset_dicts)} image files are missing: "
            f"{listed}{more}. Check the image root the dataset was registered with."
        )
    return out, report


# ------------------------------------------------------------------------------ COCO JSON
def read_coco_categories(json_file: str, key: Optional[str] = None) -> List[Tuple[int, str]]:
    """The ``categories`` of a COCO JSON as ``(id, name)`` pairs sorted by id (the order of
    Detectron2's contiguous class ids): the one reader of a COCO file's categories
    (registration, the ``configs/Custom`` datasets, the run folder's class list).

    Args:
        json_file: path of the JSON.
        key: the config key that named it, for error messages (None: the file alone).

    Raises:
        DatasetError: naming ``key`` and the file when the JSON cannot be read or its
            categories are missing, empty, malformed or have a repeated id.
    """
    where = f"{key}={json_file}" if key else json_file
    if not os.path.isfile(json_file):
        raise DatasetError(f"{where}: annotation file not found")
    try:
        with open(json_file) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{where}: not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}")
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{where}: cannot be read: {e}") from e
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

    Used on the error path of :func:`get_checked_detection_dataset_dicts` to turn a bare
    ``KeyError``/``ValueError`` from pycocotools or Detectron2's ``load_coco_json`` into a
    message with the image id, annotation id and field (the JSON is parsed only then).
    """
    if not os.path.isfile(json_file):
        return f"{json_file}: annotation file not found"
    try:
        with open(json_file) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        return f"{json_file}: not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}"
    except (OSError, UnicodeDecodeError) as e:
        return f"{json_file}: cannot be read: {e}"
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


def log_report(report: "DatasetReport") -> None:
    """Log a dataset's summary: a warning when boxes were changed, else info."""
    (logger.warning if report.changed_boxes() else logger.info)(report.summary())


# ------------------------------------------------------------------------------ mapper
class CheckedDatasetMapper(DatasetMapper):
    """Detectron2's :class:`DatasetMapper` whose failures to read an image (missing, corrupt,
    truncated, not an image, other size than the annotation says) raise :class:`DatasetError`
    naming the file and image id, instead of a bare PIL/OS error from inside a loader worker."""

    def __call__(self, dataset_dict):
        try:
            return super().__call__(dataset_dict)
        except (OSError, SizeMismatchError) as e:  # PIL's UnidentifiedImageError is an OSError
            raise unusable_image(dataset_dict, e) from e


def unusable_image(record: dict, error: Exception) -> DatasetError:
    """The error a mapper raises for an image of ``record`` that cannot be read or used:
    "file (image_id N): cannot be used: <error type>: <error>"."""
    return DatasetError(f"{_where(None, record)}: cannot be used: {type(error).__name__}: {error}")


def find_unreadable_images(dataset_dicts: Sequence[dict]) -> List[str]:
    """Read every image of ``dataset_dicts`` as the mapper would; one message (file, image id,
    error) per image that cannot be used. Slow (decodes everything): for checking a dataset
    before a long run, e.g. ``tools/validate_dataset.py --decode``."""
    problems = []
    for record in dataset_dicts:
        try:
            image = read_image(record["file_name"], format="RGB")
            check_image_size(record, image)
        except (OSError, SizeMismatchError) as e:
            problems.append(f"{_where(None, record)}: {type(e).__name__}: {e}")
    return problems
