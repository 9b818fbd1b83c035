"""ATSS (Adaptive Training Sample Selection) as a Detectron2 project extension."""

from .env import check_environment

check_environment()

from .modeling import (  # noqa: E402
    ATSS,
    AnchorAssigner,
    ATSSHead,
    PointBoxTransform,
    atss_match,
    build_box_transform,
)

__version__ = "0.1.0"
