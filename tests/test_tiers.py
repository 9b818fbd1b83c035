"""The rule that keeps the unit tier (`make test-fast`: ``-m "not slow"``) fast, checked by
tests/conftest.py: a test that starts a process is marked `slow`, or it fails naming the fix.
Run here on small test files in this process (pytest's own ``pytester``)."""

import pytest

pytest_plugins = ["pytester"]

STARTERS = """
import multiprocessing, os, subprocess, sys

import pytest
import torch.multiprocessing


def _work(*args):
    pass


def test_subprocess():
    subprocess.run([sys.executable, "-c", "pass"])


def test_multiprocessing():
    multiprocessing.get_context("spawn").Process(target=_work).start()


def test_torch_spawn():
    torch.multiprocessing.start_processes(_work, nprocs=1, start_method="spawn")


def test_os_system():
    os.system("true")


def test_caught():
    try:
        subprocess.run(["true"])
    except BaseException:
        pass


@pytest.fixture(scope="module")
def started_in_a_fixture():
    subprocess.run(["true"])


def test_module_fixture(started_in_a_fixture):
    pass


def test_no_process():
    pass
"""


@pytest.fixture
def suite(pytester):
    """A folder with this suite's conftest hooks and its markers."""
    pytester.makeconftest(
        "from tests.conftest import pytest_runtest_call, pytest_runtest_setup, "
        "pytest_runtest_teardown  # noqa: F401"
    )
    pytester.makeini("[pytest]\nmarkers =\n    slow: a slow test\n")
    return pytester


def test_an_unmarked_test_that_starts_a_process_fails_naming_the_marker(suite):
    """Each way of starting a process fails its test with the fix (the marker), also when the
    test catches the failure or a module fixture starts it; a test that starts none passes.
    Fails if the check misses a way (torch's spawn, multiprocessing, os.system), lets a caught
    failure pass, or runs only around the test function."""
    suite.makepyfile(test_starters=STARTERS)
    result = suite.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=5, errors=1)
    out = result.stdout.str()
    for what in ("subprocess", "multiprocessing", "os.system"):
        assert f"starts a process ({what}) but is not marked slow: add @pytest.mark.slow" in out
    assert "test_starters.py::test_module_fixture starts a process (subprocess)" in out


@pytest.mark.slow
def test_a_slow_test_may_start_processes(suite):
    """The same tests marked `slow` pass. Fails if the check refuses slow tests too."""
    suite.makepyfile(test_starters="import pytest\npytestmark = pytest.mark.slow\n" + STARTERS)
    suite.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=7)
