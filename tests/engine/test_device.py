"""The device rule (atss.engine.device): a config's run goes to CUDA when the machine has it,
else to the CPU, unless ``train.device=`` is given; and the precision rule of its one switch,
``train.amp.enabled``. This machine has no GPU, so "has CUDA" is ``torch.cuda.is_available``
monkeypatched to True, and whether the CPU has native bf16 is monkeypatched too; nothing is
moved to a device."""

import pytest
import torch
from detectron2.config import LazyConfig

from atss.engine import available_device, device, resolve_device

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


# ------------------------------------------------------------------------- the precision rule
def _native_bf16(monkeypatch, native):
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: native)


@pytest.mark.parametrize(
    "where, native, amp, expected",
    [
        ("cpu", True, dict(enabled=False), None),
        ("cuda", True, dict(enabled=False, precision="bf16"), None),
        ("cpu", True, dict(enabled=True), torch.bfloat16),
        ("cpu", True, dict(enabled=True, precision=None), torch.bfloat16),
        ("cpu", True, dict(enabled=True, precision="bf16"), torch.bfloat16),
        ("cpu", False, dict(enabled=True), None),
        ("cpu", False, dict(enabled=True, precision="bf16"), torch.bfloat16),
        ("cuda", False, dict(enabled=True), torch.float16),
        ("cuda:1", False, dict(enabled=True, precision="fp16"), torch.float16),
        ("cuda", False, dict(enabled=True, precision="bf16"), torch.bfloat16),
    ],
)
def test_one_switch_gives_the_dtype_of_each_device(monkeypatch, where, native, amp, expected):
    """train.amp.enabled=True: bf16 on a CPU with native bf16, fp32 on one without (unless
    train.amp.precision=bf16 asks for it), fp16 on CUDA unless the precision says bf16; off
    means fp32 whatever the precision says. Fails if the switch is ignored, if a CPU without
    native bf16 runs the slower emulated bf16 unasked, or if train.amp.precision is ignored."""
    _native_bf16(monkeypatch, native)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert device.autocast_dtype(where, amp) == expected


def test_a_cpu_without_native_bf16_says_it_runs_fp32(monkeypatch, caplog):
    """One warning line names the missing CPU feature and says fp32: never slower in silence,
    never a silent fp32 run either."""
    _native_bf16(monkeypatch, False)
    with caplog.at_level("WARNING", logger="detectron2"):
        assert device.autocast_dtype("cpu", {"enabled": True}) is None
    (line,) = [r.getMessage() for r in caplog.records]
    assert "no native bf16" in line and "avx512_bf16" in line and "fp32" in line


@pytest.mark.parametrize(
    "where, precision, message",
    [
        ("cpu", "fp16", "train.amp.precision=fp16 is for CUDA"),
        ("cpu", "float16", "train.amp.precision='float16' is not one of"),
        ("cuda", "bf16", "has no bf16; set train.amp.precision=fp16"),
        ("mps", None, "set train.amp.enabled=False"),
    ],
)
def test_a_precision_the_device_cannot_run_is_refused_naming_the_key(
    monkeypatch, where, precision, message
):
    """fp16 on the CPU (Detectron2's AMPTrainer and its gradient scaler are CUDA's), a misspelt
    precision, bf16 on a GPU without it, a device without autocast: one line naming the key and
    the fix, instead of a crash in the first step or a silent fp32 run."""
    _native_bf16(monkeypatch, True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda _: "Tesla V100")
    with pytest.raises(ValueError, match=message):
        device.autocast_dtype(where, {"enabled": True, "precision": precision})


@pytest.mark.parametrize(
    "flags, native",
    [
        ("fpu sse avx2 avx512f avx512bw avx512_bf16 avx512_vnni", True),
        ("fpu avx2 avx512f amx_bf16 amx_tile", True),
        ("fpu sse avx2 avx512f avx512bw avx512dq avx512vl avx512_vnni", False),
        (None, False),
    ],
)
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, flags, native):
    """avx512_bf16 or amx_bf16 among the CPU's flags; an AVX-512 CPU without them has none
    (torch's ``_is_mkldnn_bf16_supported`` says True there, where bf16 is emulated and slower:
    fails if that query decides); no cpuinfo file (not Linux) means none."""
    cpuinfo = tmp_path / "cpuinfo"
    if flags is not None:
        cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\n")
    assert device.cpu_has_native_bf16(str(cpuinfo)) is native


def test_the_precision_key_is_an_override_every_config_takes():
    """train.amp.precision is read with a default (Detectron2's common train dict has no such
    key): the override check lets it through, as it refuses a misspelt key."""
    from atss.engine.config import ConfigError, load_config

    cfg = load_config(FIRST_TRY[1], ["train.amp.enabled=True", "train.amp.precision=bf16"])
    assert cfg.train.amp.precision == "bf16"
    with pytest.raises(ConfigError, match="train.amp.precison"):
        load_config(FIRST_TRY[1], ["train.amp.precison=bf16"])
