"""
The two box parameterisations of ATSS, behind one switch (``box_coding``):

* ``"BOX"`` (default, the authors' released models): R-CNN deltas relative to the anchor box,
  Detectron2's :class:`Box2BoxTransform` with weights (10, 10, 5, 5) and its scale clamp
  log(1000/16) on dw, dh.
* ``"POINT"`` (anchor-free, the paper's "FCOS + ATSS"): distances (l, t, r, b) from the anchor
  centre to the box sides divided by the level stride, :class:`PointBoxTransform`.
"""

from typing import Optional

import torch
from detectron2.modeling.box_regression import Box2BoxTransform, Box2BoxTransformLinear

__all__ = ["BOX_CODINGS", "PointBoxTransform", "build_box_transform", "anchor_scale_of"]

BOX_CODINGS = ("BOX", "POINT")


class PointBoxTransform(Box2BoxTransformLinear):
    """
    (l, t, r, b) / stride, for anchors of side ``anchor_scale`` x stride.

    Detectron2's :class:`Box2BoxTransformLinear` (normalize_by_size=True) divides by the anchor
    side; ATSS's anchors are ``anchor_scale`` (8) strides wide, so the deltas are rescaled by that
    factor to become stride-normalised, as in the authors' POINT mode. Decoding applies ReLU to
    the distances (the authors' ReLU after the per-level scale), so boxes are never inverted.
    """

    def __init__(self, anchor_scale: float = 8.0):
        super().__init__(normalize_by_size=True)
        self.anchor_scale = float(anchor_scale)

    def get_deltas(self, src_boxes: torch.Tensor, target_boxes: torch.Tensor) -> torch.Tensor:
        """(R, 4) anchors, (R, 4) boxes -> (R, 4) stride-normalised (l, t, r, b)."""
        return super().get_deltas(src_boxes, target_boxes) * self.anchor_scale

    def apply_deltas(self, deltas: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """(R, 4) stride-normalised distances, (R, 4) anchors -> (R, 4) XYXY boxes."""
        return super().apply_deltas(deltas / self.anchor_scale, boxes)


def build_box_transform(box_coding: str = "BOX", anchor_scale: Optional[float] = 8.0):
    """Box transform of a ``box_coding`` ("BOX" or "POINT")."""
    if box_coding == "BOX":
        return Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0))
    if box_coding == "POINT":
        return PointBoxTransform(anchor_scale=anchor_scale)
    raise ValueError(f"box_coding must be one of {BOX_CODINGS}, got {box_coding!r}")


def anchor_scale_of(anchor_generator) -> float:
    """Anchor side divided by stride on the first level (8 for ATSS's default anchors)."""
    cell = next(iter(anchor_generator.cell_anchors))
    return float(cell[0, 2] - cell[0, 0]) / float(anchor_generator.strides[0])
