"""tools/bench_onnx_tile_batch.py: ONNX Runtime with 1 vs N tiles per call, interleaved."""

import re

from tests.atss_testing import load_script

main = load_script("tools/bench_onnx_tile_batch.py").main


def test_reports_seconds_per_tile_and_the_same_detections_for_each_batch(capsys):
    """One line per batch size with seconds per tile and the speed against batch 1, and the
    batch-2 export's detections tile by tile equal to batch 1's (counts equal, values within
    the export tolerance 1e-4). Fails if the batched export pairs outputs with the wrong tiles
    or the timing lines are missing."""
    main(["--tile-size", "128", "--batches", "1", "2", "--tiles", "4", "--rounds", "2",
          "--threads", "1", "model.test_score_thresh=0.0"])  # fmt: skip
    out = capsys.readouterr().out
    for batch in (1, 2):
        assert re.search(rf"batch {batch}: [\d.]+ s/tile .*speed vs batch 1: [\d.]+x", out), out
    found = re.search(r"batch 2: detections vs batch 1: same counts \((\d+) in all\), max "
                      r"\|difference\| (\S+)", out)  # fmt: skip
    assert found and int(found.group(1)) > 0, out
    assert float(found.group(2)) < 1e-4, out
