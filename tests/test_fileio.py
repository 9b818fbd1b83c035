"""atss.fileio's safe readers: planted weights files and configs are refused before anything of
them runs, and every legitimate file the project reads loads as the trusting reader loads it.
(atomic_write: tests/engine/test_checkpoint.py.)"""

import glob
import pickle
import random
import struct

import numpy as np
import pytest
import torch
from detectron2.config import LazyConfig
from detectron2.engine import SimpleTrainer, hooks
from detectron2.solver import LRMultiplier
from fvcore.common.param_scheduler import MultiStepParamScheduler
from omegaconf import OmegaConf, SCMode

from atss.engine import AtomicDetectionCheckpointer, RNGState
from atss.fileio import UnsafeFileError, load_config_file, load_pickle_file, load_torch_file
from atss.modeling.backbone.mobilenet import mobilenet_v2_checkpoint_path
from tests import payloads

RUN_CONFIGS = sorted(f for f in glob.glob("configs/**/*.py", recursive=True) if "/common/" not in f)


def _assert_same(a, b, where="file"):
    """``a`` and ``b`` hold the same containers, values, tensors and arrays (of the same type)."""
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b), where
    else:
        assert a == b, where


def _refused(load, path, refused):
    """``load(path)`` raises the one-line UnsafeFileError naming ``path`` and ``refused``."""
    with pytest.raises(UnsafeFileError) as e:
        load(str(path))
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: refused")
    assert refused in message
    return message


def _trusting_torch_load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def _trusting_pickle_load(path):
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")  # Detectron2's DetectionCheckpointer on a .pkl


# --- Planted payloads -------------------------------------------------------------------------


@pytest.mark.parametrize("legacy_format", [False, True], ids=["zip", "legacy"])
def test_a_planted_checkpoint_is_refused_and_never_runs(tmp_path, legacy_format):
    """A .pth whose unpickling calls open() is refused, naming the file, the global and the
    converter's opt-in, and the marker never appears; the trusting torch.load creates it (the
    payload is live), in both torch file formats. Fails if a file torch's weights-only load
    refuses is then read with torch.load(weights_only=False) and the real pickle module (the
    default before torch 2.6), as Detectron2's checkpointer does."""
    marker = tmp_path / "marker"
    path = payloads.planted_checkpoint(tmp_path / "evil.pth", marker, legacy_format)
    message = _refused(load_torch_file, path, payloads.OPENS)
    assert "tools/convert_checkpoint.py --allow-pickle" in message
    assert not marker.exists()
    _trusting_torch_load(path)
    assert marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_a_planted_model_zoo_pickle_is_refused_and_never_runs(tmp_path, protocol):
    """A Detectron2-format .pkl whose "__author__" unpickles as a call of open() is refused after
    its arrays, and the marker never appears; Detectron2's own read (pickle.load) creates it.
    Fails if .pkl files go through pickle.load as in DetectionCheckpointer._load_file."""
    marker = tmp_path / "marker"
    path = payloads.planted_model_zoo_pkl(tmp_path / "evil.pkl", marker, protocol)
    _refused(load_pickle_file, path, payloads.OPENS)
    assert not marker.exists()
    _trusting_pickle_load(path)
    assert marker.exists()


@pytest.mark.parametrize("name", ["evil.pkl", "evil.pth"])
def test_numpy_is_admitted_by_its_array_functions_not_by_its_module(tmp_path, name):
    """numpy.load(file, None, True) fully unpickles another file: a reader that admits any
    global of the numpy module (e.g. by the prefix "numpy.") runs it. Only the functions NumPy
    pickles arrays, dtypes and scalars with are admitted."""
    marker = tmp_path / "marker"
    path = payloads.planted_numpy_load(tmp_path / name, marker)
    load = load_pickle_file if name.endswith(".pkl") else load_torch_file
    _refused(load, path, payloads.NUMPY_LOADS)
    assert not marker.exists()
    (_trusting_pickle_load if name.endswith(".pkl") else _trusting_torch_load)(path)
    assert marker.exists()


def test_a_torchscript_archive_is_refused(tmp_path):
    """A TorchScript archive named like a checkpoint is refused before torch.load, which hands
    it to torch.jit.load (running the archive's code) even with weights_only=True before torch
    2.6. Fails if load_torch_file lets torch.load see it first."""
    path = tmp_path / "model_final.pth"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    _refused(load_torch_file, path, "TorchScript")


def test_a_planted_config_is_refused_and_never_runs(tmp_path):
    """A run's config.yaml with one added line, a !!python/object/apply tag calling open(), is
    refused naming the file, the tag and its line, and the marker never appears; Detectron2's
    LazyConfig.load (yaml.unsafe_load) creates it. Fails if load_config_file hands .yaml files
    to LazyConfig.load."""
    marker = tmp_path / "marker"
    saved = tmp_path / "saved.yaml"
    LazyConfig.save(LazyConfig.load("configs/Shapes/atss_tiny_shapes.py"), str(saved))
    text = saved.read_text()
    path = payloads.planted_config(tmp_path / "config.yaml", marker, text)
    line = text.count("\n") + 1
    tag = "!!python/object/apply:builtins.open"
    message = _refused(load_config_file, path, f"the tag {tag} (line {line})")
    assert "a .py config" in message
    assert not marker.exists()
    LazyConfig.load(str(path))
    assert marker.exists()


SHAPE_SPEC = "detectron2.layers.shape_spec.ShapeSpec"


@pytest.mark.parametrize(
    "value, tag",
    [
        ("!!python/object/apply:os.system ['true']", "!!python/object/apply:os.system"),
        ("!!python/object/new:os.system ['true']", "!!python/object/new:os.system"),
        ("!!python/name:os.system ''", "!!python/name:os.system"),
        ("!!python/module:os ''", "!!python/module:os"),
        ("!!python/tuple [1, 2]", "!!python/tuple"),
        # The admitted class, but through Python's object protocol (apply/new) or under
        # another module's name.
        (f"!!python/object/apply:{SHAPE_SPEC} [32]", f"!!python/object/apply:{SHAPE_SPEC}"),
        (f"!!python/object/new:{SHAPE_SPEC} [32]", f"!!python/object/new:{SHAPE_SPEC}"),
        ("!!python/object:os.ShapeSpec {channels: 32}", "!!python/object:os.ShapeSpec"),
        ("!local {channels: 32}", "!local"),
    ],
)
def test_every_tag_but_the_admitted_objects_is_refused(tmp_path, value, tag):
    """Only !!python/object:<an admitted class> builds an object. Fails if the loader admits
    Python tags by prefix (all of !!python/object*, or any name under detectron2.), if it builds
    an admitted class through apply/new (arbitrary arguments, __new__ and __setstate__), or if it
    lets PyYAML's own multi-line error through for a tag it does not know."""
    path = tmp_path / "config.yaml"
    path.write_text(f"model:\n  a: 1\n  b: {value}\n")
    _refused(load_config_file, path, f"the tag {tag} (line 3)")


# --- Legitimate files -------------------------------------------------------------------------


def _checkpoint_of_this_project(folder):
    """What the train loop's checkpointer writes: the model, Detectron2's trainer state (the
    optimizer with momentum buffers, the LR scheduler hook), RNGState and the config record."""
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    trainer = SimpleTrainer(model, [], optimizer)
    scheduler = LRMultiplier(
        optimizer, MultiStepParamScheduler([1.0, 0.1], num_updates=10, milestones=[5]), 10
    )
    trainer.register_hooks([hooks.LRScheduler(optimizer, scheduler)])
    checkpointer = AtomicDetectionCheckpointer(
        model, str(folder), config_file="configs/x.py", trainer=trainer, rng=RNGState()
    )
    checkpointer.save("model_0000004", iteration=4)
    return folder / "model_0000004.pth"


@pytest.mark.parametrize("mmap", [False, True])
def test_the_checkpointers_own_checkpoint_loads(tmp_path, mmap):
    """Fails if the reader refuses or alters anything the train loop's checkpoints hold (e.g. a
    restricted reader without torch's tensor rebuild), memory-mapped or not."""
    path = _checkpoint_of_this_project(tmp_path)
    loaded = load_torch_file(str(path), mmap=mmap)
    _assert_same(loaded, _trusting_torch_load(path))
    assert sorted(loaded) == ["config_file", "iteration", "model", "rng", "trainer"]
    assert loaded["trainer"]["optimizer"]["state"]  # the momentum buffers


@pytest.mark.parametrize("legacy_format", [False, True], ids=["zip", "legacy"])
def test_an_old_checkpoint_with_numpys_rng_state_tuple_loads(tmp_path, legacy_format):
    """Checkpoints written before RNGState stored tensors hold np.random.get_state() as it
    comes: a tuple with a uint32 ndarray, which torch's weights-only load refuses (on torch
    2.3.1 it can rebuild no ndarray at all). It loads, and RNGState restores NumPy's generator
    from it. Fails on torch < 2.5 without the second, restricted read."""
    np.random.seed(7)
    expected = np.random.get_state()
    checkpoint = {
        "model": {"w": torch.ones(2)},
        "rng": {
            "python": random.getstate(),
            "numpy": expected,
            "torch": torch.get_rng_state(),
        },
        "iteration": 9,
    }
    path = tmp_path / "model_0000009.pth"
    torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy_format)
    loaded = load_torch_file(str(path), mmap=True)  # mmap: ignored for the legacy format
    _assert_same(loaded, _trusting_torch_load(path))
    np.random.seed(0)
    RNGState().load_state_dict(loaded["rng"])
    _assert_same(np.random.get_state(), expected)


class _Python2Pickler(pickle._Pickler):
    """Writes ``str`` and ``bytes`` as Python 2's ``str`` (SHORT_BINSTRING, BINSTRING), as the
    Detectron1-era model-zoo files hold them (the ImageNet backbones ``R-50.pkl``, ...)."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_python2_str(self, obj):
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = dispatch[bytes] = _save_python2_str


def _model_zoo_data():
    """A Detectron2 model-zoo file's content: arrays of several dtypes (one empty), a NumPy
    scalar, and the containers and numbers pickle writes as calls."""
    model = {
        "conv1_w": np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2),
        "res2_0_branch2a_bn_s": np.ones(300, np.float64),
        "fc1000_b": np.zeros(0, np.float32),
        "step": np.int64(5),
    }
    extra = {"classes": {"a", "b"}, "z": 1 + 2j, "raw": b"\x00\xff"}
    return {
        "model": model,
        "__author__": "Detectron2 Model Zoo",
        "matching_heuristics": True,
        **extra,
    }


@pytest.mark.parametrize("protocol", ["python2", 2, 4, 5])
def test_a_detectron2_model_zoo_pickle_loads(tmp_path, protocol):
    """Fails if an array, dtype or scalar global of some pickle protocol (protocol 5's
    _frombuffer, protocol 2's _codecs.encode for bytes, Python 2's __builtin__ names and latin1
    strings) is missing from what the restricted unpickler admits."""
    path = tmp_path / "model.pkl"
    data = _model_zoo_data()
    with open(path, "wb") as f:
        if protocol == "python2":
            del data["raw"]  # Python 2 has no bytes apart from str
            _Python2Pickler(f, protocol=2).dump(data)
        else:
            pickle.dump(data, f, protocol=protocol)
    loaded = load_pickle_file(str(path))
    _assert_same(loaded, _trusting_pickle_load(path))
    _assert_same(loaded, data)


def test_the_mobilenet_v2_file_loads():
    """The backbone's ImageNet file (a plain torchvision state dict) loads as torch's
    weights-only load reads it. Fails if the reader reshapes what it reads (Detectron2's
    _load_file wraps a plain state dict as {"model": ...}: that stays the checkpointer's job)."""
    path = str(mobilenet_v2_checkpoint_path())
    _assert_same(load_torch_file(path), torch.load(path, map_location="cpu", weights_only=True))


@pytest.mark.parametrize("config", RUN_CONFIGS)
def test_saved_configs_load_as_lazyconfig_loads_them(tmp_path, config):
    """Each config's LazyConfig.save output (what a run folder's config.yaml is) loads into the
    DictConfig LazyConfig.load builds from it, ShapeSpec values included. Fails if a saved
    config holds an object the safe loader does not admit, or if the result differs in a value,
    a type or the allow_objects flag."""
    path = str(tmp_path / "config.yaml")
    LazyConfig.save(LazyConfig.load(config), path)
    expected, loaded = LazyConfig.load(path), load_config_file(path)
    _assert_same(_plain(loaded), _plain(expected))
    assert loaded._get_flag("allow_objects") is expected._get_flag("allow_objects") is True


def test_a_py_config_is_left_to_lazyconfig_load():
    """A .py config is code, run by LazyConfig.load (relative imports resolved from its
    folder). Fails if load_config_file reads every config as YAML."""
    config = "configs/Shapes/atss_tiny_shapes.py"
    _assert_same(_plain(load_config_file(config)), _plain(LazyConfig.load(config)))


def _plain(cfg):
    """``cfg`` as containers, with dataclass values (ShapeSpec) as instances of their class."""
    return OmegaConf.to_container(cfg, structured_config_mode=SCMode.INSTANTIATE)
