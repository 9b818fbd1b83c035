"""A small COCO-format folder to try the "own data" commands on (and to test them with).

:func:`write_coco_example` writes::

    folder/images/000000.png ...   8-bit RGB PNGs, every third one 8-bit grey
    folder/train.json              COCO instances JSON
    folder/val.json

with two classes whose ids are not 1..N (``rectangle`` = 3, ``ellipse`` = 7), as exported by
annotation tools that keep their own ids. Each image has 1-4 filled, non-overlapping shapes on a
noisy dark background; boxes are the shapes' exact extents (``[x, y, w, h]``, pixels).
"""

import json
import os
from typing import Dict, List, Tuple

import cv2
import numpy as np

__all__ = ["EXAMPLE_CATEGORIES", "write_coco_example"]

EXAMPLE_CATEGORIES = [{"id": 3, "name": "rectangle"}, {"id": 7, "name": "ellipse"}]


def _draw_image(rng: np.random.Generator, height: int, width: int) -> Tuple[np.ndarray, List]:
    """One RGB uint8 (H, W, 3) image and its ``(category_id, [x, y, w, h])`` boxes."""
    image = rng.normal(60, 20, size=(height, width, 3)).clip(0, 255).astype(np.uint8)
    boxes: List[Tuple[int, List[float]]] = []
    for _ in range(int(rng.integers(1, 5))):
        w, h = (int(v) for v in rng.integers(20, min(height, width) // 2, size=2))
        x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
        if any(
            x < bx + bw + 2 and bx < x + w + 2 and y < by + bh + 2 and by < y + h + 2
            for _, (bx, by, bw, bh) in boxes
        ):
            continue  # keep shapes apart, so every box is fully visible
        color = tuple(int(c) for c in rng.integers(150, 256, size=3))
        if rng.random() < 0.5:
            cv2.rectangle(image, (x, y), (x + w - 1, y + h - 1), color, thickness=-1)
            category = 3
        else:
            # An axis-aligned ellipse filling the box; its extent is measured, not assumed.
            mask = np.zeros((height, width), np.uint8)
            center, axes = (x + w // 2, y + h // 2), ((w - 1) // 2, (h - 1) // 2)
            cv2.ellipse(mask, center, axes, 0, 0, 360, 1, thickness=-1)
            image[mask > 0] = color
            ys, xs = np.nonzero(mask)
            x, y, w, h = int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1
            category = 7
        boxes.append((category, [float(x), float(y), float(w), float(h)]))
    return image, boxes


def _coco(images: List[Dict], boxes: List[List]) -> Dict:
    annotations = []
    for image, image_boxes in zip(images, boxes):
        for category, bbox in image_boxes:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image["id"],
                    "category_id": category,
                    "bbox": bbox,
                    "area": bbox[2] * bbox[3],
                    "iscrowd": 0,
                }
            )
    return {"images": images, "annotations": annotations, "categories": EXAMPLE_CATEGORIES}


def write_coco_example(
    folder: str, num_train: int = 24, num_val: int = 8, size: Tuple[int, int] = (160, 256), seed=0
) -> Dict[str, str]:
    """Write the example folder (see the module docstring); images ``0..num_train-1`` are the
    train split, the next ``num_val`` the val split.

    Args:
        folder: output folder (created).
        num_train, num_val: images per split.
        size: (smallest, largest) image side in pixels.
        seed: everything is a function of it.

    Returns:
        ``{"train_json", "val_json", "image_root"}`` paths.
    """
    rng = np.random.default_rng(seed)
    image_root = os.path.join(folder, "images")
    os.makedirs(image_root, exist_ok=True)
    images, boxes = [], []
    for i in range(num_train + num_val):
        height, width = (int(v) for v in rng.integers(size[0], size[1] + 1, size=2))
        image, image_boxes = _draw_image(rng, height, width)
        file_name = f"{i:06d}.png"
        if i % 3 == 2:  # 8-bit grey PNG (cv2 writes one channel as mode "L")
            cv2.imwrite(os.path.join(image_root, file_name), image.mean(axis=2).astype(np.uint8))
        else:
            cv2.imwrite(os.path.join(image_root, file_name), image[:, :, ::-1])
        images.append({"id": i + 1, "file_name": file_name, "height": height, "width": width})
        boxes.append(image_boxes)
    paths = {"image_root": image_root}
    for split, part in (("train", slice(0, num_train)), ("val", slice(num_train, None))):
        paths[f"{split}_json"] = os.path.join(folder, f"{split}.json")
        with open(paths[f"{split}_json"], "w") as f:
            json.dump(_coco(images[part], boxes[part]), f)
    return paths
