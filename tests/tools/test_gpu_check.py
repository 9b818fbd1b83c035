"""scripts/gpu_check.sh: without CUDA it says so and exits 0 having run nothing; its runner
turns any failed check into a non-zero exit; a CPU smoke run exercises every check's code."""

import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "gpu_check.sh")
CHECKS = ["matcher_random", "amp_training", "inference", "export", "nccl_2gpu"]


def _gpu_check_module():
    spec = importlib.util.spec_from_file_location(
        "_gpu_check", os.path.join(ROOT, "tools", "gpu_check.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(tmp_path, *args):
    # CUDA_VISIBLE_DEVICES="" hides any GPU, so this holds on GPU machines too; TMPDIR shows
    # whether a check started (the checks' work folder is created only then). ATSS_PYTHON: the
    # interpreter of this test run (a checkout without .venv, or another stack's venv).
    env = {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": "",
        "TMPDIR": str(tmp_path),
        "ATSS_PYTHON": sys.executable,
    }
    return subprocess.run(
        ["bash", SCRIPT, *args], env=env, capture_output=True, text=True, timeout=1800
    )


def test_without_cuda_it_says_so_and_exits_0_having_run_nothing(tmp_path):
    """Fails if the script runs checks (on the CPU, or crashing) or exits non-zero without
    CUDA, which would keep it from sitting in the repository."""
    proc = _run(tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "CUDA is not available here" in proc.stdout
    assert "skipped every check, nothing was run" in proc.stdout
    assert "[ok]" not in proc.stdout and "| result" not in proc.stdout
    assert os.listdir(tmp_path) == []


def test_any_failed_check_makes_the_exit_status_non_zero(monkeypatch, capsys, tmp_path):
    """The runner catches a check's exception, reports it in the table and main() returns 1;
    with only passing or skipped checks it returns 0."""
    gpu_check = _gpu_check_module()
    monkeypatch.setattr(gpu_check.tempfile, "tempdir", str(tmp_path))  # its work folder

    def broken(device, num_cases):
        raise gpu_check.CheckFailed("seed 3 (grid): 2 anchors differ")

    monkeypatch.setattr(gpu_check, "check_matcher_random_cases", broken)
    others = ["--skip", *CHECKS[1:], "--gts"]
    assert gpu_check.main(["--device", "cpu", *others]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] matcher_random" in out and "2 anchors differ" in out
    assert "FAILED: matcher_random" in out

    monkeypatch.setattr(gpu_check, "check_matcher_random_cases", lambda device, n: "fine")
    assert gpu_check.main(["--device", "cpu", *others]) == 0
    out = capsys.readouterr().out
    assert "matcher_random | ok" in out and "export         | skipped" in out
    assert "all checks passed" in out


@pytest.mark.slow
def test_cpu_smoke_run_passes_every_check(tmp_path):
    """Every check's code runs (against the CPU, at small sizes) and passes: catches a broken
    API call in a path that otherwise only runs on a GPU machine."""
    proc = _run(tmp_path, "--device", "cpu", "--cases", "2", "--gts", "100", "--steps", "1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = proc.stdout.split("| detail", 1)[1]
    for name in ["matcher_random", "matcher_100_gts", "amp_training", "inference", "export"]:
        assert f"{name} | ok" in " ".join(table.split()), name
    assert "nccl_2gpu" in table and "skipped" in table
