"""atss.engine.checkpoint: AtomicDetectionCheckpointer on local and remote paths (and the
atomic write it shares with the dataset cache), the config identity a checkpoint
records and the --resume check on hand-written run folders, and the one line a resume under
another LR schedule logs (the train loop end to end: tests/test_train_net.py)."""

import logging
import os

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from iopath.common.file_io import PathHandler, PathManager

from atss.engine.checkpoint import (
    AtomicDetectionCheckpointer,
    ScheduleRecord,
    check_resume,
    config_identity,
)
from atss.fileio import atomic_write

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
