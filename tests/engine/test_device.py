"""The device rule (atss.engine.device): a config's run goes to CUDA when the machine has it,
else to the CPU, unless ``train.device=`` is given. This machine has no GPU, so "has CUDA" is
``torch.cuda.is_available`` monkeypatched to True; nothing is moved to a device."""

import pytest
import torch
from detectron2.config import LazyConfig

from atss.engine import available_device, resolve_device

# The README's first-try config, the one the tests train and the demo's: all three once
# fixed train.device = "cpu".
FIRST_TRY = [
    "configs/Custom/atss_MNV2_FPN_coco_json.py",
    "configs/Shapes/atss_tiny_shapes.py",
    "configs/TreeCrowns/atss_MNV2_FPN_treecrowns.py",
]


def _cuda(monkeypatch, available):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)


def load_config(config_file, opts=()):
    return LazyConfig.apply_overrides(LazyConfig.load(config_file), list(opts))


@pytest.mark.parametrize("config_file", FIRST_TRY)
def test_a_config_trains_on_cuda_when_the_machine_has_it(monkeypatch, config_file):
    """Fails if a config fixes train.device = "cpu" (a GPU machine would train on the CPU) or
    if resolve_device ignores an available GPU."""
    cfg = load_config(config_file)
    _cuda(monkeypatch, True)
    assert resolve_device(cfg) == "cuda"
    assert cfg.train.device == "cuda"


@pytest.mark.parametrize("config_file", FIRST_TRY)
def test_a_config_falls_back_to_the_cpu_without_cuda(monkeypatch, config_file):
    """Fails if resolve_device keeps "cuda" on a machine without it (model.to("cuda") would
    raise at the start of every CPU run)."""
    cfg = load_config(config_file)
    _cuda(monkeypatch, False)
    assert resolve_device(cfg) == "cpu"
    assert cfg.train.device == "cpu"


def test_train_device_given_on_the_command_line_wins_over_an_available_gpu(monkeypatch):
    """Fails if resolve_device picks CUDA whenever it exists, ignoring train.device=cpu."""
    cfg = load_config(FIRST_TRY[1], ["train.device=cpu"])
    _cuda(monkeypatch, True)
    assert resolve_device(cfg) == "cpu"
    cfg = load_config(FIRST_TRY[1], ["train.device=cuda:1"])
    assert resolve_device(cfg) == "cuda:1"


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:1"])
def test_any_cuda_device_falls_back_to_the_cpu_without_cuda(monkeypatch, device):
    """train.device=cuda:1 on a machine without CUDA resolves like train.device=cuda, to the
    CPU; train.device=cpu stays. Fails if only the exact string "cuda" falls back (model.to
    ("cuda:1") would raise at the start of the run)."""
    cfg = load_config(FIRST_TRY[1], [f"train.device={device}"])
    _cuda(monkeypatch, False)
    assert resolve_device(cfg) == "cpu" and cfg.train.device == "cpu"
    assert available_device("cpu") == "cpu"


@pytest.mark.parametrize("requested", [None, ""])
def test_no_device_means_the_default_rule(monkeypatch, requested):
    """A config without train.device (or null) gets the same rule, not the string "None"."""
    _cuda(monkeypatch, True)
    assert available_device(requested) == "cuda"
    _cuda(monkeypatch, False)
    assert available_device(requested) == "cpu"


def test_amp_on_the_cpu_is_refused(monkeypatch):
    cfg = load_config(FIRST_TRY[1], ["train.amp.enabled=True"])
    _cuda(monkeypatch, False)
    with pytest.raises(ValueError, match="train.amp.enabled=True needs CUDA"):
        resolve_device(cfg)
