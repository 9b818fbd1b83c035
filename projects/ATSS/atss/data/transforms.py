"""The authors' test resize, for evaluating their published weights exactly as they did.

maskrcnn-benchmark's ``transforms.Resize.get_size`` (sfzhang15/ATSS) differs from Detectron2's
:class:`~detectron2.data.transforms.ResizeShortestEdge` in two roundings: the longer side is
**truncated** (``int(size * long / short)``) where Detectron2 rounds it, and when the longer
side would exceed ``max_size`` the shorter side becomes ``int(round(max_size * short / long))``
(halves to even) and the longer one is truncated from it, where Detectron2 scales both sides by
``max_size / long`` and rounds each (a 640 x 480 image at 800: 1066 px wide for the authors,
1067 for Detectron2). mmdetection rounds like Detectron2. Used by
``configs/COCO/converted/*_authors.py``.
"""

from typing import Tuple

import numpy as np
from detectron2.data.transforms import NoOpTransform, ResizeShortestEdge, ResizeTransform

__all__ = ["AuthorsResizeShortestEdge", "authors_resize_shape"]


def authors_resize_shape(
    height: int, width: int, short_edge_length: int, max_size: int
) -> Tuple[int, int]:
    """
    (new_height, new_width) of maskrcnn-benchmark's ``Resize.get_size`` for an image of
    (height, width) resized to ``short_edge_length`` with the longer side at most ``max_size``
    (None: no cap). Arithmetic as theirs, step for step (float division, ``round`` then
    truncation).
    """
    size = int(short_edge_length)
    if max_size is not None:
        short, long = float(min(width, height)), float(max(width, height))
        if long / short * size > max_size:
            size = int(round(max_size * short / long))
    if (width <= height and width == size) or (height <= width and height == size):
        return int(height), int(width)
    if width < height:
        return int(size * height / width), size
    return size, int(size * width / height)


class AuthorsResizeShortestEdge(ResizeShortestEdge):
    """
    :class:`ResizeShortestEdge` with the output size of the authors' resize
    (:func:`authors_resize_shape`); same arguments, same sampling of the shorter side, same
    bilinear interpolation. Used by ``configs/COCO/converted/*_authors.py`` for evaluation.
    """

    def get_transform(self, image):
        h, w = image.shape[:2]
        # The shorter side is drawn exactly as ResizeShortestEdge draws it.
        if self.is_range:
            size = np.random.randint(self.short_edge_length[0], self.short_edge_length[1] + 1)
        else:
            size = np.random.choice(self.short_edge_length)
        if size == 0:
            return NoOpTransform()
        newh, neww = authors_resize_shape(h, w, int(size), self.max_size)
        return ResizeTransform(h, w, newh, neww, self.interp)
