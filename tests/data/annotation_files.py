"""Annotated images for the data tests: RGB PNGs with a COCO instances JSON or Pascal VOC XML."""

import json
import uuid

import numpy as np
from detectron2.data.datasets import register_coco_instances
from PIL import Image

H, W = 96, 128


def write_images(root, n=3):
    """n RGB PNGs of H x W under root/images; returns the COCO 'images' entries (ids 10...)."""
    (root / "images").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    entries = []
    for i in range(n):
        name = f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(
            root / "images" / name
        )
        entries.append({"id": 10 + i, "file_name": name, "height": H, "width": W})
    return entries


def annotation(ann_id, image_id, bbox, category_id=1, **extra):
    return {"id": ann_id, "image_id": image_id, "bbox": bbox, "category_id": category_id,
            "area": 1.0, "iscrowd": 0, **extra}  # fmt: skip


def write_coco_json(root, annotations, images=None, categories=None, text=None):
    """Write a COCO JSON (or raw ``text``) under ``root`` with the images of
    :func:`write_images` unless ``images`` is given; returns its path."""
    images = write_images(root) if images is None else images
    if categories is None:
        categories = [{"id": 1, "name": "tree"}, {"id": 2, "name": "bush"}]
    path = root / f"{uuid.uuid4().hex}.json"
    data = {"images": images, "annotations": annotations, "categories": categories}
    path.write_text(text if text is not None else json.dumps(data))
    return str(path)


def coco_dataset(root, annotations, images=None, categories=None, text=None):
    """:func:`write_coco_json`, registered with Detectron2; returns (dataset name, json path)."""
    path = write_coco_json(root, annotations, images, categories, text)
    name = f"validation_test_{uuid.uuid4().hex}"
    register_coco_instances(name, {}, path, str(root / "images"))
    return name, path


def write_voc(folder, name, boxes, size=(64, 48), labels=None, image_name=None, xml_size=None):
    """Write a tiny VOC sample: PNG of ``size`` (w, h) and its XML with ``boxes`` (strings ok)."""
    w, h = size
    image_name = image_name or f"{name}.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / image_name)
    xw, xh = xml_size or size
    objects = "".join(
        f"<object><name>{(labels or ['Tree'] * len(boxes))[i]}</name><bndbox>"
        f"<xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax>"
        f"</bndbox></object>"
        for i, b in enumerate(boxes)
    )
    (folder / f"{name}.xml").write_text(
        f"<annotation><filename>{image_name}</filename><size><width>{xw}</width>"
        f"<height>{xh}</height><depth>3</depth></size>{objects}</annotation>"
    )
