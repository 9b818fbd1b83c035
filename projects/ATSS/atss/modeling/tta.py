"""Test-time augmentation (TTA) for ATSS, as the authors ran it for their best COCO result.

:class:`ATSSWithTTA` wraps a trained dense detector and, per image, runs it at the test scale,
at each extra shorter side of ``min_sizes`` (keeping only boxes in that scale's area range of
``size_ranges``) and on each run's horizontal flip, maps every box back to the image, merges
all runs per class with score-weighted box voting (:mod:`.box_voting`) and keeps the
``max_detections_per_image`` best. Each run uses the model's own inference, as the authors' code
does. Areas and IoUs follow Detectron2's continuous boxes (the authors add 1 pixel). The scales
are resized from the image in the input dict, at sizes computed from the original ``height`` /
``width``: for the authors' protocol, give it unresized images
(``configs/COCO/atss_dcnv2_X_101_64x4d_FPN_2x_ms_tta.py``). Switch: ``test.aug.enabled=True``
(projects/ATSS/README.md, switches).
"""

import logging
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.data.detection_utils import read_image
from detectron2.data.transforms import ResizeShortestEdge, ResizeTransform
from detectron2.structures import Boxes, Instances
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from .box_voting import batched_box_voting

__all__ = [
    "ATSSWithTTA",
    "build_tta_model",
    "size_filter",
    "boxes_to_original",
    "TTA_MIN_SIZES",
    "TTA_SIZE_RANGES",
]

logger = logging.getLogger(__name__)

# The authors' extra test scales and, per scale, the allowed (min, max) box side (sqrt area);
# 10000 stands for "no upper limit".
TTA_MIN_SIZES = (400, 500, 600, 640, 700, 900, 1000, 1100, 1200, 1300, 1400, 1800)
TTA_SIZE_RANGES = (
    (96, 10000),
    (96, 10000),
    (64, 10000),
    (64, 10000),
    (64, 10000),
    (0, 10000),
    (0, 10000),
    (0, 256),
    (0, 256),
    (0, 192),
    (0, 192),
    (0, 96),
)
MERGE_TYPES = ("soft-vote", "vote")


class _Run(NamedTuple):
    """One forward pass of the TTA: shorter side, longer-side cap, flip, box-size filter."""

    short_edge: int
    max_size: int
    hflip: bool
    size_range: Optional[Tuple[float, float]]


# ----------------------------------------------------------------------------- pure functions
def size_filter(boxes: Tensor, size_range: Tuple[float, float]) -> Tensor:
    """
    Args:
        boxes: (R, 4) XYXY.
        size_range: (min, max) box side: keep min² < area < max² (strict, as the authors).

    Returns:
        (R,) bool mask of the boxes to keep.
    """
    lo, hi = float(size_range[0]), float(size_range[1])
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return (area > lo * lo) & (area < hi * hi)


def boxes_to_original(
    boxes: Tensor, input_size: Tuple[int, int], original_size: Tuple[int, int], hflip: bool
) -> Tensor:
    """
    Map (R, 4) XYXY boxes predicted on a (possibly flipped) resized input back to the original
    image, then clip them to it.

    Args:
        input_size: (h, w) of the network input (the resized image, before padding).
        original_size: (H, W) of the original image.
        hflip: the input was flipped horizontally after resizing.
    """
    h, w = input_size
    height, width = original_size
    boxes = boxes.clone()
    if hflip:
        boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
    # The same arithmetic as Detectron2's detector_postprocess (Boxes.scale, then clip).
    out = Boxes(boxes)
    out.scale(width / w, height / h)
    out.clip((height, width))
    return out.tensor


# ----------------------------------------------------------------------------- the wrapper
class ATSSWithTTA(nn.Module):
    """
    Wraps a trained detector ``model`` (an :class:`atss.ATSS`, or any Detectron2 dense detector
    whose ``forward`` takes a list of ``{"image": CHW tensor}`` dicts and returns
    ``{"instances"}`` in the input's resolution) and evaluates it with the authors' multi-scale
    + flip test-time augmentation and box voting (see the module docstring): the wrapper
    resizes and flips the image, calls ``model`` once per scale (and flip), and merges.

    Like Detectron2's ``GeneralizedRCNNWithTTA``: call it with a list of dataset dicts ("image"
    as a CHW tensor, or "file_name"; "height"/"width" of the original image); returns one
    ``{"instances": Instances}`` per image, in original-image coordinates.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        test_size: int = 800,
        test_max_size: int = 1333,
        flip: bool = True,
        min_sizes: Sequence[int] = TTA_MIN_SIZES,
        max_size: int = 3000,
        scale_flip: bool = True,
        size_ranges: Optional[Sequence[Sequence[float]]] = TTA_SIZE_RANGES,
        merge_type: str = "soft-vote",
        vote_iou_threshold: float = 0.66,
        soft_score_threshold: float = 0.05,
        max_detections_per_image: int = 1000,
        batch_size: int = 2,
    ):
        """
        Args:
            model: the detector; it is run in eval mode on lists of ``{"image": tensor}``.
            test_size, test_max_size: the single-scale test resize (800, 1333), run unfiltered.
            flip: also run the horizontally flipped test-scale image.
            min_sizes: extra shorter sides.
            max_size: longer-side cap for extra scales >= ``test_size`` (3000); smaller scales
                use ``test_max_size``.
            scale_flip: also run every extra scale flipped.
            size_ranges: per extra scale, (min, max) box side kept (area in (min², max²)),
                or None for no filter.
            merge_type: "soft-vote" (the authors' choice) or "vote".
            vote_iou_threshold: IoU from which boxes are merged (0.66).
            soft_score_threshold: minimum decayed score of soft-vote members (0.05).
            max_detections_per_image: cap after merging (1000 as the authors).
            batch_size: runs of the same input size (a scale and its flip) per forward pass.
        """
        super().__init__()
        if isinstance(model, DistributedDataParallel):
            model = model.module
        self.model = model
        # Mirror the model's mode without touching it (a training model wrapped for a periodic
        # evaluation must stay in training mode; inference_on_dataset switches both to eval).
        self.training = model.training
        min_sizes = [int(s) for s in min_sizes]
        if size_ranges is not None:
            size_ranges = [tuple(float(v) for v in r) for r in size_ranges]
            if len(size_ranges) != len(min_sizes):
                raise ValueError(
                    f"ATSSWithTTA: {len(size_ranges)} size_ranges for {len(min_sizes)} min_sizes"
                )
        if merge_type not in MERGE_TYPES:
            raise ValueError(f"ATSSWithTTA: merge_type must be one of {MERGE_TYPES}")
        runs = [_Run(int(test_size), int(test_max_size), False, None)]
        if flip:
            runs.append(_Run(int(test_size), int(test_max_size), True, None))
        for i, s in enumerate(min_sizes):
            cap = int(test_max_size) if s < int(test_size) else int(max_size)
            rng = None if size_ranges is None else size_ranges[i]
            runs.append(_Run(s, cap, False, rng))
            if scale_flip:
                runs.append(_Run(s, cap, True, rng))
        self.runs = runs
        self.merge_type = merge_type
        self.vote_iou_threshold = float(vote_iou_threshold)
        self.soft_score_threshold = float(soft_score_threshold)
        self.max_detections_per_image = int(max_detections_per_image)
        self.batch_size = max(1, int(batch_size))

    def forward(self, batched_inputs: List[Dict]) -> List[Dict[str, Instances]]:
        if self.training:
            raise RuntimeError("ATSSWithTTA is for inference; call .eval() first")
        with torch.no_grad():
            return [{"instances": self._inference_one_image(x)} for x in batched_inputs]

    # ------------------------------------------------------------------------------ helpers
    def _read_image(self, inp: Dict) -> Tensor:
        if "image" in inp:
            return inp["image"]
        fmt = getattr(self.model, "input_format", None) or "BGR"
        img = read_image(inp["file_name"], format=fmt)
        return torch.as_tensor(np.ascontiguousarray(img.transpose(2, 0, 1)))

    @staticmethod
    def _resize(image: Tensor, size: Tuple[int, int]) -> Tensor:
        """CHW image resized like Detectron2's test mapper (PIL bilinear for uint8)."""
        h, w = image.shape[-2:]
        if (h, w) == tuple(size):
            return image
        tfm = ResizeTransform(h, w, size[0], size[1], Image.BILINEAR)
        out = tfm.apply_image(image.permute(1, 2, 0).cpu().numpy())
        if out.ndim == 2:
            out = out[:, :, None]
        return torch.as_tensor(np.ascontiguousarray(out.transpose(2, 0, 1))).to(image.device)

    def _inference_one_image(self, inp: Dict) -> Instances:
        image = self._read_image(inp)
        original = (int(inp.get("height", image.shape[-2])), int(inp.get("width", image.shape[-1])))
        resized = {}  # one resized image per distinct input size; flips are made per batch
        jobs = []  # (run, input size)
        for run in self.runs:
            size = ResizeShortestEdge.get_output_shape(*original, run.short_edge, run.max_size)
            if size not in resized:
                resized[size] = self._resize(image, size)
            jobs.append((run, size))

        boxes, scores, classes = [], [], []
        start = 0
        while start < len(jobs):
            # Batch only runs of one input size, so that padding never differs from a lone run.
            end = start + 1
            while (
                end < len(jobs) and end - start < self.batch_size and jobs[end][1] == jobs[start][1]
            ):
                end += 1
            inputs = [
                {"image": resized[size].flip(-1) if run.hflip else resized[size]}
                for run, size in jobs[start:end]
            ]
            outputs = self.model(inputs)
            for (run, size), out in zip(jobs[start:end], outputs):
                inst = out["instances"]
                b = inst.pred_boxes.tensor
                keep = torch.ones(len(b), dtype=torch.bool, device=b.device)
                if run.size_range is not None:
                    keep = size_filter(b, run.size_range)
                b = boxes_to_original(b[keep], size, original, run.hflip)
                nonempty = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
                boxes.append(b[nonempty])
                scores.append(inst.scores[keep][nonempty])
                classes.append(inst.pred_classes[keep][nonempty])
            start = end

        b, s, c = batched_box_voting(
            torch.cat(boxes),
            torch.cat(scores),
            torch.cat(classes),
            self.vote_iou_threshold,
            self.merge_type == "soft-vote",
            self.soft_score_threshold,
        )
        k = self.max_detections_per_image
        result = Instances(original)
        result.pred_boxes = Boxes(b[:k])
        result.pred_boxes.clip(original)  # averages of clipped boxes may round past the edge
        result.scores = s[:k]
        result.pred_classes = c[:k]
        return result


def build_tta_model(cfg, model: nn.Module) -> nn.Module:
    """
    The model to evaluate: ``model`` itself, or ``ATSSWithTTA(model, **params)`` when the
    config switch ``cfg.test.aug.enabled`` is true (params: the other keys of ``cfg.test.aug``,
    see ``configs/common/tta.py``, put at ``test.aug`` by ``configs/common/test.py``). A
    DistributedDataParallel model is unwrapped first. Configs without a ``test.aug`` node get
    the model unchanged.
    """
    aug = None
    test = cfg.get("test", None) if hasattr(cfg, "get") else None
    if test is not None and hasattr(test, "get"):
        aug = test.get("aug", None)
    if aug is None or not aug.get("enabled", False):
        return model
    params = OmegaConf.to_container(aug, resolve=True) if isinstance(aug, DictConfig) else dict(aug)
    params.pop("enabled", None)
    logger.info("Test-time augmentation on: %s", params)
    return ATSSWithTTA(model, **params)
