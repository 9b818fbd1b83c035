"""Writing a file so that readers never see a partial one: the dataset caches and the
checkpoints use this one helper."""

import glob
import os
import tempfile
from typing import BinaryIO, Callable

__all__ = ["atomic_write"]


def atomic_write(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(binary_file)`` on a temporary file beside ``path``, fsync it, then rename it
    over ``path`` (``os.replace``). At every moment ``path`` is either absent, the old file or
    the complete new one, also when the process is killed or the disk fills up mid-write.

    A process killed mid-write (SIGKILL, OOM killer) leaves its hidden temporary file
    (``.<name>.*.tmp``) behind; the next write of the same ``path`` removes such leftovers, so
    they never pile up. Hence one writer per ``path`` at a time. Parent folders are created.
    Local paths only (``os.replace``); see :class:`atss.engine.AtomicDetectionCheckpointer` for
    remote ones.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    prefix = f".{os.path.basename(path)}."
    for stale in glob.glob(os.path.join(glob.escape(folder), glob.escape(prefix) + "*.tmp")):
        os.remove(stale)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
