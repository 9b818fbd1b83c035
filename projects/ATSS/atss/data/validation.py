"""Validating dataset dicts (Detectron2's standard format) before training or evaluation.

Bad data fails early with one line naming the dataset, file, image id and field, or is repaired
and counted in one logged summary per dataset. Errors are for what says the data and its
description disagree (a missing file, a NaN, an unknown category: a wrong image root or a broken
export, which a silently smaller dataset would hide); repairs are for common, harmless
annotation artefacts with one sensible fix (a zero-size box is dropped, a box reaching past the
image is clipped, as the authors' COCO loader does). The rule for each problem: docs/own_data.md,
"Bad data".
"""

import functools
import logging
import math
import numbers
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from detectron2.structures import BoxMode

__all__ = [
    "DatasetError",
    "DatasetReport",
    "log_report",
    "repair_box",
    "repair_xyxy_boxes",
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
    """The repair policy for one box (docs/own_data.md, "Bad data"): the annotation with its
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
        DatasetError: on the problems of docs/own_data.md, "Bad data".
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


def log_report(report: DatasetReport) -> None:
    """Log a dataset's summary: a warning when boxes were changed, else info."""
    (logger.warning if report.changed_boxes() else logger.info)(report.summary())
