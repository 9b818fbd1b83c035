"""Registering datasets with Detectron2's catalogs, idempotently.

``DatasetCatalog.register`` refuses a name twice, and every launched process (``--num-gpus N``),
every test and every entry point registers the datasets it needs. :func:`register_dataset` makes
that safe: registering the same name again with the same metadata is a no-op; with different
metadata it is an error naming the dataset and the differing keys.
"""

import json
from typing import Callable, List, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

__all__ = ["register_dataset", "register_coco_json"]


def register_dataset(
    name: str,
    load_fn: Callable[[], List[dict]],
    *,
    thing_classes: Sequence[str],
    **metadata,
) -> None:
    """Register ``name`` in Detectron2's ``DatasetCatalog`` (``load_fn``) and ``MetadataCatalog``.

    Args:
        name: dataset name.
        load_fn: returns the dataset's records (Detectron2's standard dataset dicts).
        thing_classes: class names; contiguous class ``i`` is ``thing_classes[i]``.
        metadata: more metadata; ``evaluator_type`` defaults to ``"coco"``.

    Re-registering ``name`` with the same metadata does nothing (the first ``load_fn`` stays);
    with different metadata it raises ``ValueError``.
    """
    metadata = {"thing_classes": list(thing_classes), "evaluator_type": "coco", **metadata}
    if name in DatasetCatalog.list():
        existing = MetadataCatalog.get(name).as_dict()
        differ = sorted(k for k, v in metadata.items() if existing.get(k) != v)
        if differ:
            raise ValueError(
                f"dataset '{name}' is already registered with other metadata ({', '.join(differ)})"
            )
        return
    DatasetCatalog.register(name, load_fn)
    MetadataCatalog.get(name).set(**metadata)


def _coco_json_classes(json_file: str) -> List[str]:
    """Category names of a COCO JSON in the order ``load_coco_json`` maps them (sorted ids)."""
    with open(json_file) as f:
        categories = json.load(f)["categories"]
    return [c["name"] for c in sorted(categories, key=lambda c: c["id"])]


def register_coco_json(
    name: str,
    json_file: str,
    image_root: str,
    *,
    thing_classes: Optional[Sequence[str]] = None,
    **metadata,
) -> None:
    """Register a COCO instances JSON with Detectron2's ``load_coco_json``.

    Args:
        name: dataset name.
        json_file: COCO instances JSON.
        image_root: folder the JSON's ``file_name`` entries are relative to.
        thing_classes: class names; by default the JSON's categories, sorted by id.
        metadata: more metadata (``json_file`` and ``image_root`` are set here; COCOEvaluator
            reads ``json_file``).
    """
    if thing_classes is None:
        thing_classes = _coco_json_classes(json_file)
    register_dataset(
        name,
        lambda: load_coco_json(json_file, image_root, name),
        thing_classes=thing_classes,
        json_file=json_file,
        image_root=image_root,
        **metadata,
    )
