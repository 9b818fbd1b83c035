"""Suite-wide settings."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_intra_op_thread():
    # The tests use small tensors, where intra-op threading costs more than it gains, and CI
    # machines are small and shared: one thread per process is faster and steadier.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
