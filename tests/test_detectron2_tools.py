"""Our configs under Detectron2's own tools: a fresh process that imports nothing of ours but
the config file makes the calls of Detectron2's ``tools/lazyconfig_train_net.py`` (load,
overrides, model, optimizer, loaders, SimpleTrainer with Detectron2's hooks and checkpointer,
``inference_on_dataset`` with the config's evaluator), and every config's loaders instantiate
in such a process: the datasets are described by the config, not registered by our entry
points (issue 23)."""

import glob
import json
import os

import pytest
import torch

from tests.atss_testing import REPO_ROOT as ROOT
from tests.atss_testing import coco_json_overrides, run_python, write_coco_example

pytestmark = pytest.mark.slow

SHAPES = "configs/Shapes/atss_tiny_shapes.py"
CUSTOM = "configs/Custom/atss_MNV2_FPN_coco_json.py"

# The body of Detectron2's tools/lazyconfig_train_net.py (main, do_train, do_test; one process,
# no resume), verbatim in its calls. Nothing of ours is imported but through the config file.
LAZYCONFIG_TRAIN_NET = """
import json, logging, sys
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import (
    AMPTrainer, SimpleTrainer, default_argument_parser, default_setup, default_writers, hooks,
)
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm

assert not [m for m in sys.modules if m == "atss" or m.startswith("atss.")], "atss imported"


def do_test(cfg, model):
    if "evaluator" in cfg.dataloader:
        ret = inference_on_dataset(
            model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator)
        )
        print_csv_format(ret)
        return ret


def do_train(args, cfg):
    model = instantiate(cfg.model)
    model.to(cfg.train.device)
    cfg.optimizer.params.model = model
    optim = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)
    model = create_ddp_model(model, **cfg.train.ddp)
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(model, train_loader, optim)
    checkpointer = DetectionCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    results = {}
    trainer.register_hooks([
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
        hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer),
        hooks.EvalHook(cfg.train.eval_period, lambda: results.update(do_test(cfg, model))),
        hooks.PeriodicWriter(
            default_writers(cfg.train.output_dir, cfg.train.max_iter), period=cfg.train.log_period
        ),
    ])
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    trainer.train(0, cfg.train.max_iter)
    return results


# One run per command line (a JSON list of them), in turn, as the tool runs one.
for argv in json.loads(sys.argv[1]):
    args = default_argument_parser().parse_args(argv)
    cfg = LazyConfig.load(args.config_file)
    cfg = LazyConfig.apply_overrides(cfg, args.opts)
    default_setup(cfg, args)
    print("RESULTS " + json.dumps(do_train(args, cfg)["bbox"]))
"""


def _trained_and_evaluated(out, output_dir):
    """The AP line of print_csv_format, and a final checkpoint that Detectron2 wrote."""
    assert "copypaste: AP,AP50,AP75,APs,APm,APl" in out
    results = json.loads(out.split("RESULTS ", 1)[1].splitlines()[0])
    assert {"AP", "AP50", "AP75"} <= set(results)
    assert os.path.isfile(os.path.join(output_dir, "model_final.pth"))
    with open(os.path.join(output_dir, "last_checkpoint")) as f:
        assert f.read().strip() == "model_final.pth"
    return results


def test_lazyconfig_train_net_trains_and_evaluates_the_shapes_config_and_a_coco_json_folder(
    tmp_path,
):
    """Detectron2's tool calls (in one fresh process, one run after the other) on
    configs/Shapes/atss_tiny_shapes.py: the shapes datasets are registered and generated (into
    $ATSS_CACHE) by the loader the config names, COCOEvaluator finds their ground truth; and on
    configs/Custom/atss_MNV2_FPN_coco_json.py with the four dataset overrides, on a COCO folder
    whose category ids are 3 and 7: the class count and names come from the train JSON,
    COCOEvaluator reports per-class AP under the JSON's names and writes detections in the
    JSON's ids. Fails with "dataset 'shapes_train' is not registered" if the datasets exist
    only after our entry points register them, if they are generated anywhere but the cache,
    if the loaders or the class count do not read the dataset node (not registered / 1
    class), or if the evaluator's id map is missing."""
    data = write_coco_example(str(tmp_path / "data"), 8, 3, size=(64, 96))
    shapes, custom, cache = tmp_path / "shapes", tmp_path / "custom", tmp_path / "cache"
    # Detectron2's tool moves the model to train.device as the config gives it (our configs keep
    # Detectron2's "cuda", which only our entry points resolve at run time): a user without a
    # GPU gives train.device=cpu, as with any Detectron2 config.
    device = f"train.device={'cuda' if torch.cuda.is_available() else 'cpu'}"
    runs = [
        ["--config-file", SHAPES, "train.max_iter=2", "train.checkpointer.period=2",
         "model.test_score_thresh=0.001", "dataloader.train.num_workers=0",
         f"train.output_dir={shapes}", device],
        ["--config-file", CUSTOM, *coco_json_overrides(data),
         "dataloader.train.mapper.augmentations.0.short_edge_length=[96,128]",
         "dataloader.test.mapper.augmentations.0.short_edge_length=96",
         "model.test_score_thresh=0.001", "model.test_topk_candidates=50", "train.max_iter=2",
         "train.checkpointer.period=1000", f"train.output_dir={custom}", device],
    ]  # fmt: skip
    env = {**os.environ, "ATSS_CACHE": str(cache)}
    run = run_python(LAZYCONFIG_TRAIN_NET, json.dumps(runs), env=env)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    out = run.stdout + run.stderr
    _trained_and_evaluated(out, shapes)
    assert len(glob.glob(str(cache / "shapes" / "*" / "images" / "*.png"))) == 64 + 16
    results = _trained_and_evaluated(out[out.index("RESULTS ") + 8 :], custom)
    assert {"AP-rectangle", "AP-ellipse"} <= set(results)
    with open(custom / "inference" / "coco_instances_results.json") as f:
        detections = json.load(f)
    assert {d["category_id"] for d in detections} == {3, 7}  # both classes: 2 outputs


# Instantiates both loaders of every config named on the command line, in one fresh process;
# a COCO config must fail only for want of the COCO files (not there), not for a missing name.
INSTANTIATE_LOADERS = """
import sys
from detectron2.config import LazyConfig, instantiate

opts = sys.argv[1].split() if sys.argv[1] else []
for path in sys.argv[2:]:
    cfg = LazyConfig.apply_overrides(LazyConfig.load(path), opts if "Custom" in path else [])
    if "dataloader" not in cfg:
        print("none", path, flush=True)
        continue
    for split in ("train", "test"):
        try:
            instantiate(cfg.dataloader[split])
            print("ok", path, split, len(instantiate(cfg.dataloader[split].dataset)), flush=True)
        except Exception as e:
            print("failed", path, split, type(e).__name__, str(e)[:300], flush=True)
"""

ALL_CONFIGS = sorted(glob.glob("configs/**/*.py", recursive=True, root_dir=ROOT))


def _instantiate_loaders(configs, tmp_path, opts=()):
    """Lines of :data:`INSTANTIATE_LOADERS`, split: ("ok", path, split, length) per loader,
    (length: of the dataset dicts), ("failed", path, split, error type, message) or ("none",
    path) for a config without loaders."""
    env = {**os.environ, "ATSS_CACHE": str(tmp_path / "cache")}
    run = run_python(INSTANTIATE_LOADERS, " ".join(opts), *configs, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    prefixes = ("ok ", "failed ", "none ")
    return [line.split(" ", 4) for line in run.stdout.splitlines() if line.startswith(prefixes)]


def test_every_config_with_own_data_instantiates_its_loaders_in_a_fresh_process(tmp_path):
    """Shapes, tree-crown and Custom configs (the latter with the four dataset overrides), and
    the common pieces: every loader instantiates with nothing registered before. Fails if any
    config names a dataset that only our entry points register, or a Custom loader does not
    read the dataset node."""
    data = write_coco_example(str(tmp_path / "data"), 4, 2, size=(64, 96))
    opts = coco_json_overrides(data)
    own = [p for p in ALL_CONFIGS if p.split("/")[1] in ("Shapes", "TreeCrowns", "Custom")]
    common = [p for p in ALL_CONFIGS if p.startswith("configs/common/") and "coco_data" not in p]
    lines = _instantiate_loaders(own + common, tmp_path, opts)
    with_loaders = {line[1] for line in lines if line[0] != "none"}
    assert set(own) <= with_loaders and len(own) == 7
    assert [line[0] for line in lines if line[0] != "none"] == ["ok"] * (2 * len(own)), lines
    custom = {(line[1], line[2]): int(line[3]) for line in lines if "Custom" in line[1]}
    assert set(custom.values()) == {4, 2}  # train / test images of the generated folder


def test_every_coco_config_fails_only_for_the_missing_coco_files(tmp_path):
    """COCO configs name Detectron2's builtin coco_2017_* datasets, registered by Detectron2
    itself; without the COCO files here each loader fails naming the missing annotation file.
    Fails if a COCO config names a dataset nobody registers ("not registered")."""
    configs = [p for p in ALL_CONFIGS if p.startswith("configs/COCO/")]
    configs.append("configs/common/coco_data.py")
    lines = _instantiate_loaders(configs, tmp_path)
    assert len(lines) == 2 * len(configs)
    for status, path, split, error, message in lines:
        assert status == "failed" and error == "DatasetError", (path, split, error, message)
        assert "not registered" not in message
        assert f"instances_{'train' if split == 'train' else 'val'}2017.json" in message, message
