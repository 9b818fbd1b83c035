"""Smoke test: the pinned stack imports and the compiled detectron2 ops load."""

import importlib
import sys
from unittest import mock

import pytest


def test_atss_and_detectron2_import_and_report_versions():
    import atss
    from atss.env import check_environment

    report = check_environment()
    print("environment:", report)
    assert report["detectron2"]
    assert report["torch"].startswith("2.")
    assert atss.__version__


def test_detectron2_compiled_ops_load():
    import torch
    from detectron2 import _C  # noqa: F401  (raises if the ops were built for another torch)
    from detectron2.layers import batched_nms

    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10]])
    keep = batched_nms(boxes, torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0, 0, 1]), 0.5)
    assert keep.tolist() == [0, 2]


def test_missing_detectron2_gives_actionable_error():
    from atss import env

    real_import = importlib.import_module

    def fake_import(name, *a, **k):
        if name == "detectron2":
            raise ImportError("No module named 'detectron2'")
        return real_import(name, *a, **k)

    with mock.patch.object(env.importlib, "import_module", fake_import):
        with pytest.raises(ImportError, match="make venv"):
            env.check_environment()


def test_unloadable_ops_name_the_torch_version():
    from atss import env

    real_import = importlib.import_module

    def fake_import(name, *a, **k):
        if name == "detectron2._C":
            raise ImportError("undefined symbol: _ZN3c10")
        return real_import(name, *a, **k)

    with mock.patch.object(env.importlib, "import_module", fake_import):
        with pytest.raises(ImportError, match="torch==2.3.1"):
            env.check_environment()
    assert "detectron2" in sys.modules
