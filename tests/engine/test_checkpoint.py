"""atss.engine.checkpoint: AtomicDetectionCheckpointer on local and remote paths (and the
atomic write it shares with the dataset cache), every weights file kind read as Detectron2 reads
it but through the safe readers, the one-line summary of weights that do not fit, the config
identity a checkpoint records and the --resume check on hand-written run folders, and the one
line a resume under another LR schedule logs (the train loop end to end:
tests/test_train_net.py; planted files given to every entry point: tests/test_planted_files.py).
"""

import logging
import os
import pickle
import random

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate
from fvcore.common.checkpoint import _IncompatibleKeys
from iopath.common.file_io import PathHandler, PathManager

from atss.engine.checkpoint import (
    AtomicDetectionCheckpointer,
    RNGState,
    ScheduleRecord,
    check_resume,
    config_identity,
    incompatible_keys_message,
)
from atss.fileio import atomic_write
from tests.atss_testing import tiny_model

TREECROWNS = "configs/TreeCrowns/atss_MNV2_FPN_treecrowns.py"


class _FolderHandler(PathHandler):
    """``remote://a/b`` stands for ``<root>/a/b``: a store that only PathManager can reach."""

    def __init__(self, root):
        super().__init__()
        self.root = root
        self.opened = []

    def _get_supported_prefixes(self):
        return ["remote://"]

    def _local(self, path):
        return os.path.join(self.root, path[len("remote://") :])

    def _open(self, path, mode="r", buffering=-1, **kwargs):
        self.opened.append(path)
        return open(self._local(path), mode)

    def _mkdirs(self, path, **kwargs):
        os.makedirs(self._local(path), exist_ok=True)

    def _exists(self, path, **kwargs):
        return os.path.exists(self._local(path))

    def _isfile(self, path, **kwargs):
        return os.path.isfile(self._local(path))

    def _get_local_path(self, path, **kwargs):
        return self._local(path)


def test_remote_checkpoint_paths_go_through_the_path_manager(tmp_path, monkeypatch):
    """A checkpoint folder with a scheme (s3://, manifold://, ...) is written through fvcore's
    PathManager, as Detectron2's own checkpointer does, and loads back. Catches a checkpointer
    that writes every path with local file operations (it would create a folder literally
    named 'remote:' in the working directory and never reach the store)."""
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "store"
    handler = _FolderHandler(str(store))
    manager = PathManager()
    manager.register_handler(handler)
    model = torch.nn.Linear(3, 2)
    ckpt = AtomicDetectionCheckpointer(model, "remote://run")
    ckpt.path_manager = manager
    ckpt.save("model_0000004", iteration=4)
    assert handler.opened == ["remote://run/model_0000004.pth", "remote://run/last_checkpoint"]
    assert (store / "run" / "last_checkpoint").read_text() == "model_0000004.pth"
    saved = torch.load(store / "run" / "model_0000004.pth")
    assert saved["iteration"] == 4
    torch.testing.assert_close(saved["model"]["weight"], model.weight.detach())
    assert not (tmp_path / "remote:").exists()


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path):
    """The helper behind the checkpoints and the dataset cache's JSON: a failing write leaves
    the previous content and no temporary file; a new write removes a leftover temporary file
    of a killed writer. Catches writing straight into the target."""
    path = tmp_path / "sub" / "a.json"
    atomic_write(str(path), lambda f: f.write(b"old"))

    def fail(f):
        f.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(str(path), fail)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.json"]
    (path.parent / ".a.json.killed.tmp").write_bytes(b"half")
    atomic_write(str(path), lambda f: f.write(b"new"))
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.json"]
    assert path.read_bytes() == b"new"


def _run_folder(path, recorded):
    """A run folder whose last checkpoint was written under ``recorded`` (None: no record)."""
    path.mkdir(parents=True, exist_ok=True)
    checkpointer = AtomicDetectionCheckpointer(
        torch.nn.Linear(2, 1), str(path), config_file=recorded or ""
    )
    checkpointer.save("model_0000009", iteration=9)
    return str(path)


def test_config_identity_is_the_same_in_every_checkout(tmp_path, monkeypatch):
    """Two clones (or two cluster nodes with the repository at different paths) name the same
    config alike, relative or absolute. Fails if the identity is the absolute path: every node
    but the one that wrote the checkpoint would refuse to resume."""
    for root in ["/home/a/atss", "/scratch/b/clone"]:
        path = f"{root}/configs/COCO/ablations/topk_3.py"
        assert config_identity(path) == "configs/COCO/ablations/topk_3.py"
    monkeypatch.chdir(tmp_path)
    assert config_identity("configs/Shapes/x.py") == "configs/Shapes/x.py"
    assert config_identity("./configs/../configs/Shapes/x.py") == "configs/Shapes/x.py"
    # Outside any configs/ folder: the absolute path (a file named configs.py is no folder).
    assert config_identity("mine/configs.py") == str(tmp_path / "mine" / "configs.py")


def test_resume_refuses_a_checkpoint_recorded_under_another_config(tmp_path):
    """Fails if check_resume compares anything weaker than the config's path under configs/
    (its file name alone: two folders may hold a file of the same name), or nothing."""
    out = _run_folder(tmp_path / "run", "configs/COCO/atss_R_50_FPN_1x.py")
    with pytest.raises(ValueError) as e:
        check_resume(out, "/elsewhere/configs/COCO/ablations/topk_3.py")
    message = str(e.value)
    assert "configs/COCO/atss_R_50_FPN_1x.py" in message
    assert "configs/COCO/ablations/topk_3.py" in message
    assert os.path.join(out, "model_0000009.pth") in message
    with pytest.raises(ValueError, match="configs/Custom/atss_R_50_FPN_1x.py"):
        check_resume(out, "configs/Custom/atss_R_50_FPN_1x.py")
    check_resume(out, "/another/clone/configs/COCO/atss_R_50_FPN_1x.py")  # same config: fine


def test_resume_without_a_checkpoint_or_record_is_not_refused(tmp_path, caplog):
    check_resume(str(tmp_path / "fresh"), "configs/COCO/atss_R_50_FPN_1x.py")  # no folder
    out = _run_folder(tmp_path / "old", None)  # written before checkpoints recorded a config
    logger = logging.getLogger("detectron2")  # may not propagate (Detectron2's setup_logger)
    logger.addHandler(caplog.handler)
    try:
        check_resume(out, "configs/COCO/atss_R_50_FPN_1x.py")
    finally:
        logger.removeHandler(caplog.handler)
    assert "does not record the config" in caplog.text


class _Trainer:
    iter = 0


def _record(max_iter, *overrides):
    cfg = LazyConfig.apply_overrides(
        LazyConfig.load(TREECROWNS), [f"train.max_iter={max_iter}", *overrides]
    )
    return ScheduleRecord(cfg, instantiate(cfg.lr_multiplier), _Trainer())


def test_resuming_under_another_schedule_says_what_the_lr_does_in_one_line():
    """The issue's case: a finished 1100-iteration tree-crown run (LR 0.0025, steps 800 / 1000:
    x0.01 at the end) resumed with train.max_iter=2200: every step moves to twice its
    iteration, so the LR of iteration 1100 goes back from 2.5e-05 to 0.0025. The line names the
    old and new values; the same schedule, or a checkpoint without a record, logs nothing.
    Fails if the checkpoint does not record its schedule, or the line compares the new
    schedule with itself."""
    saved = _record(1100)
    saved.trainer.iter = 1099  # model_final: written after the last iteration
    resumed = _record(2200)
    resumed.load_state_dict(saved.state_dict())
    assert resumed.change(1100, 0.0025) == (
        "--resume under another schedule than the checkpoint's (train.max_iter 1100 -> 2200): "
        "the LR at iteration 1100 goes from 2.5e-05 to 0.0025"
    )
    same = _record(1100)
    same.load_state_dict(saved.state_dict())
    assert same.change(1100, 0.0025) is None
    assert _record(2200).change(1100, 0.0025) is None  # nothing recorded: nothing to compare
    steps = _record(1100, "lr_multiplier.scheduler.milestones=[500,1000]")
    saved.trainer.iter = 599
    steps.load_state_dict(saved.state_dict())
    assert steps.change(600, 0.0025) == (
        "--resume under another schedule than the checkpoint's (lr_multiplier.scheduler."
        "milestones [800, 1000] -> [500, 1000]): the LR at iteration 600 goes from 0.0025 to "
        "0.00025"
    )


# ------------------------------------------------------------------------------ reading weights
def _model_zoo_files(folder, state):
    """``state`` (a model's state dict) written as each file kind Detectron2's checkpointer
    reads by its extension: a Detectron2 model-zoo .pkl, a Caffe2 detection .pkl (arrays under
    "blobs", with the solver's momentum), a Caffe2 ImageNet .pkl (arrays at the top) and a
    pycls .pyth (tensors under "model_state", with BatchNorm's step counter)."""
    arrays = {k: v.numpy() for k, v in state.items()}
    momentum = {f"{k}_momentum": np.zeros(1, np.float32) for k in list(arrays)[:2]}
    contents = {
        "detectron2.pkl": {"model": arrays, "__author__": "Detectron2 Model Zoo"},
        "caffe2_detection.pkl": {"blobs": {**arrays, **momentum}, "cfg": "TRAIN: ..."},
        "caffe2_imagenet.pkl": {**arrays, **momentum},
    }
    paths = []
    for name, content in contents.items():
        paths.append(folder / name)
        with open(paths[-1], "wb") as f:
            pickle.dump(content, f, protocol=2)
    paths.append(folder / "pycls.pyth")
    torch.save({"model_state": {**state, "bn.num_batches_tracked": torch.tensor(3)}}, paths[-1])
    return paths


def test_every_model_zoo_file_kind_reads_as_detectron2_reads_it(tmp_path):
    """The checkpointer's reading of .pkl (Detectron2's and Caffe2's model zoos) and .pyth
    files gives what Detectron2's own (trusting) reading gives. Fails if the reshaping copied
    from DetectionCheckpointer._load_file drifts from it (the "blobs" unwrapping, the dropped
    *_momentum arrays and num_batches_tracked, the Caffe2 and name-matching marks)."""
    model = torch.nn.Linear(3, 2)
    for path in _model_zoo_files(tmp_path, model.state_dict()):
        ours = AtomicDetectionCheckpointer(model)._load_file(str(path))
        theirs = DetectionCheckpointer(model)._load_file(str(path))
        assert ours.keys() == theirs.keys() and ours["model"].keys() == theirs["model"].keys()
        for key, value in theirs["model"].items():
            assert np.array_equal(np.asarray(ours["model"][key]), np.asarray(value)), key
        assert {k: v for k, v in ours.items() if k != "model"} == {
            k: v for k, v in theirs.items() if k != "model"
        }, path.name


def test_a_model_zoo_pickle_loads_into_a_model_through_the_checkpointer(tmp_path):
    """A Detectron2 model-zoo .pkl of NumPy arrays (the tiny model's weights) fills every tensor
    of a fresh model, through Detectron2's name matching. Fails if .pkl files are refused or
    their arrays do not reach the model."""
    trained = tiny_model()
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(1.0)
    path = _model_zoo_files(tmp_path, trained.state_dict())[0]
    model = tiny_model()
    AtomicDetectionCheckpointer(model).load(str(path))
    for key, value in trained.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_an_old_checkpoint_with_numpys_rng_state_tuple_resumes(tmp_path):
    """A checkpoint written before RNGState stored tensors (NumPy's state as the tuple with a
    uint32 ndarray that np.random.get_state() returns, which torch's weights-only load refuses)
    passes the --resume check and restores NumPy's generator when resumed. Fails if the
    checkpointer or the resume check reads .pth files with torch.load(weights_only=True) alone
    (the default from torch 2.6)."""
    model = torch.nn.Linear(3, 2)
    np.random.seed(7)
    expected = np.random.get_state()
    rng = {"python": random.getstate(), "numpy": expected, "torch": torch.get_rng_state()}
    torch.save(
        {"model": model.state_dict(), "rng": rng, "config_file": "configs/x.py"},
        tmp_path / "model_0000009.pth",
    )
    (tmp_path / "last_checkpoint").write_text("model_0000009.pth")
    check_resume(str(tmp_path), "configs/x.py")
    np.random.seed(0)
    checkpointer = AtomicDetectionCheckpointer(model, str(tmp_path), rng=RNGState())
    checkpointer.resume_or_load("", resume=True)
    state = np.random.get_state()
    assert state[0] == expected[0] and np.array_equal(state[1], expected[1])
    assert state[2:] == expected[2:]


def test_weights_that_do_not_fit_are_counted_by_module_in_one_line():
    """Each reason counted by module, the module named by the longest path its tensors share
    (the classifier's two tensors as head.cls_score, two backbone stages as
    backbone.bottom_up), a tensor of another shape counted once (fvcore reports it missing as
    well), no tensor named. Fails if keys are listed, grouped at a fixed depth, or counted
    twice."""
    incompatible = _IncompatibleKeys(
        missing_keys=[
            "backbone.bottom_up.res2.0.conv1.weight",
            "backbone.bottom_up.res3.0.conv1.weight",
            "head.cls_score.weight",
            "head.cls_score.bias",
        ],
        unexpected_keys=["roi_heads.box_predictor.cls_score.weight", "pixel_mean"],
        incorrect_shapes=[
            ("head.cls_score.weight", (81, 8, 3, 3), (3, 8, 3, 3)),
            ("head.cls_score.bias", (81,), (3,)),
        ],
    )
    assert incompatible_keys_message(incompatible, [f"k{i}" for i in range(10)]) == (
        "Loaded 6 of 10 model tensors (4 keep their initialisation): "
        "head.cls_score: 2 of another shape, backbone.bottom_up: 2 missing, "
        "pixel_mean: 1 unexpected, roi_heads.box_predictor.cls_score: 1 unexpected"
    )
    assert incompatible_keys_message(_IncompatibleKeys([], [], []), ["k"]) == ""
