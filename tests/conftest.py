"""Suite-wide settings."""

import os

import pytest
import torch

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytest_configure(config):
    # Processes the tests start (train_net.py, tools/*.py, `python -c`) import this checkout's
    # `atss` and `tests` too, as the tests themselves do through setup.cfg's `pythonpath`, not
    # another copy that happens to be installed.
    paths = [os.path.join(_REPO, "projects", "ATSS"), _REPO]
    inherited = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(paths + ([inherited] if inherited else []))


@pytest.fixture(autouse=True, scope="session")
def _one_intra_op_thread():
    # The tests use small tensors, where intra-op threading costs more than it gains, and CI
    # machines are small and shared: one thread per process is faster and steadier.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
