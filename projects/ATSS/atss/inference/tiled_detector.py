"""Tiled (sliced) inference for images larger than the model should see at once.

:class:`TiledDetector` wraps a trained detector: it cuts the image, in its own pixels, into
overlapping ``size`` x ``size`` tiles (:func:`tile_grid`), runs the model on each tile resized
like a test image, shifts the boxes into image coordinates, drops a box cut by an inner tile
border when another tile holds it whole (:func:`cut_by_inner_border`), and merges the
duplicates with the model's NMS (or the TTA's box voting). Only a batch of tiles is in memory
at a time, read from the image (or a window reader, :mod:`.lazy_image`) as needed.
``test.tile.size`` / ``test.tile.overlap`` switch it on for ``train_net.py``
(:func:`build_tiled_evaluation`); ``demo.py`` takes ``--tile-size``. See docs/large_images.md.
"""

import copy
import logging
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import LazyCall as L
from detectron2.config import instantiate
from detectron2.data import DatasetMapper
from detectron2.data import transforms as T
from detectron2.layers import batched_nms
from detectron2.structures import Boxes, Instances
from detectron2.utils.registry import locate
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ..data.crops import tile_starts
from ..data.mappers import CheckedDatasetMapper
from ..modeling.box_voting import batched_box_voting
from .lazy_image import TiledImageMapper

__all__ = [
    "TiledDetector",
    "build_tiled_evaluation",
    "build_tiled_model",
    "cut_by_inner_border",
    "tile_grid",
    "tile_settings",
]

logger = logging.getLogger(__name__)

MERGE_TYPES = ("nms", "vote", "soft-vote")


def tile_grid(height: int, width: int, size: int, overlap: int) -> Tensor:
    """
    Overlapping square tiles covering a ``height`` x ``width`` image.

    Tiles start every ``size - overlap`` pixels; the last tile of each row / column is moved
    back to end at the image edge (it then overlaps its neighbour by ``overlap`` or more). Along
    a side shorter than ``size`` there is one tile, as long as that side.

    Returns:
        (T, 4) int64 tensor of tiles (x0, y0, x1, y1), row-major (top row first).

    Raises:
        ValueError: ``size`` <= 0, or ``overlap`` not in [0, size).
    """
    size, overlap = int(size), int(overlap)
    if size <= 0:
        raise ValueError(f"tile_grid: tile size must be positive, got {size}")
    if not 0 <= overlap < size:
        raise ValueError(f"tile_grid: overlap must be in [0, tile size={size}), got {overlap}")
    if height <= 0 or width <= 0:
        raise ValueError(f"tile_grid: empty image {height}x{width}")
    stride = size - overlap
    # The tile-origin rule of the dataset tiles, with the last tile moved to the edge.
    xs = tile_starts(width, size, stride, cover_edges=True)
    ys = tile_starts(height, size, stride, cover_edges=True)
    tiles = [(x, y, min(x + size, width), min(y + size, height)) for y in ys for x in xs]
    return torch.tensor(tiles, dtype=torch.int64).reshape(-1, 4)


def _inner_edges(tiles: Tensor, height: int, width: int) -> Tensor:
    """(T, 4) bool: which sides (left, top, right, bottom) of each tile lie inside the image."""
    return torch.stack(
        [tiles[:, 0] > 0, tiles[:, 1] > 0, tiles[:, 2] < width, tiles[:, 3] < height], dim=1
    )


def _touches_inner_edge(boxes: Tensor, tiles: Tensor, inner: Tensor, margin: float) -> Tensor:
    """
    Args:
        boxes: (N, 4) XYXY image coordinates; tiles: (M, 4) XYXY; inner: (M, 4) bool.

    Returns:
        (N, M) bool: box n comes within ``margin`` of (or crosses) an inner side of tile m.
    """
    b = boxes[:, None, :]
    t = tiles[None, :, :].to(boxes.dtype)
    near = torch.stack(
        [
            b[..., 0] <= t[..., 0] + margin,
            b[..., 1] <= t[..., 1] + margin,
            b[..., 2] >= t[..., 2] - margin,
            b[..., 3] >= t[..., 3] - margin,
        ],
        dim=-1,
    )
    return (near & inner[None]).any(dim=-1)


def cut_by_inner_border(
    boxes: Tensor, tile_index: Tensor, tiles: Tensor, image_size: Tuple[int, int], margin: float
) -> Tensor:
    """
    Boxes cut by an inner tile border whose whole is held by another tile (step 4 of the
    module docstring).

    Args:
        boxes: (N, 4) XYXY in image coordinates, each predicted on tile ``tile_index[n]``.
        tile_index: (N,) int64 index into ``tiles``.
        tiles: (T, 4) tiles of :func:`tile_grid`.
        image_size: (height, width) of the tiled image.
        margin: a box side within this many pixels of a tile side counts as touching it.

    Returns:
        (N,) bool: True for the boxes to drop. A box touching an inner border of its own tile
        is dropped when some other tile contains it entirely while touching none of that
        tile's inner borders.
    """
    if len(boxes) == 0:
        return torch.zeros(0, dtype=torch.bool, device=boxes.device)
    tiles = tiles.to(boxes.device)
    inner = _inner_edges(tiles, *image_size)
    touches = _touches_inner_edge(boxes, tiles, inner, margin)  # (N, T)
    own = torch.arange(len(tiles), device=boxes.device)[None, :] == tile_index[:, None]
    cut = (touches & own).any(dim=1)
    t = tiles[None].to(boxes.dtype)
    b = boxes[:, None, :]
    inside = (
        (b[..., 0] >= t[..., 0])
        & (b[..., 1] >= t[..., 1])
        & (b[..., 2] <= t[..., 2])
        & (b[..., 3] <= t[..., 3])
    )
    held_whole = (inside & ~touches & ~own).any(dim=1)
    return cut & held_whole


class TiledDetector(nn.Module):
    """
    A detector run on overlapping tiles of each image (see the module docstring). Called like
    the wrapped model with a list of dataset dicts ("image" as a CHW tensor, or any (H, W, C)
    array-like with ``.shape`` and ``[y0:y1, x0:x1]`` windows, e.g. a lazily read file;
    "height"/"width" of the original image); returns one ``{"instances": Instances}`` per image
    in original-image coordinates, sorted by decreasing score.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        size: int,
        overlap: int = 0,
        merge_type: str = "nms",
        nms_threshold: Optional[float] = None,
        vote_iou_threshold: float = 0.66,
        soft_score_threshold: float = 0.05,
        border_margin: float = 2.0,
        max_detections_per_image: Optional[int] = None,
        batch_size: int = 1,
        augmentations: Sequence[T.Augmentation] = (),
    ):
        """
        Args:
            model: the detector, run on lists of ``{"image", "height", "width"}`` tiles.
            size: tile side in the pixels of the image as read (> 0), about the training
                images' size, so that objects appear at the scale the model learnt.
            overlap: pixels shared by neighbouring tiles, in [0, size); larger than the
                largest object, so that a tile holds every object whole.
            merge_type: "nms" (class-wise NMS), "vote" or "soft-vote" (the TTA box voting).
            nms_threshold: IoU of the NMS; default the model's ``test_nms_thresh`` (0.5 if the
                model has none).
            vote_iou_threshold, soft_score_threshold: of the box voting (see atss.modeling.tta).
            border_margin: pixels within which a box side touches a tile side.
            max_detections_per_image: cap on the merged detections; default the model's own
                ``max_detections_per_image`` (100 if the model has none).
            batch_size: tiles per forward pass (peak memory grows with it).
            augmentations: applied to each tile as to a test image (the config's
                ``dataloader.test.mapper.augmentations``, e.g. its resize); none: each tile runs
                at its own resolution.
        """
        super().__init__()
        if isinstance(model, DistributedDataParallel):
            model = model.module
        if merge_type not in MERGE_TYPES:
            raise ValueError(f"TiledDetector: merge_type must be one of {MERGE_TYPES}")
        tile_grid(int(size), int(size), size, overlap)  # validates size and overlap
        self.model = model
        # Mirror the model's mode (a training model evaluated periodically stays in training).
        self.training = model.training
        self.size, self.overlap = int(size), int(overlap)
        self.merge_type = merge_type
        if nms_threshold is None:
            nms_threshold = getattr(model, "test_nms_thresh", 0.5)
        self.nms_threshold = float(nms_threshold)
        self.vote_iou_threshold = float(vote_iou_threshold)
        self.soft_score_threshold = float(soft_score_threshold)
        self.border_margin = float(border_margin)
        if max_detections_per_image is None:
            max_detections_per_image = getattr(model, "max_detections_per_image", 100)
        self.max_detections_per_image = int(max_detections_per_image)
        self.batch_size = max(1, int(batch_size))
        self.augmentations = T.AugmentationList(list(augmentations))

    def forward(self, batched_inputs: List[Dict]) -> List[Dict[str, Instances]]:
        if self.training:
            raise RuntimeError("TiledDetector is for inference; call .eval() first")
        with torch.no_grad():
            return [{"instances": self._inference_one_image(x)} for x in batched_inputs]

    def _run_tiles(self, image: Tensor, tiles: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """
        Run the model on every tile of ``image``: a (C, H, W) tensor or an (H, W, C) array-like
        (see :meth:`forward`), cut one tile at a time.

        Returns:
            boxes (N, 4) in image coordinates, scores (N,), classes (N,), tile index (N,).
        """
        boxes, scores, classes, index = [], [], [], []
        coords = tiles.tolist()
        for start in range(0, len(coords), self.batch_size):
            chunk = coords[start : start + self.batch_size]
            inputs = [
                {
                    "image": self._tile_input(_cut(image, x0, y0, x1, y1)),
                    "height": y1 - y0,
                    "width": x1 - x0,
                }
                for x0, y0, x1, y1 in chunk
            ]
            for i, ((x0, y0, _, _), out) in enumerate(zip(chunk, self.model(inputs))):
                inst = out["instances"]
                b = inst.pred_boxes.tensor
                boxes.append(b + b.new_tensor([x0, y0, x0, y0]))
                scores.append(inst.scores)
                classes.append(inst.pred_classes)
                index.append(torch.full_like(inst.pred_classes, start + i))
        return torch.cat(boxes), torch.cat(scores), torch.cat(classes), torch.cat(index)

    def _tile_input(self, tile) -> Tensor:
        """The model input for a (C, h, w) tensor tile or an (h, w, C) ndarray tile: the tile
        itself (channels first, dtype kept: uint8 stays uint8), or the tile through the
        augmentations (on an (h, w, C) array, as Detectron2's mapper applies them)."""
        if isinstance(tile, Tensor):
            if not self.augmentations.augs:
                return tile
            device, tile = tile.device, tile.permute(1, 2, 0).cpu().numpy()
        else:
            device = None
        if self.augmentations.augs:
            aug_input = T.AugInput(np.ascontiguousarray(tile))
            self.augmentations(aug_input)
            tile = aug_input.image
        chw = torch.as_tensor(np.ascontiguousarray(tile.transpose(2, 0, 1)))
        return chw if device is None else chw.to(device)

    def _merge(self, boxes: Tensor, scores: Tensor, classes: Tensor):
        """Class-wise merge of the tiles' detections; sorted by decreasing score."""
        if self.merge_type == "nms":
            keep = batched_nms(boxes, scores, classes, self.nms_threshold)
            return boxes[keep], scores[keep], classes[keep]
        return batched_box_voting(
            boxes,
            scores,
            classes,
            self.vote_iou_threshold,
            self.merge_type == "soft-vote",
            self.soft_score_threshold,
        )

    def _inference_one_image(self, inp: Dict) -> Instances:
        image = inp["image"]
        height, width = image.shape[-2:] if isinstance(image, Tensor) else image.shape[:2]
        tiles = tile_grid(height, width, self.size, self.overlap)
        boxes, scores, classes, index = self._run_tiles(image, tiles)
        if len(tiles) > 1:  # one tile: no border is inner and nothing comes twice
            drop = cut_by_inner_border(boxes, index, tiles, (height, width), self.border_margin)
            boxes, scores, classes = self._merge(boxes[~drop], scores[~drop], classes[~drop])
        k = self.max_detections_per_image
        result = Instances((height, width))
        result.pred_boxes = Boxes(boxes[:k])
        result.scores = scores[:k]
        result.pred_classes = classes[:k]
        return _to_original(result, inp)


def _cut(image, x0: int, y0: int, x1: int, y1: int):
    """A tile of a (C, H, W) tensor (a view), or of an (H, W, C) array-like (read now, as an
    (h, w, C) ndarray: a lazily read image materialises only this window)."""
    if isinstance(image, Tensor):
        return image[:, y0:y1, x0:x1]
    return np.asarray(image[y0:y1, x0:x1])


def _to_original(result: Instances, inp: Dict) -> Instances:
    """Scale to the original size like Detectron2's ``detector_postprocess`` (scale, clip,
    drop empty boxes)."""
    out_h = int(inp.get("height", result.image_size[0]))
    out_w = int(inp.get("width", result.image_size[1]))
    scale_x, scale_y = out_w / result.image_size[1], out_h / result.image_size[0]
    out = Instances((out_h, out_w), **result.get_fields())
    out.pred_boxes.scale(scale_x, scale_y)
    out.pred_boxes.clip(out.image_size)
    return out[out.pred_boxes.nonempty()]


def build_tiled_model(cfg, model: nn.Module, augmentations: Sequence[T.Augmentation] = ()):
    """
    The model to evaluate: ``model`` itself, or ``TiledDetector(model, **cfg.test.tile,
    augmentations=augmentations)`` when ``cfg.test.tile.size`` is set and > 0 (see
    ``configs/common/test.py``). Configs without a ``test.tile`` node get the model unchanged.
    """
    tile = tile_settings(cfg)
    if tile is None:
        return model
    logger.info("Tiled inference on: %s", tile)
    return TiledDetector(model, **tile, augmentations=augmentations)


def tile_settings(cfg) -> Optional[dict]:
    """``cfg.test.tile`` as a dict when tiling is on (``size`` > 0), else None."""
    test = cfg.get("test", None) if hasattr(cfg, "get") else None
    tile = test.get("tile", None) if test is not None and hasattr(test, "get") else None
    if tile is None or not tile.get("size", 0):
        return None
    return dict(tile)


def build_tiled_evaluation(cfg, model: nn.Module):
    """
    The model and the test loader of an evaluation, tiled when ``cfg.test.tile.size`` > 0: the
    loader then reads the images as they are (its mapper's augmentations removed) and the
    tiled model applies those augmentations to each tile (tiles in image pixels). Detectron2's
    mapper (or ours) is replaced by :class:`~.lazy_image.TiledImageMapper`, which holds one
    copy of a picture instead of two and reads a ``.npy`` image a tile at a time.

    Returns:
        (model, data loader)
    """
    loader_cfg = cfg.dataloader.test
    if tile_settings(cfg) is None:
        return model, instantiate(loader_cfg)
    loader_cfg = copy.deepcopy(loader_cfg)
    mapper = loader_cfg.get("mapper", {})
    augmentations = []
    if "augmentations" in mapper:
        augmentations = instantiate(mapper.augmentations)
        mapper.augmentations = []
    if _reads_whole_images(mapper):
        loader_cfg.mapper = L(TiledImageMapper)(image_format=mapper.get("image_format", "BGR"))
    return build_tiled_model(cfg, model, augmentations), instantiate(loader_cfg)


def _reads_whole_images(mapper) -> bool:
    """True for a test mapper that only reads, resizes and converts the image (Detectron2's
    ``DatasetMapper`` or :class:`atss.data.CheckedDatasetMapper`), which a tiled evaluation
    replaces by :class:`~.lazy_image.TiledImageMapper`; a mapper of any other class is kept."""
    target = mapper.get("_target_", None) if hasattr(mapper, "get") else None
    if isinstance(target, str):
        target = locate(target)
    return target in (DatasetMapper, CheckedDatasetMapper)
