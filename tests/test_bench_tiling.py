"""Smoke test of tools/bench_tiling.py: every mode runs in its own process and reports."""

import json
import subprocess
import sys


def test_bench_tiling_reports_every_mode_at_a_small_size(tmp_path):
    """tools/bench_tiling.py at 384 px, modes tiled, untiled and demo (the demo end to end on
    an .npy it writes first): one row each with a peak RSS not below the RSS before, seconds
    and a detection count, in the printed table and the JSON. Fails if a mode's child errors
    (a row with "failed") or the demo mode loses its mosaic."""
    out = tmp_path / "rows.json"
    cmd = [sys.executable, "tools/bench_tiling.py", "--sizes", "384", "--tile-size", "256"]
    cmd += ["--modes", "tiled", "untiled", "demo", "--json", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [r["mode"] for r in rows] == ["tiled", "untiled", "demo"], rows
    for r in rows:
        assert "failed" not in r, r
        assert r["size"] == 384 and r["peak_MB"] >= r["rss_before_MB"] > 0
        assert r["seconds"] >= 0 and r["dets"] >= 0
    assert sum(line.strip().startswith("384") for line in run.stdout.splitlines()) == 3
