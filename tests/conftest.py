"""Suite-wide settings, and the rule that keeps the unit tier fast: a test that starts a
process is marked `slow` (docs/testing.md)."""

import contextlib
import multiprocessing.process
import os
import platform
import subprocess
import sys

import numpy.testing  # noqa: F401
import pytest
import torch
import torch.utils.cpp_extension  # noqa: F401

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Where the tests marked `cuda` run (scripts/gpu_check.sh): CUDA, where they are skipped when it
# is absent; ATSS_CUDA_TESTS_DEVICE=cpu runs them against the CPU (the CPU compared with itself,
# AMP as bf16 autocast, without NCCL), so that their code runs on a machine without a GPU too.
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


# Library code that starts a process once, when first imported or called, runs here, before
# the tests: numpy.testing (`lscpu`), torch.utils.cpp_extension (`hipconfig`, imported by
# Detectron2's default_setup) and platform.processor (`uname -p`, cached).
platform.processor()

# What starts a process: subprocess (and so os.popen), multiprocessing (and so torch's spawn,
# Detectron2's launch and DataLoader workers, which start multiprocessing processes), os.fork
# and os.system.
_PROCESS_STARTERS = [
    (subprocess.Popen, "_execute_child", "subprocess"),
    (multiprocessing.process.BaseProcess, "start", "multiprocessing"),
    (os, "fork", "os.fork"),
    (os, "system", "os.system"),
]


def _not_slow(item, what):
    return (
        f"{item.nodeid} starts a process ({what}) but is not marked slow: add "
        "@pytest.mark.slow (the unit tier starts no process: docs/testing.md)"
    )


@contextlib.contextmanager
def _processes_refused(item):
    """While ``item`` (a test not marked `slow`) runs a phase, whatever starts a process fails
    the test naming the fix; yields the list of what did (a test may catch the failure)."""
    started = []

    def refuse(what):
        def start(*args, **kwargs):
            started.append(what)
            pytest.fail(_not_slow(item, what))

        return start

    with pytest.MonkeyPatch.context() as patch:
        for owner, name, what in _PROCESS_STARTERS:
            patch.setattr(owner, name, refuse(what))
        yield started


def _run_phase(item):
    if item.get_closest_marker("slow"):
        return (yield)
    with _processes_refused(item) as started:
        result = yield
    if started:  # the test caught the failure: fail it all the same
        pytest.fail(_not_slow(item, started[0]))
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    return (yield from _run_phase(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    return (yield from _run_phase(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item):
    return (yield from _run_phase(item))


@pytest.fixture(scope="session")
def example_run(tmp_path_factory):
    """The run folder the end-to-end tests share (:class:`tests.atss_testing.ExampleRun`),
    trained once per test run. Tests write into their own folders; into the run's, only its
    ONNX exports (:func:`example_export`, the ONNX Runtime cache beside the weights) and the
    evaluation --eval-only writes into RUN/eval by default."""
    from tests.atss_testing import train_example_run

    return train_example_run(str(tmp_path_factory.mktemp("example_run")))


@pytest.fixture(scope="session")
def example_export(example_run):
    """``tools/export_model.py --run RUN --format onnx`` on the example run, as a user runs it
    (a process, traced at 128 x 160), into ``RUN/export`` (where the README's ONNX snippet reads
    it); the completed process."""
    argv = ["tools/export_model.py", "--run", example_run.folder, "--format", "onnx"]
    argv += ["--output", os.path.join(example_run.folder, "export"), "--sample-size", "128", "160"]
    export = subprocess.run(
        [sys.executable, *argv], cwd=_REPO, capture_output=True, text=True, timeout=900
    )
    assert export.returncode == 0, export.stderr[-3000:]
    return export
