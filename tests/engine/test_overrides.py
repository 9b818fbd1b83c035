"""atss.engine.overrides: an override of a key that is neither in the config nor a parameter of
the LazyCall target it reaches is refused with the nearest names; real new keywords, list
indices and Hydra's explicit additions pass; a missing config file is one line naming the fix.
Every entry point gets the check because it lives in atss.engine.config.load_config."""

import logging
import sys

import pytest
from omegaconf import OmegaConf

from atss.engine.config import load_config
from atss.engine.overrides import (
    ConfigError,
    apply_checked_overrides,
    check_config_file,
    check_override,
    load_checked_config,
)
from tests.atss_testing import ROOT, load_script

CONFIG = "configs/Shapes/atss_tiny_shapes.py"
COCO_CONFIG = "configs/COCO/atss_R_50_FPN_1x.py"


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
