"""ATSS (Adaptive Training Sample Selection) as a Detectron2 project extension."""

from .env import check_environment

check_environment()

from .modeling import (  # noqa: E402
    ATSS,
    AnchorAssigner,
    ATSSHead,
    ATSSWithTTA,
    PointBoxTransform,
    atss_match,
    build_box_transform,
    build_tta_model,
)

__version__ = "0.1.0"
