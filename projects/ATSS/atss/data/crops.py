"""Cutting large annotated images into the crops of a training set (the tree-crown tiles): tile
origins along an axis, the tiles of a region, the boxes that fall in a window, and the crops
written as PNGs with their COCO records.

:func:`tile_starts` is the one tile-origin rule: tiled inference
(:func:`atss.inference.tiled_detector.tile_grid`) uses it too, with ``cover_edges``."""

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

__all__ = ["tile_starts", "region_tiles", "boxes_in_window", "crops_to_coco"]


def tile_starts(length: int, tile_size: int, stride: int, cover_edges: bool = False) -> List[int]:
    """Origins of the tiles along one axis of a region of ``length`` pixels.

    Whole tiles at multiples of ``stride``; with ``cover_edges`` one more tile flush with the end
    when the last whole tile stops short of it. A region shorter than a tile gives ``[0]`` (the
    caller clips that tile to the region).
    """
    if length <= tile_size:
        return [0]
    starts = list(range(0, length - tile_size + 1, stride))
    if cover_edges and starts[-1] + tile_size < length:
        starts.append(length - tile_size)
    return starts


def boxes_in_window(
    boxes: np.ndarray, window: Sequence[int], min_visible: float = 0.5
) -> Tuple[np.ndarray, np.ndarray]:
    """Boxes that mostly lie inside a window, clipped to it, in window coordinates.

    Args:
        boxes: (N, 4) XYXY_ABS in image coordinates, positive size.
        window: (x0, y0, x1, y1) in image coordinates.
        min_visible: keep a box when more than this fraction of its area is inside.

    Returns:
        boxes (K, 4) XYXY relative to the window's top-left corner, and their indices (K,).
    """
    x0, y0, x1, y1 = window
    ix0 = np.maximum(boxes[:, 0], x0)
    iy0 = np.maximum(boxes[:, 1], y0)
    ix1 = np.minimum(boxes[:, 2], x1)
    iy1 = np.minimum(boxes[:, 3], y1)
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    idx = np.flatnonzero(inter > min_visible * area)
    clipped = np.stack([ix0[idx] - x0, iy0[idx] - y0, ix1[idx] - x0, iy1[idx] - y0], axis=1)
    return clipped.reshape(-1, 4), idx


def region_tiles(
    region: Tuple[int, int, int, int], tile_size: int, stride: int, cover_edges: bool = False
) -> List[Tuple[int, int, int, int]]:
    """Tiles (x0, y0, x1, y1) covering ``region`` (same format), row by row, clipped to it
    (:func:`tile_starts` along each axis)."""
    rx0, ry0, rx1, ry1 = region
    xs = tile_starts(rx1 - rx0, tile_size, stride, cover_edges)
    ys = tile_starts(ry1 - ry0, tile_size, stride, cover_edges)
    return [
        (rx0 + x, ry0 + y, min(rx0 + x + tile_size, rx1), min(ry0 + y + tile_size, ry1))
        for y in ys
        for x in xs
    ]


def crops_to_coco(
    crops: Sequence[Tuple[object, Tuple[int, int, int, int]]],
    image_dir: Path,
    min_visible: float,
    category_id: int = 1,
    pixels: Optional[Dict[str, np.ndarray]] = None,
) -> Tuple[List[dict], List[dict]]:
    """Write each crop as a PNG (once: a file of that name is not rewritten) and return the COCO
    ``images`` and ``annotations`` of the crops, ids from 1 in the order of ``crops``.

    Args:
        crops: ``(image, (x0, y0, x1, y1))`` pairs; ``image`` has ``name``, ``image_path``,
            ``boxes`` (N, 4) XYXY_ABS and N ``labels`` (:class:`~.voc.AnnotatedImage`).
        image_dir: folder of the PNGs, named ``<name>_x<x0>_y<y0>_w<w>_h<h>.png``.
        min_visible: a box belongs to a crop when more than this fraction of its area is inside
            (:func:`boxes_in_window`); it is clipped to the crop.
        category_id: the category of every box; its label is kept as ``source_label``.
        pixels: decoded source images by name, filled as they are read (share it between
            calls that cut the same images).

    Returns:
        COCO image records (with ``source_image`` and ``window_xyxy``) and annotations.
    """
    pixels = {} if pixels is None else pixels
    images, annotations = [], []
    for image_id, (img, window) in enumerate(crops, start=1):
        x0, y0, x1, y1 = (int(v) for v in window)
        file_name = f"{img.name}_x{x0}_y{y0}_w{x1 - x0}_h{y1 - y0}.png"
        if not (image_dir / file_name).exists():
            if img.name not in pixels:
                with Image.open(img.image_path) as im:
                    pixels[img.name] = np.asarray(im.convert("RGB"))
            # compress_level=1: much faster than the default, for slightly larger files.
            Image.fromarray(pixels[img.name][y0:y1, x0:x1]).save(
                image_dir / file_name, compress_level=1
            )
        images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "width": x1 - x0,
                "height": y1 - y0,
                "source_image": img.image_path.name,
                "window_xyxy": [x0, y0, x1, y1],
            }
        )
        boxes, idx = boxes_in_window(img.boxes, window, min_visible)
        for box, j in zip(boxes.tolist(), idx.tolist()):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_id,
                    "bbox": [box[0], box[1], w, h],
                    "area": w * h,
                    "iscrowd": 0,
                    "source_label": img.labels[j],
                }
            )
    return images, annotations
