"""Cutting large annotated images into the crops of a training set (the tree-crown tiles): tile
origins along an axis, the tiles of a region, and the boxes that fall in a window.

:func:`tile_starts` is the one tile-origin rule: tiled inference
(:func:`atss.inference.tiled_detector.tile_grid`) uses it too, with ``cover_edges``."""

from typing import List, Sequence, Tuple

import numpy as np

__all__ = ["tile_starts", "region_tiles", "boxes_in_window"]


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
