"""
The ATSS anchors, defined once: one square anchor of side 8 x stride per location, centres at
(i + 0.5) x stride, on Detectron2's :class:`DefaultAnchorGenerator`. Used by the configs
(``configs/common/models/atss.py``), the meta-architecture's default, the positives visualiser
and the tests.
"""

from typing import Dict, Sequence

from detectron2.modeling.anchor_generator import DefaultAnchorGenerator

__all__ = ["ATSS_STRIDES", "ATSS_ANCHOR_SCALE", "atss_anchor_args", "atss_anchor_generator"]

# P3-P7 strides and the anchor side in strides (paper, Sec. 4: "8S").
ATSS_STRIDES = (8, 16, 32, 64, 128)
ATSS_ANCHOR_SCALE = 8.0


def atss_anchor_args(
    strides: Sequence[int] = ATSS_STRIDES, scale: float = ATSS_ANCHOR_SCALE, offset: float = 0.5
) -> Dict:
    """
    Keyword arguments of :class:`DefaultAnchorGenerator` for one square anchor of side
    ``scale`` x stride per location. Plain lists, so a LazyConfig can edit them
    (``model.anchor_generator.sizes`` / ``aspect_ratios`` / ``offset``).

    Args:
        strides: one stride per level.
        scale: anchor side in strides (8 for ATSS).
        offset: anchor centre in cells: 0.5 puts it at (i + 0.5)·stride (authors), 0 at
            i·stride (mmdetection).
    """
    strides = [int(s) for s in strides]
    return dict(
        sizes=[[float(scale) * s] for s in strides],
        aspect_ratios=[1.0],
        strides=strides,
        offset=float(offset),
    )


def atss_anchor_generator(
    strides: Sequence[int] = ATSS_STRIDES, scale: float = ATSS_ANCHOR_SCALE, offset: float = 0.5
) -> DefaultAnchorGenerator:
    """The :class:`DefaultAnchorGenerator` of :func:`atss_anchor_args`."""
    return DefaultAnchorGenerator(**atss_anchor_args(strides, scale, offset))
