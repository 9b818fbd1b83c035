"""scripts/gpu_check.sh: the tests marked `cuda` as a table, its exit status, and the CPU run of
those tests that keeps their code working on machines without a GPU."""

import glob
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow  # each test runs the script (bash, pytest) in a process

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "gpu_check.sh")


def _run(tmp_path, *args, device=None):
    # CUDA_VISIBLE_DEVICES="" hides any GPU, so this holds on GPU machines too; TMPDIR shows
    # whether the tests started (the report's folder is made only then). ATSS_PYTHON: the
    # interpreter of this test run (a checkout without .venv, or another stack's venv).
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TMPDIR": str(tmp_path)}
    env["ATSS_PYTHON"] = sys.executable
    env.pop("ATSS_CUDA_TESTS_DEVICE", None)
    if device:
        env["ATSS_CUDA_TESTS_DEVICE"] = device
    return subprocess.run(
        ["bash", SCRIPT, *args], env=env, capture_output=True, text=True, timeout=1800
    )


def _table(stdout):
    """{test: (outcome, detail)} from the table the script prints last."""
    rows = stdout.split("| detail", 1)[1].splitlines()[2:]
    cells = [[c.strip() for c in row.split("|")] for row in rows if row.strip()]
    return {c[0]: (c[1], c[3]) for c in cells}


def test_without_cuda_it_says_so_and_exits_0_having_run_nothing(tmp_path):
    """Fails if the script runs tests (on the CPU, or crashing) or exits non-zero without
    CUDA, which would keep it from sitting in a CPU machine's routine."""
    proc = _run(tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("gpu_check: CUDA is not available here (torch ")
    assert proc.stdout.strip().endswith("skipped every check, nothing was run.")
    assert os.listdir(tmp_path) == []


FAKE_TESTS = """
import pytest


@pytest.mark.cuda
def test_passes(record_property):
    record_property("detail", "12.5 ms, peak +3 MiB")


@pytest.mark.cuda
def test_fails():
    assert 1 + 1 == 3, "the device disagrees"


@pytest.mark.cuda
def test_skips():
    pytest.skip("needs 2 CUDA GPUs")


def test_not_marked():
    pass
"""


def test_the_table_shows_each_outcome_and_a_failure_makes_the_status_non_zero(tmp_path):
    """Only `cuda` tests run; the table has each with its outcome and detail (the recorded
    property, the skip reason); a failed test makes the exit status non-zero, and without one
    it is 0. Fails if the table drops a failure or the status hides it."""
    tests = tmp_path / "cases" / "test_fake.py"
    tests.parent.mkdir()
    tests.write_text(textwrap.dedent(FAKE_TESTS))
    proc = _run(tmp_path, str(tests), device="cpu")
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert _table(proc.stdout) == {
        "test_fake::test_passes": ("passed", "12.5 ms, peak +3 MiB"),
        "test_fake::test_fails": ("FAILED", "AssertionError: the device disagrees"),
        "test_fake::test_skips": ("skipped", "needs 2 CUDA GPUs"),
    }
    proc = _run(tmp_path, str(tests), "-k", "not fails", device="cpu")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_every_cuda_test_passes_against_the_cpu(tmp_path):
    """The `cuda` tests with ATSS_CUDA_TESTS_DEVICE=cpu: each runs its code (the CPU compared
    with itself, AMP as bf16 autocast, no NCCL) and passes, the 2-GPU one is skipped. Catches a
    broken call in a test that otherwise only runs on a GPU machine, and a `cuda` test that goes
    missing. Run on the test files that mark any (collecting the others costs time, not tests)."""
    files = [
        path
        for path in glob.glob(os.path.join(ROOT, "tests", "**", "test_*.py"), recursive=True)
        if "pytest.mark.cuda" in open(path).read()
    ]
    proc = _run(tmp_path, *files, device="cpu")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    outcomes = {name: outcome for name, (outcome, _) in _table(proc.stdout).items()}
    assert outcomes == {
        "test_matcher::test_cuda_equals_cpu_on_the_random_cases": "passed",
        "test_matcher::test_cuda_equals_cpu_with_thousands_of_gts[1000]": "passed",
        "test_matcher::test_cuda_equals_cpu_with_thousands_of_gts[5000]": "passed",
        "test_configs::test_r50_config_trains_with_amp_on_cuda": "passed",
        "test_meta_arch::test_detections_on_cuda_equal_those_on_the_cpu": "passed",
        "test_meta_arch::test_amp_on_the_device_finds_the_fp32_detections": "passed",
        "test_export::test_exports_made_on_cuda_match_eager": "passed",
        "test_train_net::test_two_gpus_with_nccl_and_amp_train_and_evaluate": "skipped",
        "test_train_net::test_amp_trains_and_evaluates_on_the_device": "passed",
    }
