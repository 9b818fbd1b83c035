"""Converters from the two published families of ATSS checkpoints to this project's state dict:
``"authors"`` (maskrcnn-benchmark checkpoints of ``sfzhang15/ATSS``, ``{"model": ...}``, keys
``backbone.body.*`` / ``backbone.fpn.*`` / ``rpn.head.*``) and ``"mmdet"`` (mmdetection's,
``{"state_dict": ...}``, keys ``backbone.*`` / ``neck.*`` / ``bbox_head.*``).

Each family is a list of renaming rules (source key pattern -> Detectron2 key, read in the code
that wrote the checkpoints; ``tests/converters/published_layouts.py`` rebuilds those layouts),
plus the few value conventions named in the converters (the authors' FrozenBN without eps,
(1,)-shaped scales). No model is needed; :func:`check_against_model` compares the result with
one. What a config must mirror to run converted weights (anchor offset, pixel mean/std, channel
order, ...): docs/published_weights.md and ``configs/COCO/converted/``. ``"detectron2"``: a file
already in Detectron2's names (this project's own, a model-zoo ``.pkl``) is kept as it is, so
that ``--allow-pickle`` rewrites any trusted checkpoint as one the safe readers load.
"""

import logging
import os
import pickle
import re
from typing import Any, Callable, Dict, List, Mapping, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from atss.engine.checkpoint import model_zoo_checkpoint
from atss.fileio import UnsafeFileError, load_pickle_file, load_torch_file

__all__ = [
    "AUTHORS",
    "DETECTRON2",
    "MMDET",
    "FORMATS",
    "read_checkpoint",
    "detect_format",
    "convert_authors_state_dict",
    "convert_mmdet_state_dict",
    "convert_state_dict",
    "convert_checkpoint",
    "check_against_model",
]

logger = logging.getLogger(__name__)

AUTHORS = "authors"
MMDET = "mmdet"
DETECTRON2 = "detectron2"  # already our names: kept as they are
FORMATS = (AUTHORS, MMDET, DETECTRON2)
# What Detectron2's checkpointer reads beside a model-zoo file's arrays (name matching, and the
# Caffe2 conversion when "__author__" is "Caffe2"): kept when such a file is rewritten.
_MODEL_ZOO_MARKS = ("__author__", "matching_heuristics")

# Detectron2's FrozenBatchNorm2d computes w / sqrt(var + eps) with this eps.
_D2_FROZEN_BN_EPS = 1e-5
_NORM_FIELDS = r"(weight|bias|running_mean|running_var)"

# A rule maps a source key (full match) to our key: (pattern, function of the match).
Rule = Tuple[re.Pattern, Callable[[re.Match], str]]


def _rule(pattern: str, target: Callable[[re.Match], str]) -> Rule:
    return re.compile(pattern), target


def _res(m, i=1):
    # ResNet stage: maskrcnn-benchmark / mmdet "layer1".."layer4" are Detectron2's "res2".."res5".
    return f"backbone.bottom_up.res{int(m.group(i)) + 1}.{m.group(i + 1)}"


_AUTHORS_RULES: List[Rule] = [
    # ---- backbone.body: ResNet / ResNeXt (FrozenBN), optionally DCNv2 in conv2.
    _rule(r"backbone\.body\.stem\.conv1\.weight", lambda m: "backbone.bottom_up.stem.conv1.weight"),
    _rule(
        rf"backbone\.body\.stem\.bn1\.{_NORM_FIELDS}",
        lambda m: f"backbone.bottom_up.stem.conv1.norm.{m.group(1)}",
    ),
    _rule(
        r"backbone\.body\.layer(\d)\.(\d+)\.conv([123])\.weight",
        lambda m: f"{_res(m)}.conv{m.group(3)}.weight",
    ),
    _rule(
        r"backbone\.body\.layer(\d)\.(\d+)\.conv2\.conv\.weight",
        lambda m: f"{_res(m)}.conv2.weight",
    ),
    _rule(
        r"backbone\.body\.layer(\d)\.(\d+)\.conv2\.offset\.(weight|bias)",
        lambda m: f"{_res(m)}.conv2_offset.{m.group(3)}",
    ),
    _rule(
        rf"backbone\.body\.layer(\d)\.(\d+)\.bn([123])\.{_NORM_FIELDS}",
        lambda m: f"{_res(m)}.conv{m.group(3)}.norm.{m.group(4)}",
    ),
    _rule(
        r"backbone\.body\.layer(\d)\.(\d+)\.downsample\.0\.weight",
        lambda m: f"{_res(m)}.shortcut.weight",
    ),
    _rule(
        rf"backbone\.body\.layer(\d)\.(\d+)\.downsample\.1\.{_NORM_FIELDS}",
        lambda m: f"{_res(m)}.shortcut.norm.{m.group(3)}",
    ),
    # ---- backbone.fpn: 1-based slots, slot k (k = 2, 3, 4) takes res(k+1).
    _rule(
        r"backbone\.fpn\.fpn_inner([234])\.(weight|bias)",
        lambda m: f"backbone.fpn_lateral{int(m.group(1)) + 1}.{m.group(2)}",
    ),
    _rule(
        r"backbone\.fpn\.fpn_layer([234])\.(weight|bias)",
        lambda m: f"backbone.fpn_output{int(m.group(1)) + 1}.{m.group(2)}",
    ),
    _rule(
        r"backbone\.fpn\.top_blocks\.(p6|p7)\.(weight|bias)",
        lambda m: f"backbone.top_block.{m.group(1)}.{m.group(2)}",
    ),
    # ---- rpn.head: same [conv, GN, ReLU] x 4 layout as ours, so Sequential indices carry over.
    _rule(
        r"rpn\.head\.(cls|bbox)_tower\.(\d+)\.offset\.(weight|bias)",
        lambda m: f"head.{m.group(1)}_subnet.{m.group(2)}.conv_offset.{m.group(3)}",
    ),
    _rule(
        r"rpn\.head\.(cls|bbox)_tower\.(\d+)\.conv\.(weight|bias)",
        lambda m: f"head.{m.group(1)}_subnet.{m.group(2)}.conv.{m.group(3)}",
    ),
    _rule(
        r"rpn\.head\.(cls|bbox)_tower\.(\d+)\.(weight|bias)",
        lambda m: f"head.{m.group(1)}_subnet.{m.group(2)}.{m.group(3)}",
    ),
    _rule(r"rpn\.head\.cls_logits\.(weight|bias)", lambda m: f"head.cls_score.{m.group(1)}"),
    _rule(r"rpn\.head\.bbox_pred\.(weight|bias)", lambda m: f"head.bbox_pred.{m.group(1)}"),
    _rule(r"rpn\.head\.centerness\.(weight|bias)", lambda m: f"head.centerness.{m.group(1)}"),
    _rule(r"rpn\.head\.scales\.(\d+)\.scale", lambda m: f"head.scales.{m.group(1)}.scale"),
]
# Anchors are recomputed by our DefaultAnchorGenerator (non-persistent buffers).
_AUTHORS_IGNORED = [re.compile(r"rpn\.anchor_generator\.cell_anchors\.\d+")]


def _fpn_conv_target(m) -> str:
    # fpn_convs.0..2 are the 3x3 outputs of res3..res5; 3 and 4 are the extra P6 and P7 convs.
    j = int(m.group(1))
    name = f"fpn_output{j + 3}" if j < 3 else ("top_block.p6", "top_block.p7")[j - 3]
    return f"backbone.{name}.{m.group(2)}"


_MMDET_RULES: List[Rule] = [
    # ---- backbone: torchvision-style ResNet ("pytorch" style: stride in the 3x3 conv), BN.
    _rule(r"backbone\.conv1\.weight", lambda m: "backbone.bottom_up.stem.conv1.weight"),
    _rule(
        rf"backbone\.bn1\.{_NORM_FIELDS}",
        lambda m: f"backbone.bottom_up.stem.conv1.norm.{m.group(1)}",
    ),
    _rule(
        r"backbone\.layer(\d)\.(\d+)\.conv([123])\.weight",
        lambda m: f"{_res(m)}.conv{m.group(3)}.weight",
    ),
    _rule(
        rf"backbone\.layer(\d)\.(\d+)\.bn([123])\.{_NORM_FIELDS}",
        lambda m: f"{_res(m)}.conv{m.group(3)}.norm.{m.group(4)}",
    ),
    _rule(
        r"backbone\.layer(\d)\.(\d+)\.downsample\.0\.weight",
        lambda m: f"{_res(m)}.shortcut.weight",
    ),
    _rule(
        rf"backbone\.layer(\d)\.(\d+)\.downsample\.1\.{_NORM_FIELDS}",
        lambda m: f"{_res(m)}.shortcut.norm.{m.group(3)}",
    ),
    # ---- neck: start_level=1, so lateral/fpn conv j is res(j+3).
    _rule(
        r"neck\.lateral_convs\.([012])\.conv\.(weight|bias)",
        lambda m: f"backbone.fpn_lateral{int(m.group(1)) + 3}.{m.group(2)}",
    ),
    _rule(r"neck\.fpn_convs\.([0-4])\.conv\.(weight|bias)", _fpn_conv_target),
    # ---- bbox_head: ConvModule i = our Sequential slots 3i (conv) and 3i+1 (GN).
    _rule(
        r"bbox_head\.(cls|reg)_convs\.(\d+)\.conv\.(weight|bias)",
        lambda m: f"head.{_MMDET_TOWER[m.group(1)]}.{3 * int(m.group(2))}.{m.group(3)}",
    ),
    _rule(
        r"bbox_head\.(cls|reg)_convs\.(\d+)\.gn\.(weight|bias)",
        lambda m: f"head.{_MMDET_TOWER[m.group(1)]}.{3 * int(m.group(2)) + 1}.{m.group(3)}",
    ),
    _rule(r"bbox_head\.atss_cls\.(weight|bias)", lambda m: f"head.cls_score.{m.group(1)}"),
    _rule(r"bbox_head\.atss_reg\.(weight|bias)", lambda m: f"head.bbox_pred.{m.group(1)}"),
    _rule(r"bbox_head\.atss_centerness\.(weight|bias)", lambda m: f"head.centerness.{m.group(1)}"),
    _rule(r"bbox_head\.scales\.(\d+)\.scale", lambda m: f"head.scales.{m.group(1)}.scale"),
]
_MMDET_TOWER = {"cls": "cls_subnet", "reg": "bbox_subnet"}
# BatchNorm's step counter has no meaning for a frozen norm.
_MMDET_IGNORED = [re.compile(r".*\.num_batches_tracked")]


def _unpickle_trusted(path: str) -> Any:
    """The object in ``path``, fully unpickled: whatever the file names runs. The one place in
    the project that does so (``--allow-pickle``), for a file its owner trusts."""
    if path.endswith(".pkl"):
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")  # as Detectron2 reads model-zoo files
    return torch.load(path, map_location="cpu", weights_only=False)


def read_checkpoint(path: str, allow_pickle: bool = False) -> Dict[str, Any]:
    """
    Load a checkpoint file: ``{"model": state dict}``, with a model-zoo ``.pkl``'s
    ``"__author__"`` and ``"matching_heuristics"`` beside it.

    Unwraps ``{"model": ...}`` (maskrcnn-benchmark, Detectron2) and ``{"state_dict": ...}``
    (mmcv), strips the ``module.`` prefix of DDP-wrapped models and makes NumPy arrays (a
    ``.pkl`` of Detectron2's or Caffe2's model zoo, read as Detectron2 reads it) tensors.

    Args:
        path: a ``.pth`` (any file ``torch.save`` wrote) or a ``.pkl`` file.
        allow_pickle: unpickle the file fully (``torch.load(weights_only=False)``,
            ``pickle.load``), which runs whatever it names: only for a file you trust, which the
            safe readers (:mod:`atss.fileio`) refuse because it holds Python objects beside the
            weights. Its checkpoint, rewritten by ``tools/convert_checkpoint.py``, then loads
            safely.

    Raises:
        UnsafeFileError: without ``allow_pickle``, for a file holding more than data.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        if allow_pickle:
            obj = _unpickle_trusted(path)
        else:
            obj = load_pickle_file(path) if path.endswith(".pkl") else load_torch_file(path)
    except UnsafeFileError:
        raise
    except Exception as e:  # the unpicklers raise several types (UnpicklingError, RuntimeError)
        raise ValueError(f"{path}: cannot be read as a checkpoint ({e})") from e
    if not isinstance(obj, Mapping):
        return {"model": _unwrap_state_dict(obj, path)}  # which says what it got instead
    if path.endswith(".pkl"):
        obj = model_zoo_checkpoint(obj)
    marks = {k: obj[k] for k in _MODEL_ZOO_MARKS if k in obj}
    return {"model": _unwrap_state_dict(obj, path), **marks}


def _unwrap_state_dict(obj, source: str) -> Dict[str, Tensor]:
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(
            f"{source}: expected a state dict, or a dict with a 'model' or 'state_dict' entry, "
            f"got {type(obj).__name__}"
        )
    obj = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in obj.items()}
    not_tensors = [k for k, v in obj.items() if not isinstance(v, Tensor)]
    if not_tensors:
        raise ValueError(
            f"{source}: the state dict holds non-tensor values, e.g. {not_tensors[:3]} "
            f"({type(obj[not_tensors[0]]).__name__})"
        )
    prefix = "module."
    if all(k.startswith(prefix) for k in obj):
        obj = {k[len(prefix) :]: v for k, v in obj.items()}
    return dict(obj)


def detect_format(state_dict: Mapping[str, Tensor], source: str = "<state dict>") -> str:
    """
    Tell the two published layouts apart by their top-level module names; a state dict in
    neither is taken to be in Detectron2's names already.

    Returns:
        ``AUTHORS`` (``backbone.body.*`` / ``rpn.head.*``), ``MMDET`` (``neck.*`` /
        ``bbox_head.*``), or ``DETECTRON2`` for neither (kept as it is).
    """
    keys = [k[len("module.") :] if k.startswith("module.") else k for k in state_dict]
    is_authors = any(k.startswith(("backbone.body.", "rpn.head.")) for k in keys)
    is_mmdet = any(k.startswith(("bbox_head.", "neck.")) for k in keys)
    if not is_authors and not is_mmdet:
        return DETECTRON2
    if is_authors and is_mmdet:
        raise ValueError(
            f"{source}: cannot tell whether this is an authors' (maskrcnn-benchmark: "
            f"'backbone.body.*', 'rpn.head.*') or an mmdetection ('neck.*', 'bbox_head.*') ATSS "
            f"checkpoint; first keys: {keys[:5]}. Pass the format explicitly."
        )
    return AUTHORS if is_authors else MMDET


def _rename(
    state_dict: Mapping[str, Tensor],
    rules: Sequence[Rule],
    ignored: Sequence[re.Pattern],
    fmt: str,
    source: str,
) -> Dict[str, Tensor]:
    """Apply the first fully matching rule to every key; unknown keys are an error."""
    out: Dict[str, Tensor] = {}
    origin: Dict[str, str] = {}
    unknown = []
    for key, value in state_dict.items():
        if any(p.fullmatch(key) for p in ignored):
            continue
        for pattern, target in rules:
            m = pattern.fullmatch(key)
            if m:
                new = target(m)
                if new in out:
                    raise ValueError(
                        f"{source}: keys {origin[new]!r} and {key!r} both map to {new}"
                    )
                out[new], origin[new] = value, key
                break
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(
            f"{source}: {len(unknown)} key(s) are not part of a {fmt!r} ATSS checkpoint as this "
            f"converter knows it (ResNet/ResNeXt-FPN, optional DCNv2), e.g. {unknown[:5]}"
        )
    return out


def _scales_to_scalars(out: Dict[str, Tensor], source: str) -> None:
    # Ours are 0-d (like mmcv's); the authors' Scale holds a (1,) tensor.
    for key in [k for k in out if k.startswith("head.scales.")]:
        if out[key].numel() != 1:
            raise ValueError(f"{source}: {key} should hold one value, has shape {out[key].shape}")
        out[key] = out[key].reshape(())


def convert_authors_state_dict(
    state_dict: Mapping[str, Tensor],
    source: str = "<authors' state dict>",
    frozen_bn_eps: float = _D2_FROZEN_BN_EPS,
) -> Dict[str, Tensor]:
    """
    Convert an authors' (maskrcnn-benchmark, ``sfzhang15/ATSS``) ATSS state dict.

    Value conventions handled here:

    * their FrozenBatchNorm2d uses ``w / sqrt(var)``, ours ``w / sqrt(var + eps)``: ``eps`` is
      subtracted from every backbone ``running_var`` so that both compute the same affine map;
    * the per-level scales become 0-d tensors.

    Args:
        state_dict: as returned by :func:`read_checkpoint` (a ``module.`` prefix is accepted).
        source: name used in error messages (e.g. the file name).
        frozen_bn_eps: eps of our FrozenBatchNorm2d.

    Returns:
        our state dict (name -> Tensor).
    """
    state_dict = _unwrap_state_dict(state_dict, source)
    out = _rename(state_dict, _AUTHORS_RULES, _AUTHORS_IGNORED, AUTHORS, source)
    for key in [k for k in out if k.endswith(".norm.running_var")]:
        out[key] = out[key] - frozen_bn_eps
    _scales_to_scalars(out, source)
    return out


def convert_mmdet_state_dict(
    state_dict: Mapping[str, Tensor], source: str = "<mmdet state dict>"
) -> Dict[str, Tensor]:
    """
    Convert an mmdetection (2.x / 3.x) ATSS state dict.

    Value conventions handled here:

    * mmdet's tower convs have no bias (a GroupNorm follows); ours have one, filled with zeros
      (exactly the same output);
    * BatchNorm statistics are copied as they are (same eps 1e-5 as our FrozenBatchNorm2d);
      ``num_batches_tracked`` is dropped;
    * the per-level scales become 0-d tensors.

    Args:
        state_dict: as returned by :func:`read_checkpoint`.
        source: name used in error messages (e.g. the file name).

    Returns:
        our state dict (name -> Tensor).
    """
    state_dict = _unwrap_state_dict(state_dict, source)
    out = _rename(state_dict, _MMDET_RULES, _MMDET_IGNORED, MMDET, source)
    tower_weight = re.compile(r"head\.(cls|bbox)_subnet\.(\d+)\.weight")
    for key in list(out):
        m = tower_weight.fullmatch(key)
        if m and int(m.group(2)) % 3 == 0:  # a conv slot, not a GroupNorm
            bias_key = key[: -len("weight")] + "bias"
            if bias_key not in out:
                out[bias_key] = out[key].new_zeros(out[key].shape[0])
    _scales_to_scalars(out, source)
    return out


def convert_state_dict(
    state_dict: Mapping[str, Tensor], fmt: str = "auto", source: str = "<state dict>"
) -> Dict[str, Tensor]:
    """
    Convert a published ATSS state dict of format ``fmt`` (``"authors"``, ``"mmdet"``,
    ``"detectron2"`` (kept as it is), or ``"auto"`` to detect it with :func:`detect_format`).
    """
    state_dict = _unwrap_state_dict(state_dict, source)
    if fmt == "auto":
        fmt = detect_format(state_dict, source)
    if fmt == DETECTRON2:
        return state_dict
    if fmt == AUTHORS:
        return convert_authors_state_dict(state_dict, source)
    if fmt == MMDET:
        return convert_mmdet_state_dict(state_dict, source)
    raise ValueError(f"unknown checkpoint format {fmt!r}; choose one of {FORMATS} or 'auto'")


def convert_checkpoint(
    path: str, fmt: str = "auto", allow_pickle: bool = False
) -> Tuple[str, Dict[str, Any]]:
    """
    Read a checkpoint file (:func:`read_checkpoint`) and convert it.

    Returns:
        (the format, our checkpoint): ``{"model": our state dict, "__converted_from__": the
        format}``, with a model-zoo file's marks for Detectron2's name matching kept in the
        ``"detectron2"`` format. Save it with ``torch.save(checkpoint, out)`` and load it
        with ``train.init_checkpoint=out``.
    """
    checkpoint = read_checkpoint(path, allow_pickle=allow_pickle)
    state_dict = checkpoint.pop("model")
    if fmt == "auto":
        fmt = detect_format(state_dict, path)
    marks = checkpoint if fmt == DETECTRON2 else {}
    converted = convert_state_dict(state_dict, fmt, source=path)
    return fmt, {"model": converted, "__converted_from__": fmt, **marks}


def check_against_model(
    state_dict: Mapping[str, Tensor], model: Union[nn.Module, Mapping[str, Tensor]]
) -> Dict[str, list]:
    """
    Compare a converted state dict with a model's (or a model state dict's) names and shapes.

    Returns:
        dict with ``missing`` (model keys absent from ``state_dict``), ``unexpected``
        (``state_dict`` keys the model lacks) and ``shape_mismatch`` (list of
        ``(key, shape in state_dict, shape in model)``). All empty means a strict load works.
    """
    target = model.state_dict() if isinstance(model, nn.Module) else model
    missing = sorted(set(target) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(target))
    mismatch = [
        (k, tuple(state_dict[k].shape), tuple(target[k].shape))
        for k in sorted(set(target) & set(state_dict))
        if tuple(state_dict[k].shape) != tuple(target[k].shape)
    ]
    return {"missing": missing, "unexpected": unexpected, "shape_mismatch": mismatch}
