"""A trained model on single images, and the class list a run folder keeps for it.

:class:`ATSSPredictor` is Detectron2's ``DefaultPredictor`` for LazyConfigs: the config's model
with its weights, each image resized like the test loader, boxes answered in the image's own
coordinates, on tiles for large images (:meth:`ATSSPredictor.tile`)::

    cfg = load_config("RUN/config.yaml", ["train.init_checkpoint=RUN/model_final.pth"])
    predictor = ATSSPredictor(cfg)
    instances = predictor(read_image("street.jpg", format=predictor.input_format))

:func:`model_classes` is the one answer to "which ids and names do the model's outputs stand
for", used by the demo, the run folder's ``classes.json`` and the export's ``model.json``
(docs/own_data.md, docs/deployment.md).
"""

import json
import logging
import os
from typing import List, Optional, Tuple

import numpy as np
import torch
from detectron2.config import instantiate
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.structures import Instances

from atss.fileio import atomic_write

from .config import (
    CLASSES_FILE,
    RANDOM,
    TRAINED,
    build_model,
    config_dataset_names,
    read_run_classes,
)
from .device import autocast, autocast_dtype, available_device

__all__ = ["ATSSPredictor", "model_classes", "write_run_classes"]

logger = logging.getLogger(__name__)


class ATSSPredictor:
    """
    Build ``cfg.model`` on ``cfg.train.device`` (the CPU when CUDA is absent), load
    ``cfg.train.init_checkpoint`` (:func:`~.config.load_trained_weights`: a whole trained model,
    else :class:`~.config.WeightsError`; nothing with ``random_weights``), and resize each
    image like the test loader (``cfg.dataloader.test.mapper.augmentations``; none when the
    config has no test loader). The network runs in the precision of ``cfg.train.amp``
    (:func:`~.device.autocast_dtype`; ``train.amp.enabled=True``: bf16 on a CPU that has it,
    fp16 on CUDA), on tiles too.

    Attributes:
        model: the detector, in eval mode.
        device: where it runs.
        autocast_dtype: the dtype the network runs in under autocast, None for fp32.
        input_format: channel order the images must be in ("RGB" or "BGR"), the model's.
        weights: the checkpoint loaded ("" with ``random_weights``).
    """

    def __init__(self, cfg, random_weights: bool = False):
        self.device = available_device(cfg.train.get("device", "cuda"))
        self.model = build_model(
            cfg, RANDOM if random_weights else TRAINED, self.device, what="predict with"
        )
        self.weights = "" if random_weights else str(cfg.train.init_checkpoint)
        self.autocast_dtype = autocast_dtype(self.device, cfg.train.get("amp", {}))
        try:
            augmentations = instantiate(cfg.dataloader.test.mapper.augmentations)
        except (AttributeError, KeyError):  # no test loader in the config: no resizing
            augmentations = []
        self.augmentations = T.AugmentationList(list(augmentations))
        self.input_format = getattr(self.model, "input_format", None) or "BGR"
        self.tiled = False

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> Instances:
        """
        Args:
            image: (H, W, 3) uint8 image in :attr:`input_format` channel order. After
                :meth:`tile`, any (H, W, 3) array-like read a window at a time
                (:class:`atss.inference.lazy_image.NpyWindows`) too: the tiles are cut from it
                as they are needed, uint8, without a float copy of the whole image.

        Returns:
            the detections, in the coordinates of ``image`` (on :attr:`device`).
        """
        height, width = image.shape[:2]
        if not self.tiled:  # else the tiled model cuts and resizes each tile itself
            image = torch.as_tensor(self.preprocess(np.asarray(image)))
        with autocast(self.device, self.autocast_dtype):
            outputs = self.model([{"image": image, "height": height, "width": width}])
        return outputs[0]["instances"]

    def tile(self, size: int, overlap: int = 0, **kwargs) -> None:
        """From now on run on overlapping ``size`` x ``size`` tiles cut from the image as read,
        each resized like a test image (:class:`atss.inference.TiledDetector`, which takes
        ``kwargs`` too): the model is wrapped, and the whole image is neither resized nor
        converted (the tiles go to the model uint8, each as it is cut). Raises
        ValueError for a bad size or overlap."""
        from atss.inference.tiled_detector import TiledDetector

        self.model = TiledDetector(
            self.model, size=size, overlap=overlap, augmentations=self.augmentations.augs, **kwargs
        )
        self.augmentations = T.AugmentationList([])
        self.tiled = True

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """The (3, H', W') float32 input of the model for an (H, W, 3) uint8 ``image``: resized
        like the test loader, channels first."""
        # Writable and contiguous (copied only when not): images read through PIL are read-only
        # views, which fvcore's resize hands to torch.from_numpy (a warning, undefined writes).
        aug_input = T.AugInput(np.require(image, requirements=["C", "W"]))
        self.augmentations(aug_input)
        return np.ascontiguousarray(aug_input.image.astype("float32").transpose(2, 0, 1))


def model_classes(cfg, config_file: str = "") -> Optional[List[Tuple[int, str]]]:
    """The ``(id, name)`` of each class of ``cfg.model``, in the order of its outputs.

    The run's ``classes.json`` beside ``config_file`` when there is one; else the first of the
    config's datasets (train, then test: a ``configs/Custom`` config's JSON categories, a
    registered dataset's ``thing_classes``) with ``model.num_classes`` classes, ids from its
    ``thing_dataset_id_to_contiguous_id`` (the user's category ids), else the class index.
    None when none of them knows the classes.
    """
    if config_file:
        run = read_run_classes(os.path.dirname(os.path.abspath(config_file)))
        if run:
            return run
    try:
        names = config_dataset_names(cfg)
    except ModuleNotFoundError as e:  # tree crowns without deepforest: no names
        logger.warning(f"class names of the config's datasets unknown: {e}")
        return None
    for name in names:
        metadata = MetadataCatalog.get(name)
        classes = metadata.get("thing_classes")
        if classes is None or len(classes) != cfg.model.num_classes:
            continue
        to_contiguous = metadata.get("thing_dataset_id_to_contiguous_id") or {}
        ids = {i: dataset_id for dataset_id, i in to_contiguous.items()}
        return [(int(ids.get(i, i)), str(n)) for i, n in enumerate(classes)]
    return None


def write_run_classes(cfg, output_dir: str) -> Optional[str]:
    """Write ``output_dir/classes.json`` (``{"classes": [{"id", "name"}, ...]}``, atomically)
    from the config's datasets (:func:`model_classes`); returns its path, None (with a warning)
    when the datasets do not name the model's classes."""
    classes = model_classes(cfg)
    if classes is None:
        logger.warning(
            f"no class list of {cfg.model.num_classes} classes among the config's datasets: "
            f"{CLASSES_FILE} not written"
        )
        return None
    text = json.dumps({"classes": [{"id": i, "name": n} for i, n in classes]}, indent=1)
    path = os.path.join(output_dir, CLASSES_FILE)
    os.makedirs(output_dir, exist_ok=True)
    atomic_write(path, lambda f: f.write(text.encode()))
    return path
