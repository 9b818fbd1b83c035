"""Inference helpers beyond a single forward pass: tiled (sliced) inference for large images."""

from .tiling import (
    TiledDetector,
    build_tiled_evaluation,
    build_tiled_model,
    cut_by_inner_border,
    tile_grid,
    tile_settings,
)

__all__ = [
    "TiledDetector",
    "build_tiled_evaluation",
    "build_tiled_model",
    "cut_by_inner_border",
    "tile_grid",
    "tile_settings",
]
