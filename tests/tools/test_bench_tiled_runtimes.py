"""tools/bench_tiled_runtimes.py: eager vs ONNX Runtime on tiles, interleaved."""

import re

from tests.atss_testing import load_script

main = load_script("tools/bench_tiled_runtimes.py").main


def test_reports_both_runtimes_per_round_and_their_agreement(capsys):
    """One line per runtime and round with seconds and Mpx/s, the per-round ratio, and the
    detections of the two runtimes compared: equal counts, each box within the export tolerance
    of a box of its class. Fails if the two predictors are different models (e.g. unseeded
    random weights) or the ONNX runner is not the one tiled."""
    main(["--size", "320", "--tile-size", "192", "--tile-overlap", "32", "--rounds", "1"]
         + ["--threads", "1", "--random-weights", "model.test_score_thresh=0.005"])  # fmt: skip
    out = capsys.readouterr().out
    assert re.search(r"round 1 +eager: +[\d.]+ s +[\d.]+ Mpx/s", out), out
    assert re.search(r"round 1 onnxruntime: +[\d.]+ s +[\d.]+ Mpx/s", out), out
    found = re.search(r"detections: (\d+) each, box gap (\S+) px", out)
    assert found and int(found.group(1)) > 0, out
    assert float(found.group(2)) < 1e-3, out
