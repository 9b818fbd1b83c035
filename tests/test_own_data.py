"""Own data end to end: a COCO-format folder (JSON + PNG, two classes with ids 3 and 7, grey and
colour images) given on the command line to configs/Custom/atss_MNV2_FPN_coco_json.py, through
every entry point: validate, train + evaluate (the example run of tests/conftest.py),
--eval-only, demo, export (training in 2 processes: tests/test_multi_machine.py)."""

import json
import logging
import os

import pytest
import torch

import train_net
from atss.export import OUTPUT_NAMES
from tests.atss_testing import (
    EXAMPLE_CONFIG,
    coco_json_overrides,
    load_script,
    run_script,
    train_net_args,
    write_coco_example,
)


def test_validate_dataset_reads_the_config_overrides(tmp_path, capsys):
    """tools/validate_dataset.py with the config and the same overrides checks (and decodes)
    both splits: exit 0; a bad image root is reported with the key: exit 1. Fails if the
    overrides are taken for dataset names, the datasets are not registered from the config, or
    the script's exit status loses the result."""
    data = coco_json_overrides(write_coco_example(str(tmp_path), 8, 3, size=(64, 96)))
    ok = run_script("tools/validate_dataset.py", "--config-file", EXAMPLE_CONFIG, "--decode", *data)
    out = capsys.readouterr().out
    assert ok == 0, out
    assert "custom_train: 8 images read, 0 unusable" in out
    assert "custom_test: 3 images read, 0 unusable" in out
    bad = data[:3] + ["dataset.test.image_root=/nonexistent"]
    assert run_script("tools/validate_dataset.py", "--config-file", EXAMPLE_CONFIG, *bad) == 1
    assert "dataset.test.image_root=/nonexistent" in capsys.readouterr().out


@pytest.mark.slow
def test_trains_and_evaluates_in_the_json_category_ids(example_run):
    """Training ends with a COCOEvaluator pass over all 3 test images whose detections carry
    the JSON's category ids (3 and 7), not the contiguous 0/1 or 1/2. Fails if the evaluator is
    not on the test set or the id mapping is lost."""
    assert os.path.isfile(example_run.weights)
    with open(example_run.data["val_json"]) as f:
        val_ids = {image["id"] for image in json.load(f)["images"]}
    with open(os.path.join(example_run.folder, "inference", "coco_instances_results.json")) as f:
        detections = json.load(f)
    assert detections and {d["image_id"] for d in detections} == val_ids
    assert {d["category_id"] for d in detections} <= {3, 7}


@pytest.mark.slow
def test_eval_only_reproduces_the_final_evaluation(example_run, tmp_path):
    """--eval-only with the training's overrides and model_final.pth gives the detections of
    the evaluation at the end of training, its AP (as metrics.json logged it) and per-class AP
    named by the JSON's categories. The one test of --eval-only against training. Fails if
    --eval-only builds another model or loader than training evaluated (other weights, inputs
    or thresholds), or the per-class names are lost."""
    results = train_net.main(
        train_net_args(
            EXAMPLE_CONFIG,
            *example_run.training(),
            f"train.init_checkpoint={example_run.weights}",
            f"train.output_dir={tmp_path}",
            eval_only=True,
        )
    )
    assert {"AP", "AP50", "AP75", "APs", "APm", "APl", "AP-rectangle", "AP-ellipse"} <= set(
        results["bbox"]
    )
    detections = "inference/coco_instances_results.json"
    with open(tmp_path / detections) as f, open(os.path.join(example_run.folder, detections)) as g:
        assert json.load(f) == json.load(g)
    with open(os.path.join(example_run.folder, "metrics.json")) as f:
        logged = [json.loads(x) for x in f if "bbox/AP" in x][-1]
    for k, v in results["bbox"].items():
        assert v == pytest.approx(logged[f"bbox/{k}"], abs=1e-9, nan_ok=True), k


@pytest.mark.slow
def test_demo_draws_a_grey_png_with_the_class_names(example_run, tmp_path, caplog):
    """demo.py with the config, the same overrides and the run's weights names the classes from
    the JSON and draws a grey PNG."""
    caplog.set_level(logging.INFO)
    grey = os.path.join(example_run.data["image_root"], "000002.png")
    status = load_script("demo.py").main(
        ["--config-file", EXAMPLE_CONFIG, "--input", grey, "--output", str(tmp_path),
         "--confidence-threshold", "0.001", *example_run.training(),
         f"train.init_checkpoint={example_run.weights}"]
    )  # fmt: skip
    assert status == 0
    assert "class names: 2 (rectangle, ellipse, ...)" in caplog.text
    assert os.path.isfile(tmp_path / "000002.png")


@pytest.mark.slow
def test_export_builds_the_data_class_count(example_run, tmp_path, capsys):
    """tools/export_model.py with the same overrides builds a 2-class model (the weights of
    model_final.pth would not load into the config's default otherwise), writes a TorchScript
    model that runs at another size than traced and returns per image boxes (N, 4), classes,
    scores and the image size, and says how to load it."""
    status = run_script(
        "tools/export_model.py", "--config-file", EXAMPLE_CONFIG, "--format", "torchscript",
        "--output", tmp_path, "--sample-size", "96", "128", *example_run.training(),
        f"train.init_checkpoint={example_run.weights}",
    )  # fmt: skip
    assert status == 0
    assert "torch.jit.load" in capsys.readouterr().out
    outputs = torch.jit.load(str(tmp_path / "model.ts"))(torch.rand(3, 80, 112) * 255)
    boxes, classes, scores, image_size = outputs
    assert len(outputs) == len(OUTPUT_NAMES) and boxes.shape[1] == 4
    assert len(boxes) == len(classes) == len(scores) > 0 and image_size.tolist() == [80, 112]
