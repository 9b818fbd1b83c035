"""Inference helpers beyond a single forward pass: tiled (sliced) inference for large images
(:mod:`.tiled_detector`, whose public names are re-exported here)."""

from . import tiled_detector
from .tiled_detector import *  # noqa: F403

__all__ = list(tiled_detector.__all__)
