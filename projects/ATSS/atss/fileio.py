"""Reading and writing files safely.

Writing: :func:`atomic_write`, so that readers never see a partial file (the dataset caches and
the checkpoints).

Reading a file someone else wrote, without running code. A weights file is a pickle, and
unpickling calls whatever functions the file names; a ``.yaml`` config read with
``yaml.unsafe_load`` (Detectron2's ``LazyConfig.load``) builds whatever a Python tag names. The
readers here build data only:

* :func:`load_torch_file` (``.pth``: any file ``torch.save`` wrote) and :func:`load_pickle_file`
  (``.pkl``: Detectron2's model-zoo format) admit tensors, NumPy arrays, numbers, strings and
  containers;
* :func:`load_config_file` reads a ``.yaml`` config with YAML's safe loader plus the plain
  objects a saved config holds (:data:`CONFIG_OBJECTS`); ``.py`` configs are code and go to
  ``LazyConfig.load``.

Anything else raises :class:`UnsafeFileError` before it is built, with one line naming the file,
what was refused and the way out. The one place in the project that fully unpickles a file is
the converter's explicit opt-in, ``tools/convert_checkpoint.py --allow-pickle``, for a file its
owner trusts. See ``docs/published_weights.md``.
"""

import glob
import os
import pickle
import tempfile
import types
import zipfile
from collections import OrderedDict
from typing import Any, BinaryIO, Callable, Dict

import numpy as np
import torch
import yaml
from detectron2.config import LazyConfig
from detectron2.layers import ShapeSpec
from detectron2.utils.file_io import PathManager
from omegaconf import OmegaConf

__all__ = [
    "CONFIG_OBJECTS",
    "UnsafeFileError",
    "atomic_write",
    "load_config_file",
    "load_pickle_file",
    "load_torch_file",
]


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


class UnsafeFileError(ValueError):
    """A weights file or a ``.yaml`` config holds something beyond data; nothing was built."""


class _Refused(Exception):
    """Raised by a restricted reader at the first thing it does not admit (its name)."""


def _bytes_from_latin1(text: str, encoding: str) -> bytes:
    """``_codecs.encode(text, "latin1")``: how pickle protocol 2 writes ``bytes``."""
    if encoding != "latin1":
        raise _Refused(f"_codecs.encode(..., {encoding!r})")
    return text.encode("latin1")


def _numpy_globals() -> Dict[str, Any]:
    """What NumPy pickles arrays, dtypes and scalars with, by their NumPy 1 (``numpy.core``) and
    NumPy 2 (``numpy._core``) names; the functions are taken from NumPy's own ``__reduce__``
    rather than imported (``numpy.core`` is deprecated in NumPy 2)."""
    array = np.zeros(1, np.float32)
    found = {"numpy.ndarray": np.ndarray, "numpy.dtype": np.dtype}
    for module, function in [
        ("multiarray", array.__reduce__()[0]),  # _reconstruct, then ndarray.__setstate__
        ("multiarray", np.float32(0).__reduce__()[0]),  # scalar
        ("numeric", array.__reduce_ex__(5)[0]),  # _frombuffer (pickle protocol 5)
    ]:
        for core in ("numpy.core", "numpy._core"):
            found[f"{core}.{module}.{function.__name__}"] = function
    return found


# What the restricted unpickler builds from a .pkl file: containers and numbers that pickle
# writes as calls (protocol 2 and Python 2 pickles: sets, complex numbers, bytes) and NumPy's
# arrays. Every callable here builds a value from values; none reaches the file system or
# imports a module.
_PICKLE_GLOBALS = {
    "builtins.bytearray": bytearray,
    "builtins.bytes": bytes,
    "builtins.complex": complex,
    "builtins.frozenset": frozenset,
    "builtins.set": set,
    "collections.OrderedDict": OrderedDict,
    "_codecs.encode": _bytes_from_latin1,
    **_numpy_globals(),
}
# Beside those, what torch.save writes for tensors (storages are resolved by torch.load itself).
_TORCH_GLOBALS = {
    **_PICKLE_GLOBALS,
    "torch._utils._rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
    "torch._utils._rebuild_parameter": torch._utils._rebuild_parameter,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves a global only from :attr:`admitted` ("Restricting
    Globals" in Python's pickle documentation): every object it builds comes from an opcode
    (containers, numbers, strings) or from an admitted callable, so no other code runs."""

    admitted: Dict[str, Any] = _PICKLE_GLOBALS

    def find_class(self, module: str, name: str) -> Any:
        module = "builtins" if module == "__builtin__" else module  # Python 2 pickles
        found = self.admitted.get(f"{module}.{name}")
        if found is None:
            raise _Refused(f"{module}.{name}")
        return found


class _TorchUnpickler(_RestrictedUnpickler):
    admitted = _TORCH_GLOBALS


# The ``pickle_module`` torch.load is given for the second read of a .pth file.
_TORCH_PICKLE = types.SimpleNamespace(
    __name__=__name__,
    Unpickler=_TorchUnpickler,
    load=lambda f, **kwargs: _TorchUnpickler(f, **kwargs).load(),
)


def _refused_weights(path: str, refused: _Refused) -> UnsafeFileError:
    return UnsafeFileError(
        f"{path}: refused to unpickle {refused}: a weights file is read as tensors, NumPy "
        "arrays, numbers, strings and containers only, because unpickling anything else can "
        "run code. If you trust the file, rewrite it with `python tools/convert_checkpoint.py "
        f"--allow-pickle {path} OUT.pth` (the one place that fully unpickles a file) and load "
        "OUT.pth."
    )


def _is_torchscript(path: str) -> bool:
    """Whether the zip file ``path`` is a TorchScript archive: it holds ``constants.pkl`` beside
    ``data.pkl``, the test ``torch.load`` makes before handing it to ``torch.jit.load``."""
    with zipfile.ZipFile(path) as archive:
        return any(name.split("/", 1)[-1] == "constants.pkl" for name in archive.namelist())


def load_torch_file(path: str, *, mmap: bool = False) -> Any:
    """What ``torch.save`` wrote to the local file ``path``, built without running code; tensors
    on the CPU.

    First ``torch.load(weights_only=True)``: torch's own unpickler, which builds tensors,
    containers, numbers and strings. A file it refuses is read once more by a restricted
    unpickler that also builds NumPy arrays: checkpoints of this project written before
    :class:`atss.engine.RNGState` stored tensors hold NumPy's RNG state as a tuple with a uint32
    ``ndarray``. (Torch 2.3.1's weights-only unpickler takes no extra globals and rebuilds no
    ``ndarray``, hence a second reader rather than ``torch.serialization.safe_globals``, which
    torch 2.5 introduced.)

    A TorchScript archive is refused before either read: ``torch.load`` hands it to
    ``torch.jit.load``, which runs the archive's code, even with ``weights_only=True`` before
    torch 2.6.

    Args:
        mmap: memory-map the tensors instead of reading them, where the file allows it (torch's
            zip format, i.e. every file written by torch >= 1.6).

    Raises:
        UnsafeFileError: naming the file and the first global neither reader admits, or
            saying that the file is a TorchScript archive.
    """
    is_zip = zipfile.is_zipfile(path)
    if is_zip and _is_torchscript(path):
        raise UnsafeFileError(
            f"{path}: refused a TorchScript archive (torch.jit.save's format): loading it runs "
            "its code. A weights file is a state dict written by torch.save; load a TorchScript "
            "model with torch.jit.load if you trust it."
        )
    mmap = mmap and is_zip
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:
        pass  # a global torch does not admit: NumPy's, admitted below, or refused there
    try:
        return torch.load(
            path, map_location="cpu", weights_only=False, mmap=mmap, pickle_module=_TORCH_PICKLE
        )
    except _Refused as refused:
        raise _refused_weights(path, refused) from None


def load_pickle_file(path: str) -> Any:
    """The object in the pickle file ``path`` (Detectron2's model-zoo ``.pkl``: a dict of NumPy
    arrays, often under ``"model"`` beside ``"__author__"`` and ``"matching_heuristics"``),
    built by a restricted unpickler that admits containers, numbers, strings and NumPy arrays,
    dtypes and scalars only. Strings of Python 2 pickles are decoded as latin1, as Detectron2
    reads them.

    Raises:
        UnsafeFileError: naming the file and the first global refused, before anything of it
            is built.
    """
    with PathManager.open(path, "rb") as f:
        try:
            return _RestrictedUnpickler(f, encoding="latin1").load()
        except _Refused as refused:
            raise _refused_weights(path, refused) from None


# The objects a saved .yaml config may hold, by their Python tag. Detectron2's LazyConfig.save
# writes a dataclass value as `!!python/object:module.Class {field: value, ...}`; the config
# files under configs/ hold ShapeSpec values (the head's input_shape) and nothing else of the
# kind. Each is built by calling the class with the fields, not by Python's object protocol.
CONFIG_OBJECTS = {"detectron2.layers.shape_spec.ShapeSpec": ShapeSpec}
_PYTHON_OBJECT_TAG = "tag:yaml.org,2002:python/object:"


class _ConfigLoader(yaml.SafeLoader):
    """YAML's safe loader, plus :data:`CONFIG_OBJECTS`; any other tag beyond YAML's standard
    ones is refused (not only ``!!python/...``: a local ``!tag`` too)."""


def _construct_object(cls):
    return lambda loader, node: cls(**loader.construct_mapping(node, deep=True))


def _refuse_tag(loader: yaml.SafeLoader, node: yaml.Node):
    tag = node.tag.replace("tag:yaml.org,2002:", "!!")
    raise _Refused(f"the tag {tag} (line {node.start_mark.line + 1})")


for _name, _cls in CONFIG_OBJECTS.items():
    _ConfigLoader.add_constructor(_PYTHON_OBJECT_TAG + _name, _construct_object(_cls))
_ConfigLoader.add_constructor(None, _refuse_tag)  # every tag without a constructor


def load_config_file(path: str):
    """The config in ``path``, the same ``DictConfig`` as Detectron2's ``LazyConfig.load(path)``.

    A ``.yaml``/``.yml`` file (a run's saved ``config.yaml``) is read as data: YAML's safe
    loader, plus the objects of :data:`CONFIG_OBJECTS` by their tag. Any other file goes to
    ``LazyConfig.load``: a ``.py`` config is code, and users run it as such.

    Raises:
        UnsafeFileError: naming the file and the first tag refused, before anything is built.
    """
    if os.path.splitext(path)[1] not in (".yaml", ".yml"):
        return LazyConfig.load(path)
    with PathManager.open(path) as f:
        try:
            data = yaml.load(f, Loader=_ConfigLoader)
        except _Refused as refused:
            admitted = ", ".join(f"!!python/object:{name}" for name in CONFIG_OBJECTS)
            raise UnsafeFileError(
                f"{path}: refused {refused}: a .yaml config is read as data, plain YAML values "
                f"and {admitted} only, because a Python tag can run code. Write the value as "
                "plain YAML, or put code in a .py config."
            ) from None
    return OmegaConf.create(data, flags={"allow_objects": True})
