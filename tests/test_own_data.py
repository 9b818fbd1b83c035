"""Own data end to end: a COCO-format folder (JSON + PNG, two classes with ids 3 and 7, grey and
colour images) given on the command line to configs/Custom/atss_MNV2_FPN_coco_json.py, through
every entry point: validate, train + evaluate, --eval-only, demo, export."""

import json
import os
import subprocess
import sys

import pytest

import train_net
from tests.atss_testing import free_port, write_coco_example

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/Custom/atss_MNV2_FPN_coco_json.py"
# Small inputs, a low score threshold (the 2-iteration model must have detections to map back
# to the JSON's category ids) and few candidates keep the run short on a CPU.
SMALL = [
    "dataloader.train.mapper.augmentations.0.short_edge_length=[96,128]",
    "dataloader.test.mapper.augmentations.0.short_edge_length=96",
    "model.test_score_thresh=0.001",
    "model.test_topk_candidates=50",
    "train.checkpointer.period=1000",
    "train.log_period=1",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_coco_example(str(tmp_path_factory.mktemp("own_data")), 8, 3, size=(64, 96))


def data_opts(paths):
    return [
        f"dataset.train.json_file={paths['train_json']}",
        f"dataset.train.image_root={paths['image_root']}",
        f"dataset.test.json_file={paths['val_json']}",
        f"dataset.test.image_root={paths['image_root']}",
    ]


def cli(*argv):
    return subprocess.run(
        [sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def train_net_args(*opts, eval_only=False):
    argv = ["--config-file", CONFIG] + (["--eval-only"] if eval_only else []) + list(opts)
    return train_net.default_argument_parser().parse_args(argv)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("train"))
    train_net.main(
        train_net_args(*data_opts(data), *SMALL, "train.max_iter=2", f"train.output_dir={out}")
    )
    with open(os.path.join(out, "inference", "coco_instances_results.json")) as f:
        detections = json.load(f)
    return out, detections


def test_validate_dataset_reads_the_config_overrides(data):
    """tools/validate_dataset.py with the config and the same overrides checks (and decodes)
    both splits; a bad image root is reported with the key. Fails if the overrides are taken
    for dataset names or the datasets are not registered from the config."""
    ok = cli("tools/validate_dataset.py", "--config-file", CONFIG, "--decode", *data_opts(data))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "custom_train: 8 images read, 0 unusable" in ok.stdout
    assert "custom_test: 3 images read, 0 unusable" in ok.stdout
    bad = data_opts(data)[:3] + ["dataset.test.image_root=/nonexistent"]
    failed = cli("tools/validate_dataset.py", "--config-file", CONFIG, *bad)
    assert failed.returncode == 1
    assert "dataset.test.image_root=/nonexistent" in failed.stdout


def test_trains_and_evaluates_in_the_json_category_ids(data, trained):
    """Training ends with a COCOEvaluator pass over all 3 test images whose detections carry
    the JSON's category ids (3 and 7), not the contiguous 0/1 or 1/2. Fails if the evaluator is
    not on the test set or the id mapping is lost."""
    out, detections = trained
    assert os.path.isfile(os.path.join(out, "model_final.pth"))
    with open(data["val_json"]) as f:
        val_ids = {image["id"] for image in json.load(f)["images"]}
    assert detections and {d["image_id"] for d in detections} == val_ids
    assert {d["category_id"] for d in detections} <= {3, 7}


def test_eval_only_reproduces_the_final_evaluation(data, trained):
    """--eval-only with the same overrides and model_final.pth gives the detections of the
    evaluation at the end of training, and per-class AP named by the JSON's categories."""
    out, detections = trained
    eval_out = os.path.join(out, "eval_only")
    results = train_net.main(
        train_net_args(
            *data_opts(data),
            *SMALL,
            f"train.init_checkpoint={os.path.join(out, 'model_final.pth')}",
            f"train.output_dir={eval_out}",
            eval_only=True,
        )
    )
    assert {"AP", "AP50", "AP-rectangle", "AP-ellipse"} <= set(results["bbox"])
    with open(os.path.join(eval_out, "inference", "coco_instances_results.json")) as f:
        assert json.load(f) == detections


def test_demo_draws_a_grey_png_with_the_class_names(data, trained, tmp_path):
    """demo.py with the same overrides names the classes from the JSON and draws a grey PNG."""
    out, _ = trained
    grey = os.path.join(data["image_root"], "000002.png")
    run = cli(
        "demo.py", "--config-file", CONFIG, "--input", grey, "--output", str(tmp_path),
        "--confidence-threshold", "0.001", *data_opts(data), *SMALL,
        f"train.init_checkpoint={os.path.join(out, 'model_final.pth')}",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "class names: 2 (rectangle, ellipse, ...)" in run.stdout + run.stderr
    assert os.path.isfile(tmp_path / "000002.png")


def test_export_builds_the_data_class_count(data, trained, tmp_path):
    """tools/export_model.py with the same overrides builds a 2-class model (the weights of
    model_final.pth would not load into the config's default otherwise) and writes it."""
    out, _ = trained
    run = cli(
        "tools/export_model.py", "--config-file", CONFIG, "--format", "torchscript",
        "--output", str(tmp_path), "--sample-size", "96", "128", *data_opts(data),
        f"train.init_checkpoint={os.path.join(out, 'model_final.pth')}",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert os.path.isfile(tmp_path / "model.ts")


def test_two_processes_each_register_the_datasets_from_the_command_line(data, tmp_path):
    """`train_net.py --num-gpus 2` (gloo on the CPU) with the dataset overrides: every spawned
    process starts with an empty DatasetCatalog, so each must register custom_train/custom_test
    itself from the overrides; it trains and evaluates in the JSON's category ids. Fails if the
    datasets are registered only in the launching process (KeyError in the workers)."""
    out = str(tmp_path)
    run = cli(
        "train_net.py", "--num-gpus", "2", "--dist-url", f"tcp://127.0.0.1:{free_port()}",
        "--config-file", CONFIG, *data_opts(data), *SMALL,
        "train.max_iter=2", f"train.output_dir={out}",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert os.path.isfile(os.path.join(out, "model_final.pth"))
    with open(os.path.join(out, "inference", "coco_instances_results.json")) as f:
        detections = json.load(f)
    assert detections and {d["category_id"] for d in detections} <= {3, 7}
