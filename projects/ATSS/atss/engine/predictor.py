"""Run a LazyConfig's model on single images: Detectron2's ``DefaultPredictor`` for LazyConfigs.

Usage (images read in the model's channel order)::

    cfg = load_config("configs/COCO/atss_R_50_FPN_1x.py", ["train.init_checkpoint=model_final.pth"])
    predictor = ATSSPredictor(cfg)
    image = read_image("street.jpg", format=predictor.input_format)  # (H, W, 3) uint8
    instances = predictor(image)  # boxes in the coordinates of `image`
"""

import logging
from typing import List, Optional

import numpy as np
import torch
from detectron2.config import instantiate
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.structures import Instances

from atss.data.builtin import ensure_registered

from .config import RANDOM, TRAINED, build_model
from .device import available_device

__all__ = ["ATSSPredictor", "dataset_class_names"]

logger = logging.getLogger(__name__)


class ATSSPredictor:
    """
    Build ``cfg.model`` on ``cfg.train.device`` (the CPU when CUDA is absent), load
    ``cfg.train.init_checkpoint`` (:func:`~.weights.load_trained_weights`: a whole trained model,
    else :class:`~.weights.WeightsError`; nothing with ``random_weights``), and resize each
    image like the test loader (``cfg.dataloader.test.mapper.augmentations``; none when the
    config has no test loader).

    Attributes:
        model: the detector, in eval mode.
        device: where it runs.
        input_format: channel order the images must be in ("RGB" or "BGR"), the model's.
        weights: the checkpoint loaded ("" with ``random_weights``).
    """

    def __init__(self, cfg, random_weights: bool = False):
        self.device = available_device(cfg.train.get("device", "cuda"))
        self.model = build_model(
            cfg, RANDOM if random_weights else TRAINED, self.device, what="predict with"
        )
        self.weights = "" if random_weights else str(cfg.train.init_checkpoint)
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
        if self.tiled:  # the tiled model cuts and resizes each tile itself
            return self.model([{"image": image, "height": height, "width": width}])[0]["instances"]
        tensor = torch.as_tensor(self.preprocess(np.asarray(image)))
        return self.model([{"image": tensor, "height": height, "width": width}])[0]["instances"]

    def tile(self, size: int, overlap: int = 0, **kwargs) -> None:
        """From now on run on overlapping ``size`` x ``size`` tiles cut from the image as read,
        each resized like a test image (:class:`atss.inference.TiledDetector`, which takes
        ``kwargs`` too): the model is wrapped, and the whole image is neither resized nor
        converted (the tiles go to the model uint8, each as it is cut). Raises
        ValueError for a bad size or overlap."""
        from atss.inference import TiledDetector

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


def dataset_class_names(cfg, num_classes: int) -> Optional[List[str]]:
    """``thing_classes`` of the config's test dataset(s), the first registered one whose length
    is ``num_classes``; None when the config has no test dataset or none matches. The project's
    own datasets are registered here (metadata only: no file is written)."""
    try:
        names = cfg.dataloader.test.dataset.names
    except (AttributeError, KeyError):  # configs without a test loader
        return None
    for name in [names] if isinstance(names, str) else list(names):
        try:
            ensure_registered(name)
        except ModuleNotFoundError as e:  # tree crowns without deepforest: no names
            logger.warning(f"class names of {name} unknown: {e}")
            continue
        classes = MetadataCatalog.get(name).get("thing_classes")
        if classes is not None and len(classes) == num_classes:
            return list(classes)
    return None
