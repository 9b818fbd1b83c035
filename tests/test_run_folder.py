"""A run folder that stands alone (issue 27.3): the example run (tests/conftest.py), whose
training data are gone, predicts tiled on a mosaic (demo.py --run), exports to ONNX with
model.json in the user's ids, and evaluates another dataset, tiled, eagerly and in ONNX
Runtime."""

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import onnxruntime
import pytest
from detectron2.data.detection_utils import read_image

import train_net
from atss.engine.cli import parse_launch_args
from atss.export import OUTPUT_NAMES
from atss.inference import onnx_runtime
from tests.atss_testing import ROOT, train_net_args, write_coco_example

pytestmark = pytest.mark.slow

MOSAIC = 1024
TILE, OVERLAP = 512, 64
ATOL = 1e-4  # tests/test_export.py's ONNX tolerance


def _mosaic(image_root):
    """A 1024 x 1024 RGB image of the example's images side by side (96-pixel cells)."""
    files = sorted(os.listdir(image_root))
    cells = [read_image(os.path.join(image_root, f), format="RGB") for f in files]
    mosaic = np.zeros((MOSAIC, MOSAIC, 3), np.uint8)
    for k, (y, x) in enumerate((y, x) for y in range(0, MOSAIC, 96) for x in range(0, MOSAIC, 96)):
        cell = cells[k % len(cells)][: MOSAIC - y, : MOSAIC - x]
        mosaic[y : y + cell.shape[0], x : x + cell.shape[1]] = cell
    return mosaic


def test_the_run_folder_names_its_classes(example_run):
    """After training, train.output_dir holds config.yaml, model_final.pth and classes.json with
    the train JSON's ids (3, 7) and names. Fails if the train loop does not write classes.json."""
    assert {"config.yaml", "model_final.pth", "classes.json"} <= set(os.listdir(example_run.folder))
    with open(os.path.join(example_run.folder, "classes.json")) as f:
        assert [(c["id"], c["name"]) for c in json.load(f)["classes"]] == [
            (3, "rectangle"),
            (7, "ellipse"),
        ]


def test_demo_runs_tiled_from_the_run_folder_alone(example_run, tmp_path):
    """demo.py --run RUN as a user runs it (a process) on a 1k mosaic, tiled, without the
    training data: exit 0, class names from the run's classes.json, the drawing written. Fails
    if loading the run's config still needs dataset.train ('give dataset.train.json_file=PATH')
    or the names are lost."""
    cv2.imwrite(str(tmp_path / "mosaic.png"), _mosaic(example_run.data["image_root"])[:, :, ::-1])
    result = subprocess.run(
        [sys.executable, "demo.py", "--run", example_run.folder, "--input", tmp_path / "mosaic.png",
         "--output", tmp_path / "demo", "--tile-size", str(TILE), "--tile-overlap", str(OVERLAP),
         "--confidence-threshold", "0.5"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "class names: 2 (rectangle, ellipse, ...)" in result.stdout + result.stderr
    assert os.path.isfile(tmp_path / "demo" / "mosaic.png")


def test_export_of_the_run_folder_writes_model_json_and_a_model_for_onnxruntime(
    example_run, example_export
):
    """tools/export_model.py --run RUN --format onnx (traced at 128 x 160) writes model.json with
    the run's ids and names, RGB, 0-255 and the run's test resize 96/853 (tests/test_readme.py
    runs the README's onnxruntime snippet on this export), and model.onnx, which runs in
    onnxruntime at another size and returns per image boxes (N, 4), classes, scores and the
    image size, under the output names model.json gives; the script says how to run it. Fails
    if model.json lacks or misstates the resize, channel order, classes (ids 0/1) or names, if
    the traced size is frozen into the graph, or the script's instructions change."""
    export = os.path.join(example_run.folder, "export")
    with open(os.path.join(export, "model.json")) as f:
        info = json.load(f)
    assert info["classes"] == [{"id": 3, "name": "rectangle"}, {"id": 7, "name": "ellipse"}]
    assert info["test_resize"] == {"short_edge": 96, "max_size": 853}
    assert (info["input_format"], info["pixel_range"]) == ("RGB", [0, 255])
    assert info["model"] == "model.onnx" and info["input_names"] == ["image0"]
    assert "onnxruntime.InferenceSession" in example_export.stdout
    session = onnxruntime.InferenceSession(os.path.join(export, "model.onnx"))
    assert [o.name for o in session.get_outputs()] == [n + "0" for n in OUTPUT_NAMES]
    image = (np.random.default_rng(0).random((3, 96, 144)) * 255).astype(np.float32)
    boxes, classes, scores, image_size = session.run(None, {"image0": image})
    assert boxes.shape[1] == 4 and len(boxes) == len(classes) == len(scores) > 0
    assert image_size.tolist() == [96, 144]


def test_eval_only_on_another_dataset_from_the_run_folder(example_run, tmp_path):
    """train_net.py --run RUN --eval-only (docs/own_data.md's command) on another dataset (same
    categories) after the training data are gone: COCOEvaluator results in that JSON's ids
    (3, 7). Fails if --eval-only still reads the deleted dataset.train."""
    other = write_coco_example(str(tmp_path / "other"), 1, 3, size=(64, 96), seed=5)
    out = str(tmp_path / "eval_other")
    argv = ["--run", example_run.folder, "--eval-only"]
    argv += [f"dataset.test.json_file={other['val_json']}"]
    argv += [f"dataset.test.image_root={other['image_root']}", f"train.output_dir={out}"]
    results = train_net.main(parse_launch_args(train_net.default_argument_parser(), argv))
    assert {"AP-rectangle", "AP-ellipse"} <= set(results["bbox"])
    with open(os.path.join(out, "inference", "coco_instances_results.json")) as f:
        detections = json.load(f)
    assert detections and {d["category_id"] for d in detections} <= {3, 7}


def test_eval_only_from_the_run_folder_keeps_the_run_config(example_run, tmp_path):
    """--eval-only with RUN/config.yaml and no train.output_dir (so the run folder) evaluates
    into RUN/eval and leaves RUN/config.yaml as training wrote it. Fails if default_setup is
    let rewrite the run's config with the evaluation's."""
    other = write_coco_example(str(tmp_path / "other"), 1, 2, size=(64, 96), seed=6)
    with open(example_run.config) as f:
        saved = f.read()
    args = train_net_args(
        example_run.config,
        f"train.init_checkpoint={example_run.weights}",
        f"dataset.test.json_file={other['val_json']}",
        f"dataset.test.image_root={other['image_root']}",
        eval_only=True,
    )
    train_net.main(args)
    with open(example_run.config) as f:
        assert f.read() == saved
    results = os.path.join(example_run.folder, "eval", "inference", "coco_instances_results.json")
    assert os.path.isfile(results)


def _tiled_evaluation(example_run, data, out, *flags):
    """--eval-only of the run on ``data``, on 48-pixel tiles (overlap 16) of its 64 x 96
    images (each tile resized to the config's 96): (results, detections of the JSON)."""
    args = train_net_args(
        example_run.config,
        *flags,
        f"train.init_checkpoint={example_run.weights}",
        f"dataset.test.json_file={data['val_json']}",
        f"dataset.test.image_root={data['image_root']}",
        f"train.output_dir={out}",
        "test.tile.size=48",
        "test.tile.overlap=16",
        eval_only=True,
    )
    results = train_net.main(args)
    with open(os.path.join(out, "inference", "coco_instances_results.json")) as f:
        return results, json.load(f)


def test_tiled_evaluation_on_onnx_runtime_gives_the_eager_evaluation(
    example_run, tmp_path, monkeypatch
):
    """train_net.py --eval-only --runtime onnxruntime with test.tile.* (2 tiles a call): the ONNX
    model runs (OnnxDetector under TiledDetector) and gives the eager tiled evaluation's
    detections (per image, in score order: the same classes, scores within 1e-4, boxes within
    1e-3 pixels, XYWH) and the same AP to 1e-3, in the JSON's ids. The one test of tiled ONNX
    Runtime against tiled eager. Fails if --runtime is ignored by the evaluation, if the ONNX
    runner ignores a tile's height/width (boxes left at the resized tile's scale), or if it
    drops tiles of a call."""
    data = write_coco_example(str(tmp_path / "other"), 1, 3, size=(64, 96), seed=7)
    eager_results, eager = _tiled_evaluation(example_run, data, tmp_path / "eager")
    ran = []
    forward = onnx_runtime.OnnxDetector.forward
    monkeypatch.setattr(
        onnx_runtime.OnnxDetector, "forward", lambda self, x: ran.append(len(x)) or forward(self, x)
    )
    onnx_results, onnx = _tiled_evaluation(
        example_run, data, tmp_path / "ort", "--runtime", "onnxruntime", "test.tile.batch_size=2"
    )
    assert ran, "the evaluation did not run the ONNX model"
    assert len(onnx) == len(eager) > 0
    assert {d["category_id"] for d in onnx} <= {3, 7}

    def by_image(dets):
        return sorted(dets, key=lambda d: (d["image_id"], -d["score"]))

    for got, want in zip(by_image(onnx), by_image(eager)):
        assert (got["image_id"], got["category_id"]) == (want["image_id"], want["category_id"])
        assert abs(got["score"] - want["score"]) <= ATOL
        np.testing.assert_allclose(got["bbox"], want["bbox"], atol=1e-3, rtol=0)  # XYWH px
    for key, value in eager_results["bbox"].items():
        if not np.isnan(value):
            assert abs(onnx_results["bbox"][key] - value) <= 1e-3, key
