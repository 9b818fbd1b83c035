"""Loading a LazyConfig the way every entry point does: one home for that rule.

``train_net.py``, ``demo.py``, ``tools/export_model.py`` and ``tools/validate_dataset.py``
all load a config file, apply ``key=value`` overrides, and then check the COCO-format files a
``configs/Custom`` config was given (``dataset.{train,test}.{json_file,image_root}=...``) and
take the class count from them. Nothing else is registered and no file is touched: a config's
loaders register and build the datasets they name when instantiated
(:mod:`atss.data.builtin`, :func:`atss.data.config_datasets.get_checked_coco_json_dicts`), which is
what lets Detectron2's own tools run our configs.
"""

import os
from typing import List, Optional, Sequence

from detectron2.config import instantiate
from torch import nn

from atss.data.builtin import ensure_registered
from atss.data.config_datasets import register_datasets_from_config

from .checkpoint import AtomicDetectionCheckpointer
from .device import available_device
from .overrides import load_checked_config
from .weights import load_trained_weights

__all__ = [
    "NO_WEIGHTS",
    "RANDOM",
    "START",
    "TRAINED",
    "build_model",
    "config_dataset_names",
    "load_config",
]

# What build_model loads into the model (its ``weights`` argument).
TRAINED = "trained"  # cfg.train.init_checkpoint, a whole trained model, or WeightsError
RANDOM = "random"  # nothing: the user asked for --random-weights
NO_WEIGHTS = "none"  # nothing yet: training loads its start through its checkpointer
START = "start"  # cfg.train.init_checkpoint as a training start: any part of a model, or nothing


def load_config(config_file: str, opts: Sequence[str] = (), *, data_splits: Sequence[str] = ()):
    """Load ``config_file``, apply ``opts`` and check the data of its ``dataset`` node.

    Args:
        config_file: a LazyConfig ``.py`` / ``.yaml`` file.
        opts: ``key=value`` overrides, in order; one whose key the config does not have is
            refused (:func:`~.overrides.check_override`).
        data_splits: the splits of a ``dataset`` node (``configs/Custom``) that must be given,
            e.g. ``("train", "test")`` for training, ``("test",)`` for evaluation, ``()`` when any
            given split will do (demo, export, validation). Configs without a ``dataset`` node
            are not affected.

    Returns:
        the config, with ``model.num_classes`` the number taken from the data when the config
        reads it from its ``dataset`` node (so that demo and export build the right head
        without reading the data). A run's own config (``classes.json`` beside it,
        :mod:`.run_folder`) loaded without ``"train"`` in ``data_splits`` takes the class count
        from that file and reads neither split unless ``data_splits`` names it (the data may
        be gone); a given test split must have the run's categories. Raises
        :class:`atss.data.DatasetError` naming the key and the path when a given file or
        folder does not exist or the splits' categories differ, and
        :class:`~.overrides.ConfigError` for a missing config file or an unknown override key.
    """
    cfg = load_checked_config(config_file, list(opts))
    run_classes = None
    if "dataset" in cfg and "train" not in data_splits:
        run_classes = _run_classes(config_file, cfg, data_splits)
    register_datasets_from_config(cfg, required=tuple(data_splits), model_classes=run_classes)
    return cfg


def build_model(
    cfg, weights: str = TRAINED, device: Optional[str] = None, *, what: str = "run"
) -> nn.Module:
    """Instantiate ``cfg.model`` on ``device`` with its weights: the one place a model is built.

    Args:
        cfg: a config from :func:`load_config`.
        weights: :data:`TRAINED` — load ``cfg.train.init_checkpoint``, which must fill every
            model tensor (:func:`~.weights.load_trained_weights`; raises
            :class:`~.weights.WeightsError` naming the key otherwise); :data:`RANDOM` — keep the
            random initialisation (``--random-weights``); :data:`NO_WEIGHTS` — load nothing
            here: a training run loads its start (e.g. an ImageNet backbone, a part of the
            model) or its last checkpoint through its checkpointer; :data:`START` — load
            ``cfg.train.init_checkpoint`` as training would start from it, without resuming
            (any part of a model, or nothing when empty), for tools that time training.
        device: where the model goes; None means ``cfg.train.device``, resolved at run time
            (CUDA when available, else the CPU: :func:`~.device.available_device`).
        what: the verb the weights messages use ("export", "evaluate", ...).

    Returns:
        the model on ``device``: in eval mode with :data:`TRAINED` or :data:`RANDOM`, in train
        mode (as instantiated) with :data:`NO_WEIGHTS` and :data:`START`.
    """
    if weights not in (TRAINED, RANDOM, NO_WEIGHTS, START):
        raise ValueError(
            f"weights={weights!r}: expected one of "
            f"{TRAINED!r}, {RANDOM!r}, {NO_WEIGHTS!r}, {START!r}"
        )
    if device is None:
        device = available_device(cfg.train.get("device", None))
    model = instantiate(cfg.model)
    if weights == START:
        AtomicDetectionCheckpointer(model).load(cfg.train.get("init_checkpoint", ""))
    if weights in (NO_WEIGHTS, START):
        return model.to(device)
    load_trained_weights(model, cfg, weights == RANDOM, what)
    return model.to(device).eval()


def _run_classes(config_file: str, cfg, data_splits: Sequence[str]):
    """``(classes, where)`` of the run folder ``config_file`` stands in (its ``classes.json``),
    None outside one. A run's config names the data it was trained and tested on; a tool that
    does not train needs them no more: ``dataset.train`` is emptied (the loaders check every
    given split), and ``dataset.test`` too unless the tool reads it (``--eval-only``), and the
    classes come from the run."""
    from .run_folder import CLASSES_FILE, read_run_classes

    folder = os.path.dirname(os.path.abspath(config_file))
    classes = read_run_classes(folder)
    if classes is None:
        return None
    for split in ("train", "test"):
        if split not in data_splits:
            cfg.dataset[split] = {"json_file": "", "image_root": ""}
    return classes, os.path.join(folder, CLASSES_FILE)


def config_dataset_names(cfg) -> List[str]:
    """The datasets that the config's train and test loaders read, in that order, registered
    (the project's own are registered here, without building them; a split of a
    ``configs/Custom`` config that was not given is not registered, so not listed).
    """
    names: List[str] = []
    for split in ("train", "test"):
        dataset = cfg.get("dataloader", {}).get(split, {}).get("dataset", {})
        given = dataset.get("names", ()) if hasattr(dataset, "get") else ()
        for name in [given] if isinstance(given, str) else list(given):
            if ensure_registered(name) and name not in names:
                names.append(name)
    return names
