"""Inference helpers beyond a single forward pass: tiled (sliced) inference for large images
(:mod:`.tiling`, whose public names are re-exported here)."""

from . import tiling
from .tiling import *  # noqa: F403

__all__ = list(tiling.__all__)
