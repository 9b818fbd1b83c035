"""The one synthetic detection dataset: coloured shapes on noisy backgrounds, for the Shapes
config, the tests and the example COCO folder of ``tools/make_coco_example.py``.

Each image has a dark gradient background with noise and 1 to ``max_shapes`` bright,
non-touching shapes (``rectangle``, ``ellipse``, ``triangle``), drawn without anti-aliasing, so
each box is the exact tight box of its shape. Everything is a function of the seed: image ``i``
uses ``numpy.random.default_rng([seed, i])``, so the first images do not change when more are
asked for, and equal arguments give byte-identical files. :func:`write_shapes_coco` writes a
COCO folder; the named datasets ``shapes_train`` / ``shapes_val`` are generated into the cache
(:mod:`.cache`) when first read.
"""

import hashlib
import json
import os
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Tuple

import cv2
import numpy as np
from detectron2.data.datasets import load_coco_json
from PIL import Image

from .cache import build_dir_atomically, is_complete, resolve_root, write_json_atomically
from .registration import register_dataset

__all__ = [
    "SHAPES_CLASSES",
    "SHAPES_DATASETS",
    "build_shapes_cache",
    "generate_shapes_image",
    "register_shapes",
    "write_shapes_coco",
]


SHAPES_CLASSES = ["rectangle", "ellipse", "triangle"]
# The project's named shapes datasets: name -> (num_images, seed), 128-256 px images.
SHAPES_DATASETS = {"shapes_train": (64, 0), "shapes_val": (16, 1)}
# Bump when generation changes, so caches of the old generator are not reused.
_GENERATOR_VERSION = 1
_GAP = 2  # pixels kept free between shapes


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Dark bilinear colour gradient, float32 (H, W, 3) in [0, 110]."""
    corners = rng.uniform(0, 110, size=(2, 2, 3)).astype(np.float32)
    # Explicit numpy arithmetic (not cv2.resize) so the result is the same on every platform.
    ty = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    tx = np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
    top = corners[0, 0] * (1 - tx) + corners[0, 1] * tx
    bottom = corners[1, 0] * (1 - tx) + corners[1, 1] * tx
    return top * (1 - ty) + bottom * ty


def _draw_mask(rng: np.random.Generator, cls: int, height: int, width: int, size: int, x, y):
    """Mask (H, W) uint8 of one shape of class ``cls`` inside the square (x, y, size)."""
    mask = np.zeros((height, width), np.uint8)
    if cls == 0:  # axis-aligned rectangle, aspect ratio in [1/2, 2]
        w = int(rng.integers(size // 2, size + 1))
        h = int(rng.integers(size // 2, size + 1))
        cv2.rectangle(mask, (x, y), (x + w - 1, y + h - 1), 1, thickness=-1)
    elif cls == 1:  # rotated ellipse
        # Semi-axes <= (size - 1) // 2 keep every rotation inside the square.
        half = (size - 1) // 2
        axes = (int(rng.integers(size // 4, half + 1)), int(rng.integers(size // 4, half + 1)))
        center = (x + size // 2, y + size // 2)
        angle = float(rng.uniform(0, 180))
        cv2.ellipse(mask, center, axes, angle, 0, 360, 1, thickness=-1, lineType=cv2.LINE_8)
    else:  # triangle: one vertex on the top edge, two on the bottom half of the square
        pts = np.array(
            [
                [x + int(rng.integers(0, size)), y],
                [x, y + int(rng.integers(size // 2, size))],
                [x + size - 1, y + int(rng.integers(size // 2, size))],
            ],
            np.int32,
        )
        cv2.fillPoly(mask, [pts], 1, lineType=cv2.LINE_8)
    return mask


def generate_shapes_image(
    rng: np.random.Generator,
    height: int,
    width: int,
    max_shapes: int = 4,
    min_size: int = 16,
    classes: Sequence[int] = (0, 1, 2),
) -> dict:
    """Render one image.

    Args:
        rng: random generator (all randomness comes from it).
        height, width: image size.
        max_shapes: at most this many shapes (at least 1; fewer when they do not fit).
        min_size: smallest side of a shape's square, in pixels.
        classes: the classes drawn, indices into :data:`SHAPES_CLASSES`.

    Returns:
        dict with "image" uint8 (H, W, 3) RGB, "boxes" float64 (N, 4) XYXY_ABS exact tight
        boxes, "classes" int64 (N,) indices into :data:`SHAPES_CLASSES`, "masks" bool (N, H, W).
    """
    max_size = max(min_size, int(0.45 * min(height, width)))
    image = _background(rng, height, width)
    boxes, labels, masks = [], [], []
    num = int(rng.integers(1, max_shapes + 1))
    for _ in range(num):
        for _attempt in range(20):  # rejection sampling for non-overlapping shapes
            size = int(rng.integers(min_size, max_size + 1))
            x = int(rng.integers(0, width - size + 1))
            y = int(rng.integers(0, height - size + 1))
            if all(
                x + size + _GAP <= b[0]
                or b[2] + _GAP <= x
                or y + size + _GAP <= b[1]
                or b[3] + _GAP <= y
                for b in boxes
            ):
                break
        else:
            continue
        cls = classes[int(rng.integers(0, len(classes)))]
        color = rng.uniform(150, 255, size=3).astype(np.float32)
        mask = _draw_mask(rng, cls, height, width, size, x, y).astype(bool)
        ys, xs = np.nonzero(mask)
        image[mask] = color
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        labels.append(cls)
        masks.append(mask)
    image += rng.normal(0, 8, size=image.shape).astype(np.float32)
    return {
        "image": np.clip(np.rint(image), 0, 255).astype(np.uint8),
        "boxes": np.asarray(boxes, np.float64).reshape(-1, 4),
        "classes": np.asarray(labels, np.int64),
        "masks": np.asarray(masks, bool).reshape(-1, height, width),
    }


def _check_size(image_size) -> Tuple[int, int]:
    lo, hi = (int(v) for v in image_size)
    if not (32 <= lo <= hi):
        raise ValueError(f"image_size must be (min, max) with 32 <= min <= max, got {image_size}")
    return lo, hi


def write_shapes_coco(
    folder,
    splits: Sequence[Tuple[str, int]],
    seed: int,
    image_size: Tuple[int, int] = (128, 256),
    max_shapes: int = 4,
    categories: Optional[Mapping[str, int]] = None,
    grey_every: int = 0,
    info: Optional[dict] = None,
) -> Dict[str, str]:
    """Write a COCO-format folder of shapes: ``images/NNNNNN.png`` and one JSON per split.

    Args:
        folder: output folder (created).
        splits: ``(name, number of images)``: ``<name>.json`` holds the next that many images
            (numbered on across the splits, image ids from 1).
        seed: everything is a function of it.
        image_size: (smallest, largest) image side in pixels; each side is drawn in it.
        max_shapes: at most this many shapes per image.
        categories: ``{class name: COCO category id}`` of the classes drawn, names from
            :data:`SHAPES_CLASSES`; default all of them, ids 1, 2, 3.
        grey_every: write every n-th image (the n-th, 2n-th, ...) as an 8-bit grey PNG; 0: none.
        info: the JSON files' ``info``.

    Returns:
        ``{name: JSON path for each split, "image_root": the images folder}``.
    """
    lo, hi = _check_size(image_size)
    if categories is None:
        categories = {name: i + 1 for i, name in enumerate(SHAPES_CLASSES)}
    unknown = sorted(set(categories) - set(SHAPES_CLASSES))
    if unknown:
        raise ValueError(f"categories: {unknown} are not shapes; choose from {SHAPES_CLASSES}")
    classes = sorted(SHAPES_CLASSES.index(name) for name in categories)
    coco_categories = [
        {"id": cid, "name": name, "supercategory": "shape"}
        for name, cid in sorted(categories.items(), key=lambda item: item[1])
    ]
    image_root = os.path.join(folder, "images")
    os.makedirs(image_root, exist_ok=True)
    paths, start = {"image_root": image_root}, 0
    for split, count in splits:
        images, anns = [], []
        for i in range(start, start + count):
            rng = np.random.default_rng([seed, i])
            height, width = (int(v) for v in rng.integers(lo, hi + 1, size=2))
            out = generate_shapes_image(rng, height, width, max_shapes, classes=classes)
            pixels = out["image"]
            if grey_every and (i + 1) % grey_every == 0:
                pixels = pixels.mean(axis=2).astype(np.uint8)
            file_name = f"{i:06d}.png"
            Image.fromarray(pixels).save(os.path.join(image_root, file_name), compress_level=1)
            images.append({"id": i + 1, "file_name": file_name, "height": height, "width": width})
            for box, cls in zip(out["boxes"].tolist(), out["classes"].tolist()):
                w, h = box[2] - box[0], box[3] - box[1]
                anns.append(
                    {
                        "id": len(anns) + 1,
                        "image_id": i + 1,
                        "category_id": categories[SHAPES_CLASSES[cls]],
                        "bbox": [box[0], box[1], w, h],
                        "area": w * h,
                        "iscrowd": 0,
                    }
                )
        start += count
        coco = {
            "info": info or {"description": "synthetic shapes, atss.data.shapes"},
            "images": images,
            "annotations": anns,
            "categories": coco_categories,
        }
        paths[split] = os.path.join(folder, f"{split}.json")
        write_json_atomically(coco, paths[split])
    return paths


def _params(num_images, seed, image_size, max_shapes) -> dict:
    lo, hi = _check_size(image_size)
    if num_images < 1 or max_shapes < 1:
        raise ValueError(f"num_images and max_shapes must be >= 1, got {num_images}, {max_shapes}")
    return {
        "generator": _GENERATOR_VERSION,
        "num_images": int(num_images),
        "seed": int(seed),
        "image_size": [lo, hi],
        "max_shapes": int(max_shapes),
    }


def _cache_dir(root, params: dict) -> Path:
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    return resolve_root(root, "shapes") / key


def build_shapes_cache(
    num_images: int,
    seed: int,
    image_size: Tuple[int, int] = (128, 256),
    max_shapes: int = 4,
    root=None,
) -> Path:
    """Write ``images/NNNNNN.png`` and ``annotations.json`` (COCO) unless already cached.

    Returns:
        Path: the cache folder (``root`` or ``<cache root>/shapes``, then a parameter hash).
    """
    params = _params(num_images, seed, image_size, max_shapes)

    def build(tmp_dir: Path) -> dict:
        info = {"description": "synthetic shapes, atss.data.shapes", "params": params}
        splits = [("annotations", params["num_images"])]
        paths = write_shapes_coco(tmp_dir, splits, seed, image_size, max_shapes, info=info)
        with open(paths["annotations"]) as f:
            coco = json.load(f)
        return {"params": params, "images": len(coco["images"]), "boxes": len(coco["annotations"])}

    return build_dir_atomically(_cache_dir(root, params), build)


def register_shapes(
    name: str,
    num_images: int,
    seed: int,
    image_size: Tuple[int, int] = (128, 256),
    root: Optional[str] = None,
    max_shapes: int = 4,
    build: bool = True,
) -> str:
    """Register a shapes dataset with Detectron2, generating its files now (``build``) or when
    it is first read.

    ``metadata.json_file`` names the file either way (its folder is a hash of the arguments);
    with ``build=False`` it exists once the dataset was read, which is when Detectron2's tools
    build COCOEvaluator (after the test loader). Calling again with the same arguments is a
    no-op; with different arguments the name is re-registered.

    Args:
        build: write the files now, so that ``metadata.json_file`` exists
            before the dataset is read; False: write nothing until ``DatasetCatalog.get``.

    Returns:
        str: ``name``.
    """
    params = _params(num_images, seed, image_size, max_shapes)
    folder = _cache_dir(root, params)
    if build:
        build_shapes_cache(num_images, seed, image_size, max_shapes, root)
    json_file, image_root = str(folder / "annotations.json"), str(folder / "images")

    def load():
        if not is_complete(folder):  # not built yet, or deleted since
            build_shapes_cache(num_images, seed, image_size, max_shapes, root)
        return load_coco_json(json_file, image_root, name)

    register_dataset(
        name,
        load,
        thing_classes=SHAPES_CLASSES,
        thing_dataset_id_to_contiguous_id={i + 1: i for i in range(len(SHAPES_CLASSES))},
        json_file=json_file,
        image_root=image_root,
    )
    return name
