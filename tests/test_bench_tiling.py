"""Smoke test of tools/bench_tiling.py: every mode runs in its own process and reports."""

import json
import subprocess
import sys


def test_bench_tiling_reports_every_mode_at_a_small_size(tmp_path):
    """tools/bench_tiling.py at 384 px, every mode (the demo end to end on an .npy it writes
    first, on both runtimes; tiled evaluation through train_net's main on the .npy, on a PNG,
    and on a PNG with Detectron2's mapper): one row each with a peak RSS not below the RSS
    before, seconds and a detection count, in the printed table and the JSON. Fails if a
    mode's child errors (a row with "failed") or a mode loses its mosaic."""
    out = tmp_path / "rows.json"
    cmd = [sys.executable, "tools/bench_tiling.py", "--sizes", "384", "--tile-size", "256"]
    modes = ["tiled", "untiled", "demo", "eval-npy", "eval-png", "eval-png-d2mapper"]
    cmd += ["--modes", *modes, "--runtimes", "eager", "onnxruntime", "--json", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads(out.read_text())
    cases = [(r["mode"], r["runtime"]) for r in rows]
    assert cases == [
        ("tiled", "eager"),
        ("untiled", "eager"),
        ("demo", "eager"),
        ("demo", "onnxruntime"),
        ("eval-npy", "eager"),
        ("eval-png", "eager"),
        ("eval-png-d2mapper", "eager"),
    ], rows
    for r in rows:
        assert "failed" not in r, r
        assert r["size"] == 384 and r["peak_MB"] >= r["rss_before_MB"] > 0
        assert r["seconds"] >= 0 and r["dets"] >= 0
    assert sum(line.strip().startswith("384") for line in run.stdout.splitlines()) == 7
