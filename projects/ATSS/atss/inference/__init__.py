"""Inference beyond one forward pass: tiled inference for large images (:mod:`.tiled_detector`,
whose public names are re-exported here), images read a window at a time (:mod:`.lazy_image`),
ONNX Runtime (:mod:`.onnx_runtime`) and detections written to files (:mod:`.detection_files`).
"""

from . import tiled_detector
from .tiled_detector import *  # noqa: F403

__all__ = list(tiled_detector.__all__)
