"""Checks that the detectron2 installation is usable, with errors that name the fix: run when
``atss`` is imported, so a wrong stack fails at once instead of deep inside a config
(docs/install.md)."""

import importlib

__all__ = ["check_environment", "environment_report"]

_FIX = (
    "Install the pinned stack with `make venv` (Python 3.10, torch 2.3.1, sal-detectron2 0.7.2), "
    "or on a GPU cluster build official detectron2 from source against your torch "
    "(`pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'`;"
    " docs/install.md)."
)


def check_environment():
    """Import detectron2 and its compiled ops; raise ImportError naming the fix if they fail.

    Returns:
        dict: versions of python, torch, torchvision and detectron2.
    """
    try:
        detectron2 = importlib.import_module("detectron2")
    except ImportError as e:
        raise ImportError(f"ATSS needs detectron2, which is not importable ({e}). {_FIX}") from e
    try:
        importlib.import_module("detectron2._C")
    except ImportError as e:
        import torch

        raise ImportError(
            f"detectron2 is installed but its compiled ops (detectron2._C) do not load with "
            f"torch {torch.__version__}: {e}. The ops must be built for this exact torch "
            f"version; for the sal-detectron2 wheel that is torch==2.3.1 / torchvision==0.18.1. "
            f"{_FIX}"
        ) from e
    return environment_report(detectron2)


def environment_report(detectron2=None):
    import platform

    import torch
    import torchvision

    if detectron2 is None:
        import detectron2
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "detectron2": detectron2.__version__,
        "detectron2_path": detectron2.__file__,
        "cuda_available": torch.cuda.is_available(),
    }
