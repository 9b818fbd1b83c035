"""A training run's folder (``train.output_dir``) that stands alone: what inference needs.

Training writes into ``train.output_dir`` the resolved config (``config.yaml``, Detectron2's
``default_setup``), the weights (``model_final.pth``) and :data:`CLASSES_FILE`, the model's class
list in the order of its outputs::

    {"classes": [{"id": 3, "name": "rectangle"}, {"id": 7, "name": "ellipse"}]}

(the train JSON's category ids and names for a ``configs/Custom`` config; ``thing_classes`` and
the dataset's id map, else the class index, for a registered dataset). A config file with that
file beside it is a run's config: :func:`atss.engine.config.load_config` then takes the class
count from it when it does not train, so ``demo.py``, the export and ``--eval-only`` on another
dataset work from the folder alone, after the training data are gone::

    demo.py --config-file RUN/config.yaml train.init_checkpoint=RUN/model_final.pth ...
    demo.py --run RUN ...                       # the same

The class names of the demo and the class list of an export (:func:`model_classes`) come from
it too.
"""

import argparse
import json
import logging
import os
from typing import List, Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog

from atss.data.builtin import register_builtin_dataset
from atss.fileio import atomic_write

from .overrides import ConfigError

__all__ = [
    "CLASSES_FILE",
    "add_config_arguments",
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "config_classes",
    "keep_run_config",
    "model_classes",
    "read_run_classes",
    "run_arguments",
    "write_run_classes",
]

logger = logging.getLogger(__name__)

CLASSES_FILE = "classes.json"
CONFIG_FILE = "config.yaml"  # what Detectron2's default_setup writes
WEIGHTS_FILE = "model_final.pth"  # what the last checkpoint of a run is called

Classes = List[Tuple[int, str]]


def read_run_classes(folder: str) -> Optional[Classes]:
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


def config_classes(cfg, num_classes: Optional[int] = None) -> Optional[Classes]:
    """The ``(id, name)`` classes of the config's registered datasets (train first, then test):
    ``thing_classes`` with the ids of ``thing_dataset_id_to_contiguous_id`` (the JSON's ids),
    else the class index; the first whose length is ``num_classes`` (default the config's
    ``model.num_classes``). None when none is registered or none matches."""
    if num_classes is None:
        num_classes = model_num(cfg)
    for split in ("train", "test"):
        try:
            names = cfg.dataloader[split].dataset.names
        except (AttributeError, KeyError):  # no such loader, or a loader without names
            continue
        for name in [names] if isinstance(names, str) else list(names):
            classes = _dataset_classes(name, num_classes)
            if classes:
                return classes
    return None


def _dataset_classes(name: str, num_classes: Optional[int]) -> Optional[Classes]:
    """``(id, name)`` classes of the registered dataset ``name`` (the project's own are
    registered here, metadata only) when it has ``num_classes`` of them."""
    if name not in DatasetCatalog.list():
        try:
            if not register_builtin_dataset(name):
                return None
        except ModuleNotFoundError as e:  # tree crowns without deepforest: no names
            logger.warning(f"class names of {name} unknown: {e}")
            return None
    metadata = MetadataCatalog.get(name)
    names = metadata.get("thing_classes")
    if names is None or len(names) != num_classes:
        return None
    to_contiguous = metadata.get("thing_dataset_id_to_contiguous_id") or {}
    ids = {i: dataset_id for dataset_id, i in to_contiguous.items()}
    return [(int(ids.get(i, i)), str(n)) for i, n in enumerate(names)]


def model_classes(cfg, config_file: str = "") -> Optional[Classes]:
    """The model's ``(id, name)`` classes: the run's ``classes.json`` beside ``config_file``
    when there is one, else :func:`config_classes`; None when neither knows them."""
    run = read_run_classes(os.path.dirname(config_file)) if config_file else None
    return run or config_classes(cfg)


def write_run_classes(cfg, output_dir: str) -> Optional[str]:
    """Write ``output_dir/classes.json`` from :func:`config_classes` (atomically); returns its
    path, None (with a warning) when the config's datasets do not name the classes."""
    classes = config_classes(cfg)
    if classes is None:
        logger.warning(
            f"no class list of {model_num(cfg)} classes among the config's datasets: "
            f"{CLASSES_FILE} not written"
        )
        return None
    text = json.dumps({"classes": [{"id": i, "name": n} for i, n in classes]}, indent=1)
    path = os.path.join(output_dir, CLASSES_FILE)
    os.makedirs(output_dir, exist_ok=True)
    atomic_write(path, lambda f: f.write(text.encode()))
    return path


def keep_run_config(cfg, config_file: str) -> None:
    """``--eval-only`` from a run's own config with ``train.output_dir`` still the run folder:
    evaluate into ``RUN/eval`` instead, so that Detectron2's ``default_setup`` does not replace
    the run's ``config.yaml`` by the evaluation's."""
    folder = os.path.dirname(os.path.abspath(config_file))
    output_dir = os.path.abspath(cfg.train.output_dir)
    if output_dir == folder and read_run_classes(folder) is not None:
        cfg.train.output_dir = os.path.join(folder, "eval")
        logger.warning(
            f"--eval-only from the run folder {folder}: writing into {cfg.train.output_dir} "
            "(give train.output_dir=DIR for another place)"
        )


def model_num(cfg) -> Optional[int]:
    return cfg.get("model", {}).get("num_classes")


def add_config_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--config-file FILE`` and, instead of it, ``--run DIR`` (:func:`run_arguments`)."""
    config = parser.add_mutually_exclusive_group(required=True)
    config.add_argument("--config-file", metavar="FILE", help="LazyConfig file")
    config.add_argument(
        "--run",
        metavar="DIR",
        help="a training run's folder (train.output_dir): the same as --config-file "
        f"DIR/{CONFIG_FILE} train.init_checkpoint=DIR/{WEIGHTS_FILE}; classes from "
        f"DIR/{CLASSES_FILE}",
    )
    return parser


def run_arguments(
    run: str, opts: Sequence[str] = (), with_weights: bool = True
) -> Tuple[str, List[str]]:
    """``--run RUN``: the config file ``RUN/config.yaml`` and ``opts`` with
    ``train.init_checkpoint=RUN/model_final.pth`` put first (``with_weights``; a later one in
    ``opts`` wins). Raises :class:`~.overrides.ConfigError` when the folder lacks either file."""
    config_file = os.path.join(run, CONFIG_FILE)
    weights = os.path.join(run, WEIGHTS_FILE)
    for path in (config_file, weights) if with_weights else (config_file,):
        if not os.path.isfile(path):
            raise ConfigError(f"--run {run}: no {path} (a train.output_dir after training)")
    return config_file, ([f"train.init_checkpoint={weights}"] if with_weights else []) + list(opts)
