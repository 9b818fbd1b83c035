"""Planted files for the tests that a reader never runs code: each, loaded the trusting way
(``pickle.load``, ``torch.load(weights_only=False)``, ``yaml.unsafe_load``), creates the file
``marker``; loaded safely, it is refused and ``marker`` never appears."""

import pickle

import numpy as np
import torch


class _Opens:
    """Pickles as the call ``open(marker, "w")`` (the global ``io.open``)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


class _NumpyLoads:
    """Pickles as the call ``numpy.load(inner, None, True)``: NumPy's own full unpickle
    (``allow_pickle=True``) of the file ``inner``."""

    def __init__(self, inner):
        self.inner = str(inner)

    def __reduce__(self):
        return np.load, (self.inner, None, True)


# The global each planted pickle names first (what the refusal must name).
OPENS = "io.open"
NUMPY_LOADS = "numpy.load"


def planted_checkpoint(path, marker, legacy_format=False):
    """A ``.pth`` checkpoint (torch's zip format, or with ``legacy_format`` the one before
    torch 1.6) holding a model state dict and then, beside it, the call of :class:`_Opens`."""
    data = {"model": {"w": torch.ones(2)}, "trainer": _Opens(marker)}
    torch.save(data, path, _use_new_zipfile_serialization=not legacy_format)
    return path


def planted_model_zoo_pkl(path, marker, protocol=2):
    """A Detectron2 model-zoo ``.pkl`` (NumPy arrays under ``"model"``, ``"__author__"``) whose
    ``"__author__"`` is the call of :class:`_Opens`, after the arrays."""
    data = {"model": {"w": np.ones((2, 3), np.float32)}, "__author__": _Opens(marker)}
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=protocol)
    return path


def planted_numpy_load(path, marker):
    """A ``.pkl`` (or with a ``.pth`` name, the same as a torch checkpoint) whose only global is
    ``numpy.load``, on a second planted pickle (``<path>.inner``): refused only by a reader that
    admits NumPy's functions by name rather than the whole ``numpy`` module."""
    inner = planted_model_zoo_pkl(f"{path}.inner", marker)
    if str(path).endswith(".pth"):
        torch.save({"model": {"w": torch.ones(2)}, "x": _NumpyLoads(inner)}, path)
    else:
        with open(path, "wb") as f:
            pickle.dump({"model": _NumpyLoads(inner)}, f, protocol=2)
    return path


def opens_tag(marker):
    """A YAML value that ``yaml.unsafe_load`` turns into the call ``open(marker, "w")``."""
    return f"!!python/object/apply:builtins.open [{str(marker)!r}, w]"


def planted_config(path, marker, config_yaml):
    """The saved config ``config_yaml`` (its text) with one line added: a key whose value is
    :func:`opens_tag`."""
    with open(path, "w") as f:
        f.write(config_yaml + f"payload: {opens_tag(marker)}\n")
    return path
