"""Detections written as files rather than drawn: a CSV (one row a box) and COCO results JSON,
for images too large to draw and for whoever wants the numbers.

CSV columns (:data:`CSV_COLUMNS`): ``image, x0, y0, x1, y1, score, class_id, class_name``, boxes
in the image's pixels (XYXY). JSON: COCO's results format (``bbox`` as ``[x, y, w, h]``).
``class_id`` / ``category_id`` is the user's category id where the classes carry one
(:func:`atss.engine.predictor.model_classes`), else the model's class index. See
docs/large_images.md.
"""

import csv
import json
from typing import Dict, List, Optional, Sequence, Tuple

__all__ = [
    "CSV_COLUMNS",
    "detection_rows",
    "write_detections",
]

CSV_COLUMNS = ("image", "x0", "y0", "x1", "y1", "score", "class_id", "class_name")


def detection_rows(
    image: str, instances, classes: Optional[Sequence[Tuple[int, str]]] = None
) -> List[Dict]:
    """
    Args:
        image: the image's name (as it will stand in the files).
        instances: Detectron2 ``Instances`` with ``pred_boxes``, ``scores``, ``pred_classes``.
        classes: ``(id, name)`` of each model class, in the model's order; None: the class
            index as the id, no name.

    Returns:
        one dict per detection with the keys of :data:`CSV_COLUMNS`.
    """
    boxes = instances.pred_boxes.tensor.tolist()
    scores = instances.scores.tolist()
    labels = instances.pred_classes.tolist()
    rows = []
    for (x0, y0, x1, y1), score, label in zip(boxes, scores, labels):
        class_id, name = classes[label] if classes else (label, "")
        rows.append(
            dict(image=image, x0=x0, y0=y0, x1=x1, y1=y1, score=score, class_id=int(class_id))
        )
        rows[-1]["class_name"] = name
    return rows


def _coco_results(rows: Sequence[Dict]) -> List[Dict]:
    image_ids: Dict[str, int] = {}
    results = []
    for r in rows:
        image_id = image_ids.setdefault(r["image"], len(image_ids) + 1)
        results.append(
            {
                "image_id": image_id,
                "file_name": r["image"],
                "category_id": r["class_id"],
                "category_name": r["class_name"],
                "bbox": [r["x0"], r["y0"], r["x1"] - r["x0"], r["y1"] - r["y0"]],
                "score": r["score"],
            }
        )
    return results


def write_detections(path: str, rows: Sequence[Dict]) -> None:
    """Write ``rows`` (of :func:`detection_rows`) to ``path``: CSV for a ``.csv`` name, COCO
    results JSON for ``.json``. Raises ValueError for another extension."""
    if path.lower().endswith(".csv"):
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            for r in rows:
                writer.writerow({k: r[k] for k in CSV_COLUMNS})
    elif path.lower().endswith(".json"):
        with open(path, "w") as f:
            json.dump(_coco_results(rows), f)
    else:
        raise ValueError(f"{path}: detections are written as .csv or .json")
