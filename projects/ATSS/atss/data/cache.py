"""Where generated datasets live on disk, and how they are published atomically.

The cache root is ``$ATSS_CACHE``, else ``$XDG_CACHE_HOME/atss`` (``~/.cache/atss``): never
inside the checkout, whose files a run does not read. Each dataset family has a subfolder
(``treecrowns/``, ``shapes/``) of folders named by a *content key*, a hash of everything the
output depends on (source files, parameters, format version), written when the dataset is first
read. A folder is built under a temporary name and renamed into place when complete, so a reader
never sees a half-written dataset and concurrent builders (several data-loader processes) cannot
corrupt each other: the first rename wins, the others discard their copy.
"""

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional

from ..fileio import atomic_write

__all__ = ["default_cache_root", "hash_file", "build_dir_atomically", "write_json_atomically"]

# Marker written last into a completed cache folder; its absence means "incomplete, rebuild".
MANIFEST = "manifest.json"


def default_cache_root() -> Path:
    """Return the cache root for generated datasets (see the module docstring for the order)."""
    env = os.environ.get("ATSS_CACHE")
    if env:
        return Path(env).expanduser()
    user_cache = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(user_cache).expanduser() / "atss"


_HASH_MEMO = {}


def hash_file(path) -> str:
    """sha256 of a file's bytes, memoised per (path, size, mtime) within the process.

    Hashing contents (not just mtimes) keeps the cache valid when a package is reinstalled with
    identical files, and invalidates it when a file is edited in place.
    """
    path = Path(path)
    st = path.stat()
    memo_key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    digest = _HASH_MEMO.get(memo_key)
    if digest is None:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        digest = _HASH_MEMO[memo_key] = h.hexdigest()
    return digest


def write_json_atomically(obj, path) -> None:
    """Write ``obj`` as JSON to ``path`` with :func:`atss.fileio.atomic_write` (readers never see
    a partial file). Keys are sorted and floats printed by ``json`` so equal inputs give
    byte-identical files."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    atomic_write(str(path), lambda f: f.write(text.encode()))


def is_complete(folder) -> bool:
    """True when ``folder`` is a finished cache folder (its manifest exists)."""
    return (Path(folder) / MANIFEST).is_file()


def build_dir_atomically(final_dir, build_fn: Callable[[Path], dict]) -> Path:
    """Create ``final_dir`` by running ``build_fn(tmp_dir)`` in a sibling temporary folder, then
    renaming it into place. Does nothing when ``final_dir`` is already complete.

    Args:
        final_dir: folder to create.
        build_fn: writes the dataset into the given folder and returns a JSON-serialisable
            manifest, written last as ``manifest.json``.

    Returns:
        Path: ``final_dir``.
    """
    final_dir = Path(final_dir)
    if is_complete(final_dir):
        return final_dir
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    if final_dir.exists():
        # Left over by an interrupted build from before atomic publishing, or damaged by hand.
        shutil.rmtree(final_dir, ignore_errors=True)
    tmp_dir = Path(tempfile.mkdtemp(dir=final_dir.parent, prefix=f".tmp-{final_dir.name}-"))
    try:
        manifest = build_fn(tmp_dir)
        write_json_atomically(manifest, tmp_dir / MANIFEST)
        try:
            os.rename(tmp_dir, final_dir)
        except OSError:
            # Another process published the same key first; its copy is equivalent.
            if not is_complete(final_dir):
                raise
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir, ignore_errors=True)
    return final_dir


def resolve_root(root: Optional[os.PathLike], family: str) -> Path:
    """Cache folder of a dataset family: ``root`` if given, else ``default_cache_root()/family``."""
    return Path(root).expanduser() if root is not None else default_cache_root() / family
