"""ATSS (Adaptive Training Sample Selection) as a Detectron2 project extension."""

from .env import check_environment

check_environment()

__version__ = "0.1.0"
