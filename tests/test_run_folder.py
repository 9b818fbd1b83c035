"""A run folder that stands alone (issue 27.3): train ~20 iterations on a tiny COCO folder,
delete the data, then from the run folder alone predict tiled on a 2k mosaic (demo.py --run,
and eager vs ONNX Runtime), export to ONNX with model.json in the user's ids, and evaluate."""

import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
from detectron2.data.detection_utils import read_image

import train_net
from atss.engine.config import load_config
from atss.engine.predictor import ATSSPredictor
from atss.inference.onnx_runtime import OnnxPredictor
from tests.atss_testing import coco_json_overrides, write_coco_example

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/Custom/atss_MNV2_FPN_coco_json.py"
SMALL = [  # as tests/test_own_data.py: small inputs, detections even after a short run
    "dataloader.train.mapper.augmentations.0.short_edge_length=[96,128]",
    "dataloader.test.mapper.augmentations.0.short_edge_length=96",
    "model.test_score_thresh=0.001",
    "model.test_topk_candidates=50",
    "train.checkpointer.period=1000",
    "train.log_period=5",
]
MOSAIC = 2048
TILE, OVERLAP = 512, 64
ATOL = 1e-4  # tests/test_export.py's ONNX tolerance


def _mosaic(image_root, files):
    """A 2048 x 2048 RGB image of the example's images side by side (96-pixel cells)."""
    cells = [read_image(os.path.join(image_root, f), format="RGB") for f in files]
    mosaic = np.zeros((MOSAIC, MOSAIC, 3), np.uint8)
    for k, (y, x) in enumerate((y, x) for y in range(0, MOSAIC, 96) for x in range(0, MOSAIC, 96)):
        cell = cells[k % len(cells)][: MOSAIC - y, : MOSAIC - x]
        mosaic[y : y + cell.shape[0], x : x + cell.shape[1]] = cell
    return mosaic


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(run folder, work folder with mosaic.png): trained 20 iterations, then
    the training data deleted."""
    work = tmp_path_factory.mktemp("standalone")
    data = write_coco_example(str(work / "data"), 8, 3, size=(64, 96))
    files = sorted(os.listdir(data["image_root"]))
    mosaic = _mosaic(data["image_root"], files)
    cv2.imwrite(str(work / "mosaic.png"), mosaic[:, :, ::-1])
    folder = str(work / "run")
    argv = ["--config-file", CONFIG, *coco_json_overrides(data), *SMALL]
    argv += ["train.max_iter=20", f"train.output_dir={folder}"]
    train_net.main(train_net.default_argument_parser().parse_args(argv))
    shutil.rmtree(work / "data")
    return folder, work


def _cli(*argv, cwd=ROOT, env=None):
    return subprocess.run(
        [sys.executable, *argv], cwd=cwd, capture_output=True, text=True, timeout=900, env=env
    )


def _predictor(folder, cls=ATSSPredictor):
    cfg = load_config(
        os.path.join(folder, "config.yaml"),
        [f"train.init_checkpoint={os.path.join(folder, 'model_final.pth')}"],
    )
    return cls(cfg)


def _assert_same(a, b, box_scale=1.0):
    """Same detections: scores within ATOL, boxes within ATOL in the model's input pixels
    (``box_scale`` image pixels per input pixel), same classes. Matched one to one, not by
    rank: detections whose scores differ by less than the tolerance may sort either way."""
    assert len(a) == len(b) > 0
    close = (
        (a.pred_classes[:, None] == b.pred_classes[None, :])
        & ((a.scores[:, None] - b.scores[None, :]).abs() <= ATOL)
        & (
            (a.pred_boxes.tensor[:, None, :] - b.pred_boxes.tensor[None, :, :]).abs().amax(-1)
            <= ATOL * box_scale
        )
    )
    # a permutation: each detection has exactly one counterpart (NMS leaves no two boxes of a
    # class this close, so a second candidate would be a real difference)
    assert (close.sum(dim=1) == 1).all() and (close.sum(dim=0) == 1).all()


def test_the_run_folder_names_its_classes(run):
    """After training, train.output_dir holds config.yaml, model_final.pth and classes.json with
    the train JSON's ids (3, 7) and names. Fails if the train loop does not write classes.json."""
    folder, _ = run
    assert {"config.yaml", "model_final.pth", "classes.json"} <= set(os.listdir(folder))
    with open(os.path.join(folder, "classes.json")) as f:
        assert [(c["id"], c["name"]) for c in json.load(f)["classes"]] == [
            (3, "rectangle"),
            (7, "ellipse"),
        ]


def test_demo_runs_tiled_from_the_run_folder_alone(run):
    """demo.py --run RUN on the 2k mosaic, tiled, without the training data: exit 0, class
    names from the run's classes.json, the drawing written. Fails if loading the run's config
    still needs dataset.train ('give dataset.train.json_file=PATH') or the names are lost."""
    folder, work = run
    out = str(work / "demo")
    result = _cli(
        "demo.py", "--run", folder, "--input", str(work / "mosaic.png"), "--output", out,
        "--tile-size", str(TILE), "--tile-overlap", str(OVERLAP), "--confidence-threshold", "0.01",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "class names: 2 (rectangle, ellipse, ...)" in result.stdout + result.stderr
    assert os.path.isfile(os.path.join(out, "mosaic.png"))


def test_tiled_onnx_runtime_matches_tiled_eager_from_the_run_folder(run):
    """The run's model on 512-pixel tiles of the 2k mosaic in ONNX Runtime (exported from the
    run folder) gives the eager tiled detections: scores within 1e-4, boxes within 1e-4 of the
    model's input pixels (each tile is resized 512 -> 96, so 5.3e-4 mosaic pixels; float32 at
    ~2000 px is itself 1.2e-4 apart)."""
    folder, work = run
    mosaic = read_image(str(work / "mosaic.png"), format="RGB")
    eager, onnx = _predictor(folder), _predictor(folder, OnnxPredictor)
    for predictor in (eager, onnx):
        predictor.tile(TILE, OVERLAP)
    _assert_same(onnx(mosaic).to("cpu"), eager(mosaic).to("cpu"), box_scale=TILE / 96)


def test_export_of_the_run_folder_writes_model_json_with_its_classes(run):
    """tools/export_model.py --run RUN --format onnx writes model.onnx and model.json with the
    run's ids and names, RGB, 0-255 and the run's test resize 96/853 (tests/test_readme.py runs
    the README's onnxruntime snippet on such an export). Fails if model.json lacks or misstates
    the resize, channel order or classes (ids 0/1)."""
    folder, work = run
    export = work / "export"
    result = _cli("tools/export_model.py", "--run", folder, "--format", "onnx",
                  "--output", str(export), "--sample-size", "96", "144")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    with open(export / "model.json") as f:
        info = json.load(f)
    assert info["classes"] == [{"id": 3, "name": "rectangle"}, {"id": 7, "name": "ellipse"}]
    assert info["test_resize"] == {"short_edge": 96, "max_size": 853}
    assert (info["input_format"], info["pixel_range"]) == ("RGB", [0, 255])
    assert info["model"] == "model.onnx" and info["input_names"] == ["image0"]


def test_eval_only_on_another_dataset_from_the_run_folder(run):
    """train_net.py --eval-only with the run's config.yaml on another dataset (same categories)
    after the training data are gone: COCOEvaluator results in that JSON's ids (3, 7). Fails if
    --eval-only still reads the deleted dataset.train."""
    folder, work = run
    other = write_coco_example(str(work / "other"), 1, 3, size=(64, 96), seed=5)
    out = str(work / "eval_other")
    argv = ["--config-file", os.path.join(folder, "config.yaml"), "--eval-only"]
    argv += [f"train.init_checkpoint={os.path.join(folder, 'model_final.pth')}"]
    argv += [f"dataset.test.json_file={other['val_json']}"]
    argv += [f"dataset.test.image_root={other['image_root']}", f"train.output_dir={out}"]
    results = train_net.main(train_net.default_argument_parser().parse_args(argv))
    assert {"AP-rectangle", "AP-ellipse"} <= set(results["bbox"])
    with open(os.path.join(out, "inference", "coco_instances_results.json")) as f:
        detections = json.load(f)
    assert detections and {d["category_id"] for d in detections} <= {3, 7}


def test_eval_only_from_the_run_folder_keeps_the_run_config(run):
    """--eval-only with RUN/config.yaml and no train.output_dir (so the run folder) evaluates
    into RUN/eval and leaves RUN/config.yaml as training wrote it. Fails if default_setup is
    let rewrite the run's config with the evaluation's."""
    folder, work = run
    other = write_coco_example(str(work / "other2"), 1, 2, size=(64, 96), seed=6)
    config = os.path.join(folder, "config.yaml")
    with open(config) as f:
        saved = f.read()
    argv = ["--config-file", config, "--eval-only"]
    argv += [f"train.init_checkpoint={os.path.join(folder, 'model_final.pth')}"]
    argv += [f"dataset.test.json_file={other['val_json']}"]
    argv += [f"dataset.test.image_root={other['image_root']}"]
    train_net.main(train_net.default_argument_parser().parse_args(argv))
    with open(config) as f:
        assert f.read() == saved
    assert os.path.isfile(os.path.join(folder, "eval", "inference", "coco_instances_results.json"))


def _tiled_evaluation(folder, work, name, *flags):
    """--eval-only of the run on another dataset, on 48-pixel tiles (overlap 16) of its 64 x 96
    images (each tile resized to the config's 96): (results, detections of the JSON)."""
    other = write_coco_example(str(work / "tiled_other"), 1, 3, size=(64, 96), seed=7)
    out = str(work / name)
    argv = ["--config-file", os.path.join(folder, "config.yaml"), "--eval-only", *flags]
    argv += [f"train.init_checkpoint={os.path.join(folder, 'model_final.pth')}"]
    argv += [f"dataset.test.json_file={other['val_json']}", f"train.output_dir={out}"]
    argv += [f"dataset.test.image_root={other['image_root']}"]
    argv += ["test.tile.size=48", "test.tile.overlap=16"]
    results = train_net.main(train_net.default_argument_parser().parse_args(argv))
    with open(os.path.join(out, "inference", "coco_instances_results.json")) as f:
        return results, json.load(f)


def test_tiled_evaluation_on_onnx_runtime_gives_the_eager_evaluation(run):
    """train_net.py --eval-only --runtime onnxruntime with test.tile.*: the same detections as
    the eager tiled evaluation (per image, in score order: the same classes, scores within 1e-4,
    boxes within 1e-3 pixels, XYWH), the
    same AP to 1e-3, in the JSON's ids. Fails if --runtime is ignored by the evaluation (the
    export is not made) or the ONNX model is run without the tiles."""
    folder, work = run
    eager_results, eager = _tiled_evaluation(folder, work, "eval_tiled_eager")
    onnx_results, onnx = _tiled_evaluation(
        folder, work, "eval_tiled_ort", "--runtime", "onnxruntime"
    )
    assert any(f.endswith(".onnx") for f in os.listdir(folder)), "no ONNX export was made"
    assert len(onnx) == len(eager) > 0
    assert {d["category_id"] for d in onnx} <= {3, 7}

    def by_image(dets):
        key = lambda d: (d["image_id"], -d["score"])  # noqa: E731
        return sorted(dets, key=key)

    for got, want in zip(by_image(onnx), by_image(eager)):
        assert (got["image_id"], got["category_id"]) == (want["image_id"], want["category_id"])
        assert abs(got["score"] - want["score"]) <= ATOL
        np.testing.assert_allclose(got["bbox"], want["bbox"], atol=1e-3, rtol=0)  # XYWH px
    for key, value in eager_results["bbox"].items():
        if not np.isnan(value):
            assert abs(onnx_results["bbox"][key] - value) <= 1e-3, key
