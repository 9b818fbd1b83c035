"""Loading a config and building its model, as every entry point does.

:func:`load_config` reads a LazyConfig file, applies the ``key=value`` overrides after checking
each key (OmegaConf would create a misspelt key silently: :func:`check_override`), and checks
the data given to a ``configs/Custom`` config, taking the class count from them or, for a run's
own ``config.yaml``, from the run's ``classes.json``. :func:`build_model` is the one place a
model gets its weights: ``train.init_checkpoint`` must hold a whole trained model unless
``--random-weights`` asks for an untrained one (:func:`load_trained_weights`). The run folder,
fine-tuning and the weights rules: docs/own_data.md and docs/published_weights.md.
"""

import difflib
import inspect
import json
import logging
import os
from typing import List, Optional, Sequence, Tuple

from detectron2.config import LazyConfig, instantiate
from detectron2.utils.registry import locate
from fvcore.common.checkpoint import _filter_reused_missing_keys
from omegaconf import DictConfig, ListConfig
from torch import nn

from atss.data.builtin import ensure_registered
from atss.data.config_datasets import register_datasets_from_config
from atss.fileio import load_config_file

from .checkpoint import AtomicDetectionCheckpointer, incompatible_keys_message
from .device import available_device

__all__ = [
    "CLASSES_FILE",
    "ConfigError",
    "NO_WEIGHTS",
    "RANDOM",
    "RANDOM_WEIGHTS_FLAG",
    "START",
    "TRAINED",
    "WeightsError",
    "apply_checked_overrides",
    "build_model",
    "check_config_file",
    "check_override",
    "config_dataset_names",
    "load_checked_config",
    "load_config",
    "load_trained_weights",
    "read_run_classes",
]

logger = logging.getLogger(__name__)

CONFIG_EXTENSIONS = (".py", ".yaml", ".yml")
CLASSES_FILE = "classes.json"  # a run folder's class list, beside its config.yaml
RANDOM_WEIGHTS_FLAG = "--random-weights"
# Keys that code reads with a default when the config has none (Detectron2's common train dict,
# which the COCO configs use, has no seed): key -> who reads it.
OPTIONAL_KEYS = {
    "train.seed": "detectron2.engine.default_setup and the training sampler",
    "train.cudnn_benchmark": "detectron2.engine.default_setup",
    "train.amp.precision": "atss.engine.device.autocast_dtype",
}
# What build_model loads into the model (its ``weights`` argument).
TRAINED = "trained"  # cfg.train.init_checkpoint, a whole trained model, or WeightsError
RANDOM = "random"  # nothing: the user asked for --random-weights
NO_WEIGHTS = "none"  # nothing yet: training loads its start through its checkpointer
START = "start"  # cfg.train.init_checkpoint as a training start: any part of a model, or nothing


class ConfigError(ValueError):
    """A config file or override that cannot be used; one line naming the file or key and the
    fix."""


class WeightsError(ValueError):
    """Weights missing, contradictory or not a trained model; one line with the fix."""


# ------------------------------------------------------------------------ the config and overrides
def check_config_file(config_file: Optional[str]) -> str:
    """``config_file`` if it names an existing LazyConfig file, else :class:`ConfigError`."""
    if not config_file:
        raise ConfigError(
            "no config file given: pass --config-file FILE, a LazyConfig .py or .yaml file "
            "(e.g. --config-file configs/Shapes/atss_tiny_shapes.py)"
        )
    if not os.path.isfile(config_file):
        where = "" if os.path.isabs(config_file) else f" (relative to {os.getcwd()})"
        raise ConfigError(
            f"config file {config_file} does not exist{where}: pass --config-file with an "
            "existing .py or .yaml file, e.g. one under configs/"
        )
    if not config_file.endswith(CONFIG_EXTENSIONS):
        raise ConfigError(
            f"config file {config_file} is not a LazyConfig file: --config-file takes a "
            f"{' or '.join(CONFIG_EXTENSIONS)} file"
        )
    return config_file


def _parse(override: str) -> Tuple[str, str]:
    """(kind, key) of a Hydra override: kind is "set", "add" (``+``), "force_add" (``++``) or
    "delete" (``~``)."""
    if override.startswith("~"):
        return "delete", override[1:].split("=", 1)[0]
    kind = "force_add" if override.startswith("++") else "add" if override.startswith("+") else ""
    body = override.lstrip("+")
    if "=" not in body:
        raise ConfigError(f"override {override!r} is not key=value (e.g. train.max_iter=100)")
    return kind or "set", body.split("=", 1)[0].strip()


def _target_parameters(target) -> Optional[Tuple[List[str], bool]]:
    """(parameter names, takes ``**kwargs``) of a LazyCall target (a callable or its dotted
    name), or None when its signature cannot be read (then any keyword is let through)."""
    if isinstance(target, str):
        try:
            target = locate(target)
        except Exception:  # not importable here: instantiate() will say so
            return None
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):  # builtins and extension types without a signature
        return None
    names = [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return names, any(p.kind == p.VAR_KEYWORD for p in params)


def _target_name(target) -> str:
    if isinstance(target, str):
        return target
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', target)}"


def _nearest(name: str, candidates: Sequence[str], parent: str) -> str:
    close = difflib.get_close_matches(name, sorted(set(candidates)), n=3, cutoff=0.6)
    prefix = f"{parent}." if parent else ""
    if close:
        return "did you mean " + " or ".join(prefix + c for c in close) + "?"
    shown = sorted(c for c in set(candidates) if not c.startswith("_"))
    more = f", ... ({len(shown)} in all)" if len(shown) > 12 else ""
    return f"{parent or 'the config'} has: {', '.join(shown[:12])}{more}"


def check_override(cfg, override: str) -> None:
    """Raise :class:`ConfigError` unless ``override`` (one ``key=value`` token) is one of:

    * a key path that exists in ``cfg`` (list items by index: ``...augmentations.0.max_size``);
    * a keyword the LazyCall node it reaches does not spell out, but whose target takes it
      (a parameter of that name, or ``**kwargs``): ``model.backbone.bottom_up.freeze_at=2``;
    * one of :data:`OPTIONAL_KEYS`, or an explicit addition ``+key=value`` / ``++key=value``.

    The message names the key, the nearest existing names and the ``+key=value`` form. Hydra's
    deletion ``~key`` is refused too: Detectron2 does not implement it.
    """
    kind, key = _parse(override)
    if kind == "delete":
        raise ConfigError(
            f"override {override!r}: Detectron2's LazyConfig overrides cannot delete keys (~key); "
            f"set it to null instead ({key}=null)"
        )
    if kind in ("add", "force_add") or key in OPTIONAL_KEYS:
        return
    parts = key.split(".")
    node = cfg
    for i, part in enumerate(parts):
        parent = ".".join(parts[:i])
        if isinstance(node, ListConfig):
            if part.isdigit() and int(part) < len(node):  # Hydra parses no negative index
                node = node[int(part)]
                continue
            raise ConfigError(
                f"override {override!r}: {parent} is a list of {len(node)} item(s), "
                f"{part!r} is not an index of it (0..{len(node) - 1})"
            )
        if not isinstance(node, DictConfig):
            raise ConfigError(
                f"override {override!r}: {parent} is a value ({type(node).__name__}), not a "
                f"config node, so it has no key {part!r}"
            )
        if part in node:
            try:
                node = node[part]
            except Exception:  # a mandatory value not given yet ("???"): a leaf
                node = None
            continue
        candidates = [k for k in node.keys() if k != "_target_"]
        hint = f"(to add a new key on purpose, write +{override})"
        if "_target_" not in node:
            raise ConfigError(
                f"unknown config key {key!r} in override {override!r}: "
                f"{parent or 'the config'} has no key {part!r}; "
                f"{_nearest(part, candidates, parent)} {hint}"
            )
        target = node["_target_"]
        signature = _target_parameters(target)
        if signature is None or signature[1] or part in signature[0]:
            return  # a keyword argument of the target that the config does not spell out
        raise ConfigError(
            f"unknown config key {key!r} in override {override!r}: {parent} (a LazyCall of "
            f"{_target_name(target)}) has no key {part!r} and its target takes no such parameter; "
            f"{_nearest(part, candidates + signature[0], parent)} {hint}"
        )


def apply_checked_overrides(cfg, overrides: Sequence[str]):
    """``LazyConfig.apply_overrides(cfg, overrides)``, one override at a time (so that a key
    added by ``+key=...`` can be set by a later one), each checked by :func:`check_override`
    first. Returns ``cfg``."""
    for override in overrides:
        check_override(cfg, override)
        try:
            LazyConfig.apply_overrides(cfg, [override])
        except Exception as e:
            if type(e).__name__ != "OverrideParseException":  # Hydra's grammar error
                raise
            reason = str(e).strip().splitlines()[0]
            raise ConfigError(f"cannot parse override {override!r}: {reason}") from e
    return cfg


def load_checked_config(config_file: Optional[str], overrides: Sequence[str] = ()):
    """Load a LazyConfig file (:func:`check_config_file`; a ``.yaml`` one as data, refusing a
    Python tag: :func:`atss.fileio.load_config_file`) and apply checked overrides."""
    return apply_checked_overrides(load_config_file(check_config_file(config_file)), overrides)


def read_run_classes(folder: str) -> Optional[List[Tuple[int, str]]]:
    """The ``(id, name)`` classes of ``folder/classes.json`` in output order; None when the
    folder has none. Raises ValueError for a file that is not a class list."""
    path = os.path.join(folder or ".", CLASSES_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        data = json.load(f)
    entries = data.get("classes") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: needs a non-empty 'classes' list of {{'id', 'name'}}")
    try:
        return [(int(c["id"]), str(c["name"])) for c in entries]
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: every class needs an integer 'id' and a 'name' ({e})") from e


def load_config(config_file: str, opts: Sequence[str] = (), *, data_splits: Sequence[str] = ()):
    """Load ``config_file``, apply ``opts`` (:func:`load_checked_config`) and check the data of
    its ``dataset`` node.

    Args:
        data_splits: the splits of a ``dataset`` node (``configs/Custom``) that must be given:
            ``("train", "test")`` for training, ``("test",)`` for evaluation, ``()`` when any
            given split will do (demo, export, validation).

    Returns:
        the config, with ``model.num_classes`` taken from the data when the config reads it
        from its ``dataset`` node. A run's own config (``classes.json`` beside it) loaded
        without ``"train"`` in ``data_splits`` takes the class count from that file and reads
        no split that ``data_splits`` does not name (the data may be gone); a given test split
        must have the run's categories. Raises :class:`atss.data.DatasetError` naming the key
        and the path of a missing file or of categories that differ, and
        :class:`ConfigError` for a missing config file or an unknown override key.
    """
    cfg = load_checked_config(config_file, list(opts))
    run_classes = None
    if "dataset" in cfg and "train" not in data_splits:
        folder = os.path.dirname(os.path.abspath(config_file))
        classes = read_run_classes(folder)
        if classes is not None:  # a tool that does not train needs no data but those it reads
            for split in ("train", "test"):
                if split not in data_splits:
                    cfg.dataset[split] = {"json_file": "", "image_root": ""}
            run_classes = classes, os.path.join(folder, CLASSES_FILE)
    register_datasets_from_config(cfg, required=tuple(data_splits), model_classes=run_classes)
    return cfg


def config_dataset_names(cfg) -> List[str]:
    """The datasets that the config's train and test loaders read, in that order, registered
    (the project's own are registered here, without building them; a split of a
    ``configs/Custom`` config that was not given is not registered, so not listed)."""
    names: List[str] = []
    for split in ("train", "test"):
        dataset = cfg.get("dataloader", {}).get(split, {}).get("dataset", {})
        given = dataset.get("names", ()) if hasattr(dataset, "get") else ()
        for name in [given] if isinstance(given, str) else list(given):
            if ensure_registered(name) and name not in names:
                names.append(name)
    return names


# ------------------------------------------------------------------------------ the model
def build_model(
    cfg, weights: str = TRAINED, device: Optional[str] = None, *, what: str = "run"
) -> nn.Module:
    """Instantiate ``cfg.model`` on ``device`` with its weights: the one place a model is built.

    Args:
        weights: :data:`TRAINED` — ``cfg.train.init_checkpoint``, which must fill every model
            tensor (:func:`load_trained_weights`); :data:`RANDOM` — the random initialisation
            (``--random-weights``); :data:`NO_WEIGHTS` — nothing: a training run loads its
            start or its last checkpoint through its checkpointer; :data:`START` —
            ``cfg.train.init_checkpoint`` as a training start (any part of a model, or
            nothing when empty), for tools that time training.
        device: None means ``cfg.train.device`` resolved (:func:`~.device.available_device`).
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


class _RecordingCheckpointer(AtomicDetectionCheckpointer):
    """The project's checkpointer, remembering which model tensors the load did not fill."""

    incompatible = None

    def _log_incompatible_keys(self, incompatible) -> None:
        self.incompatible = incompatible
        super()._log_incompatible_keys(incompatible)


def load_trained_weights(model, cfg, random_weights: bool = False, what: str = "run") -> str:
    """Load ``cfg.train.init_checkpoint`` into ``model`` (not wrapped in DDP), all of it, or
    raise :class:`WeightsError`: no weights given, no such file, or a checkpoint that leaves
    model tensors at their initialisation (a training init such as an ImageNet backbone, or a
    model of another class count), counted by module in the message and named in the log.
    With ``random_weights`` nothing is loaded. Returns the path loaded ("" with
    ``random_weights``). A file that would run code: :class:`~atss.fileio.UnsafeFileError`."""
    if random_weights:
        logger.warning(f"{RANDOM_WEIGHTS_FLAG}: the model keeps its random initialisation")
        return ""
    path = str(cfg.train.get("init_checkpoint", "") or "")
    fix = "set train.init_checkpoint=PATH to a trained run's model_final.pth"
    if not path:
        raise WeightsError(
            f"no weights to {what}: train.init_checkpoint is empty; {fix}, or pass "
            f"{RANDOM_WEIGHTS_FLAG} to {what} a randomly initialised model"
        )
    if "://" not in path and not os.path.isfile(path):
        raise WeightsError(f"train.init_checkpoint={path}: no such file; {fix}")
    checkpointer = _RecordingCheckpointer(model)
    checkpointer.load(path)
    incompatible = checkpointer.incompatible
    if incompatible is None:
        return path
    missing = _filter_reused_missing_keys(model, incompatible.missing_keys)
    if missing or incompatible.incorrect_shapes:
        detail = incompatible_keys_message(
            incompatible._replace(missing_keys=missing, unexpected_keys=[]),
            model.state_dict().keys(),
        )
        raise WeightsError(
            f"train.init_checkpoint={path} is not a trained model of this config ({detail}; "
            f"the log names each tensor): {fix}, or pass {RANDOM_WEIGHTS_FLAG}"
        )
    return path
