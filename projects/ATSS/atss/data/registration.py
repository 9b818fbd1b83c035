"""One way to register a detection dataset with Detectron2, for every dataset of the project:
the tree crowns, the generated shapes and COCO-format JSON files of one's own.

    from atss.data.registration import register_coco_json, register_dataset

    register_coco_json("my_train", "annotations/train.json", "images/")   # classes from the JSON
    register_dataset("my_set", load_fn, thing_classes=["tree"], json_file=..., image_root=...)

Both are idempotent: registering a name again with the same metadata does nothing, so every
launched process (Detectron2's ``launch`` starts workers that do not inherit the catalogs) and
every entry point can call them; with other metadata the name is registered anew.
"""

import functools
import logging
import os
from typing import Callable, List, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from .coco_json import read_coco_categories

__all__ = ["register_dataset", "register_coco_json"]

logger = logging.getLogger(__name__)


def register_dataset(
    name: str, load_fn: Callable[[], List[dict]], *, thing_classes: Sequence[str], **metadata
) -> None:
    """Register ``load_fn`` (returning Detectron2's standard dataset dicts) as ``name``, with
    ``thing_classes`` and ``metadata`` in ``MetadataCatalog.get(name)``.

    ``evaluator_type`` defaults to "coco" (COCOEvaluator, which also needs ``json_file`` or
    converts the dicts itself). Registering ``name`` again with equal metadata is a no-op (the
    first ``load_fn`` stays); with different metadata the old registration is replaced (a
    ``Metadata`` refuses to change a set value otherwise). Keys that loading added later (e.g.
    ``load_coco_json``'s id map) do not count as different.
    """
    metadata = {"thing_classes": list(thing_classes), "evaluator_type": "coco", **metadata}
    if name in DatasetCatalog.list():
        current = MetadataCatalog.get(name)
        if all(current.get(key, None) == value for key, value in metadata.items()):
            return
        logger.info(f"Re-registering dataset {name} with {metadata.get('json_file', metadata)}")
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, load_fn)
    MetadataCatalog.get(name).set(**metadata)


def register_coco_json(
    name: str,
    json_file: str,
    image_root: str,
    *,
    thing_classes: Optional[Sequence[str]] = None,
    **metadata,
) -> None:
    """Register a COCO instances JSON, loaded by Detectron2's ``load_coco_json``, through
    :func:`register_dataset`.

    Args:
        json_file, image_root: the annotations and the folder their ``file_name``s are
            relative to (stored as ``metadata.json_file`` / ``image_root``).
        thing_classes: class names in contiguous-id order. None: read from the JSON's
            ``categories`` now, sorted by id (as ``load_coco_json`` orders them), together with
            ``thing_dataset_id_to_contiguous_id``, so COCOEvaluator can map predictions back to
            the JSON's category ids even before the dataset is first loaded. When given, the
            JSON is not read here (it may be written later); ``load_coco_json`` sets the id map
            when the dataset is loaded.
        metadata: more metadata (``evaluator_type`` defaults to "coco").

    Raises:
        DatasetError: ``thing_classes`` is None and the JSON cannot be read or has no
            usable ``categories`` (the message names the file).
    """
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    if thing_classes is None:
        categories = read_coco_categories(json_file)  # (id, name), sorted by id
        thing_classes = [name for _, name in categories]
        metadata.setdefault(
            "thing_dataset_id_to_contiguous_id", {c: i for i, (c, _) in enumerate(categories)}
        )
    register_dataset(
        name,
        functools.partial(load_coco_json, json_file, image_root, name),
        thing_classes=thing_classes,
        json_file=json_file,
        image_root=image_root,
        **metadata,
    )
