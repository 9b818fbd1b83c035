"""atss.engine.config: loading a config (an override of a key that is neither in the config nor
a parameter of the LazyCall target it reaches is refused with the nearest names; a missing
config file is one line naming the fix; loading writes no file; a run's own config stands
without its training data) and building its model with its weights (train.init_checkpoint, a
whole trained model, or an explicit --random-weights), on every entry point."""

import glob
import json
import logging
import os
import shutil
import sys

import cv2
import numpy as np
import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from omegaconf import OmegaConf

from atss.data import DatasetError
from atss.engine.config import (
    NO_WEIGHTS,
    RANDOM,
    TRAINED,
    ConfigError,
    WeightsError,
    apply_checked_overrides,
    build_model,
    check_config_file,
    check_override,
    load_checked_config,
    load_config,
    load_trained_weights,
)
from atss.engine.predictor import write_run_classes
from tests.atss_testing import (
    REPO_ROOT,
    ROOT,
    coco_json_overrides,
    load_script,
    run_python,
    tiny_model,
    write_coco_example,
    write_tiny_config,
)

CONFIG = "configs/Shapes/atss_tiny_shapes.py"
COCO_CONFIG = "configs/COCO/atss_R_50_FPN_1x.py"
CUSTOM_CONFIG = "configs/Custom/atss_MNV2_FPN_coco_json.py"


# ------------------------------------------------------------------------------ overrides
@pytest.fixture(scope="module")
def cfg():
    return load_checked_config(CONFIG)


def _refusal(cfg, override) -> str:
    with pytest.raises(ConfigError) as e:
        check_override(cfg, override)
    message = str(e.value)
    assert "\n" not in message
    return message


def test_the_issue_typo_is_refused_naming_the_existing_key(cfg):
    """train.max_iters=1 (the issue's typo for train.max_iter) used to run the full schedule.
    Fails if unknown keys are let through or the nearest name is not offered."""
    message = _refusal(cfg, "train.max_iters=1")
    assert "'train.max_iters'" in message and "did you mean train.max_iter?" in message
    assert "+train.max_iters=1" in message  # how to add a key on purpose


def test_a_misspelt_parameter_of_a_lazycall_target_is_refused_with_its_real_name(cfg):
    """model.head is L(ATSSHead)(...): conv_dimz is neither a key nor a parameter of ATSSHead;
    optimizer is L(torch.optim.SGD): lrr is not a parameter of SGD. Fails if a target node lets
    any keyword through (e.g. the signature check skipped)."""
    message = _refusal(cfg, "model.head.conv_dimz=[64]")
    assert "did you mean model.head.conv_dims?" in message and "ATSSHead" in message
    assert "did you mean optimizer.lr?" in _refusal(cfg, "optimizer.lrr=0.1")
    # Below a plain dict (train has no _target_), every key must exist.
    assert "train.amp has no key 'enable'" in _refusal(cfg, "train.amp.enable=True")


def test_existing_keys_list_items_and_optional_keys_are_applied():
    """Existing keys, a list item by index and train.seed (read by Detectron2's default_setup
    with a default; absent from the COCO configs) pass and take effect. Fails if a list index,
    or an optional key, is treated as an unknown key, or the value is not applied."""
    cfg = load_checked_config(
        CONFIG,
        [
            "train.max_iter=7",
            "dataloader.test.mapper.augmentations.0.max_size=100",
            "model.head.conv_dims=[16,16]",
        ],
    )
    assert cfg.train.max_iter == 7 and list(cfg.model.head.conv_dims) == [16, 16]
    assert cfg.dataloader.test.mapper.augmentations[0].max_size == 100
    coco = load_checked_config(COCO_CONFIG, ["train.seed=3"])
    assert coco.train.seed == 3
    assert "not an index" in _refusal(coco, "dataloader.test.mapper.augmentations.9.max_size=1")
    assert "is a value (int)" in _refusal(coco, "train.max_iter.x=1")


@pytest.mark.parametrize("index", ["1", "-1", "-2"])
def test_a_list_index_one_past_either_end_gets_the_one_line_refusal(index):
    """The shapes test loader has one augmentation: index 0 (len - 1) is applied, index 1
    (len) and the negative ones (-1; -2 = -len - 1: Hydra's override grammar parses no
    negative index) get our one-line refusal. Fails if the bound is written ``<= len`` (then
    OmegaConf's multi-line ConfigIndexError is what the user sees) or negative indices are let
    through to Hydra's parser."""
    key = "dataloader.test.mapper.augmentations"
    cfg = load_checked_config(CONFIG, [f"{key}.0.max_size=100"])
    assert len(cfg.dataloader.test.mapper.augmentations) == 1
    assert cfg.dataloader.test.mapper.augmentations[0].max_size == 100
    with pytest.raises(ConfigError) as e:
        load_checked_config(CONFIG, [f"{key}.{index}.max_size=100"])
    assert "\n" not in str(e.value)
    assert f"is a list of 1 item(s), '{index}' is not an index of it (0..0)" in str(e.value)


def test_a_real_keyword_of_the_target_that_the_config_leaves_out_is_accepted():
    """model.backbone is L(build_mobilenetv2_fpn)(...) without `norm`, a parameter of that
    function: accepted, set, and the model instantiates with it. A **kwargs target
    (logging.basicConfig) takes any keyword; a dotted-name target (a YAML config's) is
    resolved. Fails if only spelled-out keys are accepted, or **kwargs is not honoured."""
    from detectron2.config import instantiate

    cfg = load_checked_config(CONFIG, ["model.backbone.norm=BN", "model.backbone.pretrained=False"])
    assert "norm" in cfg.model.backbone and cfg.model.backbone.norm == "BN"
    instantiate(cfg.model.backbone)  # the keyword really is one the target takes

    plain = OmegaConf.create(
        {
            "log": {"_target_": "logging.basicConfig", "level": logging.INFO},
            "opt": {"_target_": "torch.optim.SGD", "lr": 0.1},
        }
    )
    apply_checked_overrides(plain, ["log.datefmt=%H", "opt.momentum=0.9"])
    assert plain.log.datefmt == "%H" and plain.opt.momentum == 0.9
    assert "did you mean opt.momentum?" in _refusal(plain, "opt.momentun=0.9")


def test_hydra_additions_pass_in_order_and_deletion_is_refused(cfg):
    """+key / ++key add a key on purpose, and a later override may set it (overrides are
    checked one at a time against the config as it is then); ~key is refused in one line
    (Detectron2 raises NotImplementedError for it). Fails if all overrides are checked against
    the file's config before any is applied, or if + is checked like a plain key."""
    fresh = load_checked_config(CONFIG, ["+train.new_key=1", "train.new_key=2", "++train.more=3"])
    assert fresh.train.new_key == 2 and fresh.train.more == 3
    assert "train.amp=null" in _refusal(cfg, "~train.amp")


@pytest.mark.parametrize(
    "config_file, expected",
    [
        ("", "no config file given: pass --config-file FILE"),
        ("configs/no_such_config.py", "config file configs/no_such_config.py does not exist"),
        ("README.md", "--config-file takes a .py or .yaml"),
    ],
)
def test_a_missing_or_absent_config_file_is_one_line_naming_the_fix(config_file, expected):
    """Fails if LazyConfig.load is reached (a 20-line traceback, or "Config file  has to be a
    python or yaml file" for no file at all)."""
    with pytest.raises(ConfigError) as e:
        load_config(config_file)
    assert expected in str(e.value) and "\n" not in str(e.value)
    assert check_config_file(CONFIG) == CONFIG


TYPO = "train.max_iters=1"
ENTRY_POINTS = {  # script -> argv with the typo; each must stop before doing any work
    "train_net.py": ["--config-file", CONFIG, TYPO],
    "demo.py": ["--config-file", CONFIG, "--input", "x.jpg", "--random-weights", TYPO],
    "tools/export_model.py": ["--config-file", CONFIG, "--output", "o", TYPO],
    "tools/benchmark.py": ["--config-file", CONFIG, "--task", "data", TYPO],
    "tools/validate_dataset.py": ["--config-file", CONFIG, TYPO],
}


@pytest.mark.parametrize("script", sorted(ENTRY_POINTS))
def test_every_entry_point_refuses_an_unknown_key(script, monkeypatch, capsys, caplog, tmp_path):
    """Fails for an entry point that loads its config around load_config's check (as
    tools/benchmark.py did with LazyConfig.apply_overrides) or prints a traceback."""
    argv = ENTRY_POINTS[script]
    module = load_script(script)
    monkeypatch.setattr(sys, "argv", [script, *argv])
    monkeypatch.chdir(ROOT)
    launched = []
    if script == "train_net.py":
        monkeypatch.setattr(module, "launch_training", lambda *a: launched.append(a))
    try:
        status = module.invoke_main() if script == "train_net.py" else module.main(argv)
    except SystemExit as e:
        status = e.code
    assert status in (1, 2) and not launched
    captured = capsys.readouterr()
    said = captured.out + captured.err + caplog.text
    assert "did you mean train.max_iter?" in said
    assert "Traceback" not in said
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------ loading
CONFIGS = sorted(glob.glob("configs/**/*.py", recursive=True, root_dir=REPO_ROOT))

# Imports atss (all subpackages) and loads every config through load_config, then prints the
# datasets registered beyond Detectron2's own.
LOAD_EVERYTHING = """
import importlib.abc, sys

class Block(importlib.abc.MetaPathFinder):  # setuptools >= 81 ships no pkg_resources
    def find_spec(self, name, path=None, target=None):
        if name == "pkg_resources" or name.startswith("pkg_resources."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")

sys.meta_path.insert(0, Block())
sys.modules.pop("pkg_resources", None)
from detectron2.data import DatasetCatalog

builtin = set(DatasetCatalog.list())
import atss, atss.data, atss.engine, atss.evaluation, atss.inference, atss.modeling  # noqa
imported = set(DatasetCatalog.list()) - builtin
print("after import:", sorted(imported))
from atss.engine.config import load_config

opts = sys.argv[1].split()
for path in sys.argv[2:]:
    load_config(path, opts if "coco_json" in path else [])
print("after loading:", sorted(set(DatasetCatalog.list()) - builtin))
assert "pkg_resources" not in sys.modules
"""


def _files_under(folder):
    return sorted(
        os.path.relpath(os.path.join(d, f), folder)
        for d, dirs, files in os.walk(folder)
        for f in files
        if "__pycache__" not in d
    )


@pytest.mark.slow
def test_importing_atss_and_loading_every_config_writes_no_file(tmp_path):
    """In a fresh process with an empty home, no $ATSS_CACHE and no pkg_resources (setuptools
    >= 81 ships none; detectron2.model_zoo imports it), importing atss and loading every config
    under configs/ (those with a dataset node given the four dataset overrides) registers only
    custom_train/custom_test and writes nothing: not in the user cache, not in the checkout.
    Fails if load_config builds the shapes or tree crowns again (it wrote 181 PNGs into .cache/
    of the checkout), if the cache defaults into the checkout, or if atss or a config imports
    pkg_resources (the common configs come through atss.config.get_detectron2_config, not
    detectron2.model_zoo)."""
    data = write_coco_example(str(tmp_path / "data"), 2, 1, size=(64, 96))
    opts = coco_json_overrides(data)
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("ATSS_CACHE", "XDG_CACHE_HOME")}
    env.update(HOME=str(home), PYTHONDONTWRITEBYTECODE="1")
    checkout_before = _files_under(REPO_ROOT)
    run = run_python(LOAD_EVERYTHING, " ".join(opts), *CONFIGS, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "after import: []" in run.stdout
    assert "after loading: ['custom_test', 'custom_train']" in run.stdout
    assert _files_under(home) == []
    assert _files_under(REPO_ROOT) == checkout_before


# ------------------------------------------------------------------------------ run configs
@pytest.fixture
def run(tmp_path):
    """A run folder as training leaves it (config.yaml as default_setup saves it, classes.json)
    whose training data were then deleted; returns (folder, a second dataset's paths)."""
    data = write_coco_example(str(tmp_path / "data"), 2, 1, size=(64, 96))
    other = write_coco_example(str(tmp_path / "other"), 1, 2, size=(64, 96), seed=1)
    cfg = load_config(CUSTOM_CONFIG, coco_json_overrides(data), data_splits=("train", "test"))
    folder = str(tmp_path / "run")
    os.makedirs(folder)
    LazyConfig.save(cfg, os.path.join(folder, "config.yaml"))
    write_run_classes(cfg, folder)
    shutil.rmtree(tmp_path / "data")
    return folder, other


def test_a_run_config_loads_without_the_training_data(run):
    """load_config of RUN/config.yaml for demo/export (no split needed) after the data are
    deleted: the 2 classes of classes.json, the train split not read. Fails if load_config
    still checks dataset.train (it stops with 'dataset.train.json_file=...: no such file')."""
    folder, _ = run
    cfg = load_config(os.path.join(folder, "config.yaml"))
    assert cfg.model.num_classes == 2
    assert cfg.dataset.train.json_file == ""


def test_a_run_config_evaluates_another_dataset_with_the_same_categories(run, tmp_path):
    """--eval-only's load (test split required) on another dataset registers custom_test with
    the JSON's id map; a test JSON whose categories differ from classes.json is refused, naming
    classes.json. Fails if the check against the run's classes is dropped."""
    folder, other = run
    config = os.path.join(folder, "config.yaml")
    test = [f"dataset.test.json_file={other['val_json']}"]
    test.append(f"dataset.test.image_root={other['image_root']}")
    cfg = load_config(config, test, data_splits=("test",))
    assert cfg.model.num_classes == 2
    with open(other["val_json"]) as f:
        data = json.load(f)
    data["categories"][0]["id"] = 4  # another id for 'rectangle'
    for annotation in data["annotations"]:
        annotation["category_id"] = 4 if annotation["category_id"] == 3 else 7
    renamed = str(tmp_path / "renamed.json")
    with open(renamed, "w") as f:
        json.dump(data, f)
    with pytest.raises(DatasetError, match="classes.json"):
        load_config(config, [f"dataset.test.json_file={renamed}", test[1]], data_splits=("test",))


def test_training_from_a_run_config_still_needs_its_data(run):
    """Training (train split required) does not use classes.json: the deleted train JSON is
    reported by its path. Fails if the run's config drops dataset.train for training too (then
    'give dataset.train.json_file=PATH')."""
    folder, _ = run
    with pytest.raises(DatasetError, match=r"dataset\.train\.json_file=\S+train\.json: no such"):
        load_config(os.path.join(folder, "config.yaml"), data_splits=("train", "test"))


# ------------------------------------------------------------------------------ weights
run_benchmark = load_script("tools/benchmark.py").run_benchmark

HEAD_DIMS = [64, 64]  # GN(32) needs 2 channels a group on the 1x1 P7 of a 64 px input


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny 3-class config with an empty train.init_checkpoint, a full checkpoint of its
    model whose classifier bias no initialisation gives (2.0), a backbone-only checkpoint
    (what a training init such as ImageNet weights covers) and an image."""
    root = tmp_path_factory.mktemp("weights")
    model = tiny_model(num_classes=3, **{"head.conv_dims": HEAD_DIMS})
    with torch.no_grad():
        model.head.cls_score.bias.fill_(2.0)
    state = model.state_dict()
    full, backbone = root / "trained.pth", root / "backbone.pth"
    torch.save({"model": state}, full)
    torch.save({"model": {k: v for k, v in state.items() if k.startswith("backbone.")}}, backbone)
    config = write_tiny_config(
        root / "tiny.py",
        64,
        96,
        f"model.head.conv_dims = {HEAD_DIMS}",
        'train.init_checkpoint = ""',
    )
    image = root / "img.jpg"
    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 255, (60, 80, 3), np.uint8))
    return {"config": str(config), "full": str(full), "backbone": str(backbone), "image": image}


def _export(setup, out, *args):
    module = load_script("tools/export_model.py")
    argv = ["--config-file", setup["config"], "--output", str(out), "--sample-size", "64", "96"]
    return module.main([*argv, *args])


def test_export_takes_train_init_checkpoint_like_every_other_entry_point(setup, tmp_path, capsys):
    """export_model.py ... train.init_checkpoint=model_final.pth exports the checkpoint's
    weights: the classifier bias is 2.0, which no initialisation gives. Fails if export ignores
    train.init_checkpoint (it once read only a --weights flag and exported random weights)."""
    path = _export(setup, tmp_path / "a", f"train.init_checkpoint={setup['full']}")
    assert "random" not in capsys.readouterr().out
    traced = dict(torch.jit.load(path).named_parameters())
    bias = [v for k, v in traced.items() if k.endswith("cls_score.bias")]
    assert len(bias) == 1 and torch.all(bias[0] == 2.0)


def test_export_without_weights_stops_naming_the_key_and_random_needs_the_flag(
    setup, tmp_path, capsys
):
    """No weights: exit 2, one line naming train.init_checkpoint= and --random-weights, no
    file written (it used to warn and write random weights with exit 0). --random-weights
    exports. Fails if the old warning path is kept."""
    with pytest.raises(SystemExit) as e:
        _export(setup, tmp_path / "none")
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1
    assert "train.init_checkpoint=PATH" in err and "--random-weights" in err
    assert not (tmp_path / "none" / "model.ts").exists()
    assert os.path.isfile(_export(setup, tmp_path / "random", "--random-weights"))


def test_a_checkpoint_that_leaves_tensors_at_their_init_is_not_a_trained_model(setup, caplog):
    """A backbone-only checkpoint (like the COCO configs' default ImageNet
    train.init_checkpoint) leaves the head random: refused in a short line that counts the
    loaded tensors and the head's missing ones, while the log names each. The full checkpoint
    loads. Fails if any loadable file counts as trained weights, or if the error lists every
    missing tensor (thousands of characters for this tiny model)."""
    cfg = load_config(setup["config"], [f"train.init_checkpoint={setup['backbone']}"])
    model = instantiate(cfg.model)
    keys = list(model.state_dict())
    head = [k for k in keys if k.startswith("head.")]
    caplog.set_level(logging.INFO)
    with pytest.raises(WeightsError) as e:
        load_trained_weights(model, cfg, what="export")
    message = str(e.value)
    assert "is not a trained model of this config" in message and "--random-weights" in message
    assert f"Loaded {len(keys) - len(head)} of {len(keys)} model tensors" in message
    assert f": head: {len(head)} missing;" in message
    assert len(message.replace(setup["backbone"], "PATH")) < 300 and "\n" not in message
    assert "head.cls_score.{bias, weight}" in caplog.text
    cfg.train.init_checkpoint = setup["full"]
    model = instantiate(cfg.model)
    assert load_trained_weights(model, cfg) == setup["full"]
    assert torch.all(model.head.cls_score.bias == 2.0)
    cfg.train.init_checkpoint = setup["full"] + ".missing"
    with pytest.raises(WeightsError, match="no such file"):
        load_trained_weights(instantiate(cfg.model), cfg)


def test_demo_needs_weights_or_random_weights(setup, tmp_path, caplog):
    """demo.py without weights: status 2 naming the key (it used to draw a random model's
    boxes after a warning); with --random-weights it runs."""
    from demo import main

    argv = ["--config-file", setup["config"], "--input", str(setup["image"])]
    assert main([*argv, "--output", str(tmp_path / "a")]) == 2
    assert "train.init_checkpoint is empty" in caplog.text and "--random-weights" in caplog.text
    assert not (tmp_path / "a" / "img.png").exists()
    assert main([*argv, "--output", str(tmp_path / "b"), "--random-weights"]) == 0
    assert (tmp_path / "b" / "img.png").is_file()


@pytest.mark.parametrize("task", ["eval", "infer"])
def test_benchmarking_a_model_needs_weights_or_random_weights(setup, task):
    """Timing evaluation or inference of an untrained model must be asked for. Fails if the
    benchmark builds the model without the weights rule."""
    cfg = load_config(setup["config"])
    with pytest.raises(WeightsError, match="no weights to benchmark"):
        run_benchmark(cfg, task, iters=1, warmup=0, peaks=False)


@pytest.mark.parametrize(
    "extra, refused",
    [
        (["--eval-only"], "--eval-only with an empty train.init_checkpoint"),
        (["--random-weights"], "--random-weights applies to --eval-only"),
        (["--eval-only", "--random-weights"], None),
        (["--runtime", "onnxruntime"], "--runtime onnxruntime applies to --eval-only"),
        (
            [
                "--eval-only",
                "--random-weights",
                "--runtime",
                "onnxruntime",
                "+test.aug.enabled=True",
            ],
            "the test-time augmentation runs the eager model only",
        ),
        (["--eval-only", "--random-weights", "--runtime", "onnxruntime"], None),
    ],
)
def test_train_net_eval_only_needs_weights_or_random_weights(
    setup, extra, refused, monkeypatch, capsys
):
    """train_net.py --eval-only with an empty train.init_checkpoint stops before launching
    (exit 2, one line); --random-weights lets it evaluate an untrained model and means nothing
    without --eval-only; --runtime onnxruntime likewise, and not with the test-time augmentation
    (eager only). Fails if the check is skipped (launch is reached)."""
    train_net = load_script("train_net.py")
    launched = []
    monkeypatch.setattr(train_net, "launch_training", lambda *a: launched.append(a))
    monkeypatch.setattr(sys, "argv", ["train_net.py", "--config-file", setup["config"], *extra])
    if refused is None:
        train_net.invoke_main()
        assert len(launched) == 1 and launched[0][1].random_weights
        return
    with pytest.raises(SystemExit) as e:
        train_net.invoke_main()
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and refused in err and len(err.splitlines()) == 1
    assert not launched


def test_build_model_is_the_one_place_a_model_gets_its_weights(setup):
    """build_model: TRAINED loads train.init_checkpoint whole (the
    classifier bias 2.0 no initialisation gives) and returns an eval-mode model; it refuses an
    empty key and a backbone-only checkpoint with the key named; RANDOM loads nothing; NO_WEIGHTS
    (training: the checkpointer loads the start) loads nothing and keeps train mode; an unknown
    mode is refused. Fails if any mode loads the wrong thing or the refusals go."""

    def bias(model):
        return model.head.cls_score.bias

    cfg = load_config(setup["config"], [f"train.init_checkpoint={setup['full']}"])
    model = build_model(cfg, TRAINED, "cpu")
    assert not model.training and torch.all(bias(model) == 2.0)
    for mode in (RANDOM, NO_WEIGHTS):
        model = build_model(cfg, mode, "cpu")
        assert not torch.any(bias(model) == 2.0)
        assert model.training == (mode == NO_WEIGHTS)
    for checkpoint in ("", setup["backbone"]):
        cfg.train.init_checkpoint = checkpoint
        with pytest.raises(WeightsError, match="train.init_checkpoint"):
            build_model(cfg, TRAINED, "cpu")
    with pytest.raises(ValueError, match="weights="):
        build_model(cfg, "pretrained", "cpu")
