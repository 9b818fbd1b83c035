"""Suite-wide settings."""

import os

import pytest
import torch

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Where the tests marked `cuda` run (scripts/gpu_check.sh): CUDA, where they are skipped when it
# is absent; ATSS_CUDA_TESTS_DEVICE=cpu runs them against the CPU (the CPU compared with itself,
# without AMP or NCCL), so that their code runs on a machine without a GPU too.
CUDA_TESTS_DEVICE = os.environ.get("ATSS_CUDA_TESTS_DEVICE", "cuda")


def pytest_configure(config):
    # Processes the tests start (train_net.py, tools/*.py, `python -c`) import this checkout's
    # `atss` and `tests` too, as the tests themselves do through setup.cfg's `pythonpath`, not
    # another copy that happens to be installed.
    paths = [os.path.join(_REPO, "projects", "ATSS"), _REPO]
    inherited = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(paths + ([inherited] if inherited else []))


def pytest_collection_modifyitems(config, items):
    if CUDA_TESTS_DEVICE.startswith("cuda") and not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="CUDA is not available")
        for item in items:
            if item.get_closest_marker("cuda"):
                item.add_marker(skip)


@pytest.fixture
def cuda_device() -> torch.device:
    """The device of a `cuda` test (:data:`CUDA_TESTS_DEVICE`)."""
    return torch.device(CUDA_TESTS_DEVICE)


@pytest.fixture(autouse=True, scope="session")
def _one_intra_op_thread():
    # The tests use small tensors, where intra-op threading costs more than it gains, and CI
    # machines are small and shared: one thread per process is faster and steadier.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
