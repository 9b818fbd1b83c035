"""The ATSS detector on Detectron2's :class:`DenseDetector`."""

from typing import Dict, List, Optional, Tuple

import torch
from detectron2.layers import batched_nms
from detectron2.modeling import Backbone
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils.events import get_event_storage
from torch import Tensor, nn

from .anchors import atss_anchor_generator
from .assigners import BACKGROUND, IGNORE, AnchorAssigner
from .box_coding import anchor_scale_of, build_box_transform
from .losses import (
    centerness_loss,
    centerness_targets,
    focal_loss,
    loss_normalizers,
    weighted_giou_loss,
)

__all__ = ["ATSS", "BOX_CONVENTIONS"]

# "detectron2": continuous boxes (width x2 - x1). "authors": the boxes sfzhang15/ATSS writes to
# its COCO results file, for evaluating their published weights as they did (see ATSS.__init__).
BOX_CONVENTIONS = ("detectron2", "authors")


class ATSS(DenseDetector):
    """
    ATSS (:paper:`atss`): a RetinaNet-style one-stage detector whose positives are chosen by
    adaptive training sample selection, trained with focal, centerness-weighted GIoU and
    centerness losses, and decoded in the authors' order at inference.
    """

    def __init__(
        self,
        *,
        backbone: Backbone,
        head: nn.Module,
        head_in_features: Optional[List[str]] = None,
        anchor_generator: Optional[nn.Module] = None,
        box_coding: str = "BOX",
        assigner: Optional[AnchorAssigner] = None,
        num_classes: int,
        focal_loss_alpha: float = 0.25,
        focal_loss_gamma: float = 2.0,
        reg_loss_weight: float = 2.0,
        test_score_thresh: float = 0.05,
        test_topk_candidates: int = 1000,
        test_nms_thresh: float = 0.6,
        max_detections_per_image: int = 100,
        pixel_mean,
        pixel_std,
        input_format: Optional[str] = "BGR",
        box_convention: str = "detectron2",
    ):
        """
        Args:
            backbone, head, head_in_features, pixel_mean, pixel_std: as in
                :class:`DenseDetector`; the head returns (logits, bbox_reg, centerness).
            anchor_generator: default: one square anchor of side 8·stride per location,
                centres at (i + 0.5)·stride (:func:`atss.modeling.anchors.atss_anchor_generator`).
            box_coding: "BOX" (anchor deltas, weights 10, 10, 5, 5) or "POINT" (l, t, r, b
                distances / stride, anchor-free "FCOS + ATSS").
            assigner: label assignment; default ``AnchorAssigner("ATSS", topk=9)``.
            num_classes: C.
            focal_loss_alpha, focal_loss_gamma: focal loss.
            reg_loss_weight: weight of the centerness-weighted GIoU loss (2.0).
            test_score_thresh: candidates need a raw class probability above this (0.05).
            test_topk_candidates: per level, the candidates with the highest p·centerness.
            test_nms_thresh: class-wise NMS IoU threshold.
            max_detections_per_image: detections kept per image after NMS.
            input_format: "BGR" or "RGB", the channel order the backbone expects.
            box_convention: "detectron2" (continuous boxes, our own models) or "authors": output
                the boxes the authors' code (maskrcnn-benchmark's legacy "+1" convention) writes
                to its COCO results file, for evaluating their converted weights as they did.
                Their decoder spans x2 - x1 = w - 1 around the same centre (ours: w), they clip
                x1, x2 to [0, W_in - 1], run NMS with "+1" IoUs, scale x1, x2 by r = W_out / W_in
                and write (x1·r, (x2 - x1)·r + 1). With "authors" each box (ours: x1', x2') is
                shifted by half a pixel and clipped as theirs — x1 = clip(x1' + 0.5, 0, W_in - 1),
                x2 + 1 = clip(x2' + 0.5, 1, W_in) — NMS then sees the same IoUs as theirs, and the
                output is (x1·r, x2·r + 1): Detectron2's COCO writer (x, y, x2 - x1, y2 - y1)
                then writes their numbers. At r = 1 that is their box 0.5 px right/down of ours,
                same size. Not for TTA (the wrapper runs at r = 1 and merges its own way).
        """
        if box_convention not in BOX_CONVENTIONS:
            raise ValueError(
                f"ATSS: box_convention must be one of {BOX_CONVENTIONS}, got {box_convention!r}"
            )
        super().__init__(
            backbone, head, head_in_features, pixel_mean=pixel_mean, pixel_std=pixel_std
        )
        self.head_in_features = list(self.head_in_features)
        self.num_classes = int(num_classes)
        if anchor_generator is None:
            shapes = backbone.output_shape()
            strides = [shapes[f].stride for f in self.head_in_features]
            anchor_generator = atss_anchor_generator(strides)
        self.anchor_generator = anchor_generator
        num_cell = anchor_generator.num_cell_anchors
        if len(set(num_cell)) != 1:
            raise ValueError(f"ATSS: anchors per location must be equal on all levels: {num_cell}")
        self.anchors_per_location = int(num_cell[0])
        if box_coding == "POINT" and self.anchors_per_location != 1:
            raise ValueError("ATSS: POINT box coding is anchor-free and needs 1 anchor/location")
        self.box_coding = box_coding
        self.box2box_transform = build_box_transform(box_coding, anchor_scale_of(anchor_generator))
        self.assigner = assigner if assigner is not None else AnchorAssigner("ATSS", topk=9)
        self.focal_loss_alpha = float(focal_loss_alpha)
        self.focal_loss_gamma = float(focal_loss_gamma)
        self.reg_loss_weight = float(reg_loss_weight)
        self.test_score_thresh = float(test_score_thresh)
        self.test_topk_candidates = int(test_topk_candidates)
        self.test_nms_thresh = float(test_nms_thresh)
        self.max_detections_per_image = int(max_detections_per_image)
        self.input_format = input_format
        self.box_convention = box_convention

    # ----------------------------------------------------------------------------- training
    def forward(self, batched_inputs: List[Dict[str, Tensor]]):
        if len(batched_inputs) == 0:
            if self.training:
                raise ValueError("ATSS: training needs at least one image, got an empty list")
            return []
        if self.training and not torch.jit.is_tracing():
            _check_finite_boxes(batched_inputs)
        outputs = super().forward(batched_inputs)
        if self.training or self.box_convention == "detectron2":
            return outputs
        for x, out in zip(batched_inputs, outputs):
            in_h, in_w = x["image"].shape[-2:]
            scale_x = x.get("width", in_w) / in_w
            scale_y = x.get("height", in_h) / in_h
            out["instances"].pred_boxes = Boxes(
                authors_results_file_boxes(out["instances"].pred_boxes.tensor, scale_x, scale_y)
            )
        return outputs

    def preprocess_image(self, batched_inputs: List[Dict[str, Tensor]]):
        """
        Normalise, pad and batch the images. Grayscale (1-channel) images are repeated to three
        channels and a 4th (alpha) channel is dropped, so any image decodes to valid results.
        """
        if torch.jit.is_tracing():  # exported graphs take images in the model's format
            return super().preprocess_image(batched_inputs)
        channels = len(self.pixel_mean)
        inputs = []
        for x in batched_inputs:
            img = x["image"]
            if img.dim() != 3:
                raise ValueError(f"ATSS: image must be (C, H, W), got shape {tuple(img.shape)}")
            if img.shape[0] == 1 and channels != 1:
                x = {**x, "image": img.expand(channels, -1, -1)}
            elif img.shape[0] == channels + 1:
                x = {**x, "image": img[:channels]}
            elif img.shape[0] != channels:
                raise ValueError(
                    f"ATSS: image has {img.shape[0]} channels, the model expects {channels}"
                )
            inputs.append(x)
        return super().preprocess_image(inputs)

    def fp32_predictions(self, predictions: List[List[Tensor]]) -> List[List[Tensor]]:
        """
        The head's (logits, box deltas, centerness) as per level (N, R_l, K) tensors, K = C, 4,
        1, in float32: the boundary between the network and the mathematics after it. Under
        mixed precision (``train.amp``, :func:`atss.engine.device.autocast_dtype`) the backbone
        and the head run in bf16 or fp16; the matcher's distances and areas, the losses (focal,
        GIoU, centerness BCE), the box decoding and the NMS scores stay in float32, where bf16's
        8-bit mantissa would round a 1000 px coordinate to a multiple of 4 px and a probability
        near 1 to steps of 1/256. Anchors and ground-truth boxes are Detectron2 ``Boxes``, float32
        always, and none of these steps calls an op that autocast lowers (convolutions, matrix
        products), so autocast may stay on around them.
        """
        per_kind = self._transpose_dense_predictions(predictions, [self.num_classes, 4, 1])
        return [[x.float() for x in levels] for levels in per_kind]

    def forward_training(self, images, features, predictions, gt_instances):
        logits, deltas, ctr = self.fp32_predictions(predictions)
        anchors = self.anchor_generator(features)
        grid_sizes = [tuple(f.shape[-2:]) for f in features]
        gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances, grid_sizes)
        return self.losses(anchors, logits, gt_labels, deltas, gt_boxes, ctr)

    @torch.no_grad()
    def label_anchors(
        self,
        anchors: List[Boxes],
        gt_instances: List[Instances],
        grid_sizes: Optional[List[Tuple[int, int]]] = None,
    ):
        """
        Args:
            anchors: per level, Boxes of the level's H_l·W_l·#A anchors.
            gt_instances: per image, Instances with ``gt_boxes`` and ``gt_classes``.
            grid_sizes: per level (H_l, W_l), enables the matcher's grid fast path.

        Returns:
            gt_labels: per image, (R,) int64: class in [0, C), C for background, -1 ignored.
            matched_gt_boxes: per image, (R, 4) matched GT box (zeros where unmatched).
        """
        anchor_tensors = [a.tensor for a in anchors]
        num_anchors = sum(len(a) for a in anchor_tensors)
        gt_labels, matched_boxes, num_without = [], [], []
        for inst in gt_instances:
            boxes = inst.gt_boxes.tensor
            matched = self.assigner(anchor_tensors, boxes, self.anchors_per_location, grid_sizes)
            if len(inst) > 0:
                safe = matched.clamp(min=0)
                labels = inst.gt_classes[safe].clone()
                matched_boxes_i = boxes[safe].float()
            else:
                labels = matched.new_zeros(num_anchors)
                matched_boxes_i = boxes.new_zeros((num_anchors, 4), dtype=torch.float32)
            labels[matched == BACKGROUND] = self.num_classes
            labels[matched == IGNORE] = -1  # focal_loss's "ignored" label
            gt_labels.append(labels)
            matched_boxes.append(matched_boxes_i)
            num_without.append(_num_gts_without_positive(matched, len(inst)))
        # Faithful to the paper, a GT may get no positive (threshold above every candidate IoU,
        # a box too thin to contain an anchor centre, ...): log how often it happens.
        num_gt = sum(len(x) for x in gt_instances)
        if num_gt > 0:
            get_event_storage().put_scalar(
                "gt_without_positive_frac", torch.stack(num_without).sum() / num_gt
            )
        return gt_labels, matched_boxes

    def losses(self, anchors, pred_logits, gt_labels, pred_deltas, gt_boxes, pred_centerness):
        """
        Args:
            anchors: per level Boxes (R_l, 4); pred_*: per level (N, R_l, K) with K = C, 4, 1;
            gt_labels, gt_boxes: per image, from :meth:`label_anchors`.

        Returns:
            dict with ``loss_atss_cls``, ``loss_atss_reg``, ``loss_atss_ctr``.
        """
        num_images = len(gt_labels)
        labels = torch.stack(gt_labels)  # (N, R)
        pos = (labels >= 0) & (labels != self.num_classes)
        logits = torch.cat(pred_logits, dim=1)  # (N, R, C)
        deltas = torch.cat(pred_deltas, dim=1)  # (N, R, 4)
        ctr_logits = torch.cat(pred_centerness, dim=1).squeeze(2)  # (N, R)
        anchors = Boxes.cat(anchors).tensor  # (R, 4)

        # Positives only: decode, then GIoU and centerness on absolute boxes.
        pos_anchors = anchors[None].expand(num_images, -1, -1)[pos]
        target_boxes = torch.stack(gt_boxes)[pos]
        pred_boxes = self.box2box_transform.apply_deltas(deltas[pos], pos_anchors)
        ctr_targets = centerness_targets(Boxes(pos_anchors).get_centers(), target_boxes)

        num_pos, ctr_sum = loss_normalizers(pos.sum(), ctr_targets.sum())
        loss_cls = focal_loss(
            logits.reshape(-1, self.num_classes),
            labels.reshape(-1),
            self.num_classes,
            self.focal_loss_alpha,
            self.focal_loss_gamma,
        )
        loss_reg = weighted_giou_loss(pred_boxes, target_boxes, ctr_targets)
        loss_ctr = centerness_loss(ctr_logits[pos], ctr_targets)

        get_event_storage().put_scalar("num_pos_anchors", pos.sum() / num_images)
        return {
            "loss_atss_cls": loss_cls / num_pos,
            "loss_atss_reg": self.reg_loss_weight * loss_reg / ctr_sum,
            "loss_atss_ctr": loss_ctr / num_pos,
        }

    # ---------------------------------------------------------------------------- inference
    def forward_inference(
        self, images: ImageList, features: List[Tensor], predictions: List[List[Tensor]]
    ):
        logits, deltas, ctr = self.fp32_predictions(predictions)
        anchors = self.anchor_generator(features)
        results: List[Instances] = []
        for i, image_size in enumerate(images.image_sizes):
            results.append(
                self.inference_single_image(
                    anchors,
                    [x[i] for x in logits],
                    [x[i] for x in deltas],
                    [x[i] for x in ctr],
                    image_size,
                )
            )
        return results

    def inference_single_image(
        self,
        anchors: List[Boxes],
        logits: List[Tensor],
        deltas: List[Tensor],
        centerness: List[Tensor],
        image_size: Tuple[int, int],
    ) -> Instances:
        """
        The authors' order: per level keep (anchor, class) pairs whose raw class probability p
        exceeds ``test_score_thresh``, take the ``test_topk_candidates`` best by p·c (c =
        centerness probability), decode and clip; then class-wise NMS over all levels and keep
        ``max_detections_per_image``. Reported score: sqrt(p·c).

        Args:
            anchors: per level Boxes (R_l, 4); logits (R_l, C), deltas (R_l, 4),
                centerness (R_l, 1) per level for this image.
            image_size: (height, width) of the resized input, for clipping.
        """
        per_level = [
            self._decode_level(a, lg, d, c, image_size)
            for a, lg, d, c in zip(anchors, logits, deltas, centerness)
        ]
        pred = Instances.cat(per_level)
        keep = batched_nms(
            pred.pred_boxes.tensor, pred.scores, pred.pred_classes, self.test_nms_thresh
        )
        return pred[keep[: self.max_detections_per_image]]

    def _decode_level(self, anchors, logits, deltas, centerness, image_size):
        probs = logits.sigmoid()  # (R_l, C)
        keep = probs > self.test_score_thresh
        idx = torch.nonzero(keep)  # (K, 2): anchor, class; row-major, the order of probs[keep]
        # p·c only for the kept pairs (not all R_l x C of them)
        scores = probs[keep] * centerness[idx[:, 0], 0].sigmoid()
        num = idx.shape[0]
        # A tensor while tracing: clamp keeps k data-dependent in the exported graph.
        if isinstance(num, Tensor):
            num_topk = torch.clamp(num, max=self.test_topk_candidates)
        else:
            num_topk = min(num, self.test_topk_candidates)
        scores, order = scores.topk(num_topk)
        anchor_idx, classes = idx[order].unbind(dim=1)
        boxes = self.box2box_transform.apply_deltas(deltas[anchor_idx], anchors.tensor[anchor_idx])
        # A diverged model can decode inf/NaN boxes: drop them rather than fail later.
        finite = torch.isfinite(boxes).all(dim=1)
        boxes, scores, classes = boxes[finite], scores[finite], classes[finite]
        if self.box_convention == "authors":
            boxes = authors_clip(boxes, image_size)
        else:
            boxes = _clip(boxes, image_size)
        return Instances(
            image_size,
            pred_boxes=Boxes(boxes),
            scores=scores.sqrt(),
            pred_classes=classes,
        )


def _num_gts_without_positive(matched: Tensor, num_gt: int) -> Tensor:
    has_pos = torch.zeros(num_gt + 1, dtype=torch.bool, device=matched.device)
    has_pos[matched.clamp(min=BACKGROUND) + 1] = True  # slot 0: background/ignored anchors
    return num_gt - has_pos[1:].sum()


def _clip(boxes: Tensor, image_size) -> Tensor:
    """Clip (R, 4) XYXY boxes to (height, width); sizes may be tensors while tracing."""
    h, w = image_size[0], image_size[1]  # indexing, not iteration: no TracerWarning
    x = boxes[:, 0::2].clamp(min=0, max=w)
    y = boxes[:, 1::2].clamp(min=0, max=h)
    return torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], dim=1)


def authors_clip(boxes: Tensor, image_size) -> Tensor:
    """
    (R, 4) continuous XYXY boxes -> the authors' clipped "+1" boxes as half-open boxes
    (x1, y1, x2 + 1, y2 + 1) of theirs: shifted by +0.5 px (their decoder's box is ours shrunk by
    0.5 px per side, their "+1" widths add 1 back on the right), then clipped as their
    ``clip_to_image`` clips x1, x2 to [0, W - 1]: x1 to [0, W - 1], x2 + 1 to [1, W].
    """
    h, w = image_size[0], image_size[1]
    b = boxes + 0.5
    x1 = b[:, 0].clamp(min=0, max=w - 1)
    y1 = b[:, 1].clamp(min=0, max=h - 1)
    x2 = b[:, 2].clamp(min=1, max=w)
    y2 = b[:, 3].clamp(min=1, max=h)
    return torch.stack([x1, y1, x2, y2], dim=1)


def authors_results_file_boxes(boxes: Tensor, scale_x, scale_y) -> Tensor:
    """
    Half-open boxes of :func:`authors_clip`, already scaled by (scale_x, scale_y) to the output
    resolution (Detectron2's postprocess), -> the boxes whose (x1, y1, x2 - x1, y2 - y1) is what
    the authors' ``coco_eval.py`` writes: their ``BoxList.resize`` scales x1 and the *inclusive*
    x2 (ours minus 1), their xywh adds 1: x2_out = (x2 - 1)·s + 1.
    """
    out = boxes.clone()
    out[:, 2] += 1 - scale_x
    out[:, 3] += 1 - scale_y
    return out


def _check_finite_boxes(batched_inputs):
    """Fail early, naming the image, when a ground-truth box has a NaN or infinite coordinate."""
    boxes = [x["instances"].gt_boxes.tensor for x in batched_inputs if "instances" in x]
    if not boxes or bool(torch.isfinite(torch.cat(boxes)).all()):
        return
    for x in batched_inputs:
        b = x["instances"].gt_boxes.tensor
        if not bool(torch.isfinite(b).all()):
            bad = (~torch.isfinite(b)).any(dim=1).nonzero().flatten().tolist()
            raise ValueError(
                f"ATSS: non-finite gt_boxes in image_id={x.get('image_id')!r} "
                f"file_name={x.get('file_name')!r} at annotation rows {bad}: "
                f"{b[bad[:3]].tolist()}"
            )
