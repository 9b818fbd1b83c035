"""AtomicDetectionCheckpointer on local and remote paths, and the one atomic-write helper
(atss.fileio.atomic_write) it shares with the dataset cache."""

import os

import pytest
import torch
from iopath.common.file_io import PathHandler, PathManager

from atss.engine import AtomicDetectionCheckpointer
from atss.fileio import atomic_write


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
