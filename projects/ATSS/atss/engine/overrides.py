"""Refuse what the command line gets wrong, before anything runs: a missing config file, and a
``key=value`` override whose key the config does not have.

OmegaConf (under Detectron2's ``LazyConfig.apply_overrides``) creates any key it is given, so a
typo such as ``train.max_iters=1`` for ``train.max_iter`` runs the full schedule and only shows
up as an extra line of ``config.yaml``. Here an override is accepted when

* its key path exists in the config (list items by index: ``...augmentations.0.max_size``); or
* the first missing part is a key of a LazyCall node (one with ``_target_``) and the target
  takes a parameter of that name, or ``**kwargs``: a keyword argument the config did not spell
  out (``model.backbone.bottom_up.freeze_at=2``); or
* it is one of :data:`OPTIONAL_KEYS`, which the engine reads with a default when a config
  leaves them out (``train.seed``); or
* it is written as Hydra's explicit additions ``+key=value`` / ``++key=value``.

Anything else is refused with a :class:`ConfigError` naming the key, the nearest existing names
(:func:`difflib.get_close_matches`) and the ``+key=value`` form for a key added on purpose.
Hydra's deletion ``~key`` is refused too: Detectron2 does not implement it.
"""

import difflib
import inspect
import os
from typing import List, Optional, Sequence, Tuple

from detectron2.config import LazyConfig
from detectron2.utils.registry import locate
from omegaconf import DictConfig, ListConfig

__all__ = [
    "CONFIG_EXTENSIONS",
    "ConfigError",
    "OPTIONAL_KEYS",
    "apply_checked_overrides",
    "check_config_file",
    "check_override",
    "load_checked_config",
]

CONFIG_EXTENSIONS = (".py", ".yaml", ".yml")
_EXAMPLE_CONFIG = "configs/Shapes/atss_tiny_shapes.py"
# Keys that code reads with a default when the config has none (Detectron2's common train dict,
# which the COCO configs use, has no seed): key -> who reads it.
OPTIONAL_KEYS = {
    "train.seed": "detectron2.engine.default_setup and the training sampler",
    "train.cudnn_benchmark": "detectron2.engine.default_setup",
}


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message is one line naming the file
    or key and the fix."""


def check_config_file(config_file: Optional[str]) -> str:
    """``config_file`` if it names an existing LazyConfig file, else :class:`ConfigError`."""
    if not config_file:
        raise ConfigError(
            "no config file given: pass --config-file FILE, a LazyConfig .py or .yaml file "
            f"(e.g. --config-file {_EXAMPLE_CONFIG})"
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
    """Raise :class:`ConfigError` when ``override`` (one ``key=value`` token) names a key that
    neither exists in ``cfg`` nor is a parameter of the LazyCall target it would reach; see the
    module docstring for the rule."""
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
            if part.lstrip("-").isdigit() and -len(node) <= int(part) < len(node):
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
            f"{_target_name(target)}) has no key {part!r} and its target takes no such "
            f"parameter; {_nearest(part, candidates + signature[0], parent)} {hint}"
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
    """Load a LazyConfig file (:func:`check_config_file`) and apply checked overrides."""
    return apply_checked_overrides(LazyConfig.load(check_config_file(config_file)), overrides)
