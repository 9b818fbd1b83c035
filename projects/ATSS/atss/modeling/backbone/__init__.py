"""atss.modeling.backbone"""

from .mobilenet import *  # noqa: F403  (exports mobilenet.__all__)
