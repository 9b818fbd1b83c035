"""A trained model in ONNX Runtime, exported once and cached next to its weights.

:class:`OnnxPredictor` is :class:`~atss.engine.predictor.ATSSPredictor` with the network run as
the ONNX export of :func:`atss.export.export_onnx`; :class:`OnnxDetector` calls the export like
the eager model, so tiling and ``train_net.py --eval-only --runtime onnxruntime`` run it too.
The cache file, ``<weights stem>.<key>.onnx`` beside the weights, is keyed by the model config,
the weights' bytes, the torch and onnxruntime versions and the opset: another config, weights
rewritten in place or an upgrade export again instead of running a stale graph. A model
without weights is exported to a temporary file each time. See docs/deployment.md.
"""

import hashlib
import logging
import os
import tempfile
from typing import Optional

import numpy as np
import torch
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances
from omegaconf import OmegaConf
from torch import nn

from atss.engine.predictor import ATSSPredictor
from atss.export import onnx_input_names, onnx_session
from atss.fileio import atomic_write

__all__ = [
    "OPSET",
    "OnnxDetector",
    "OnnxPredictor",
    "export_cached",
    "onnx_cache_path",
]

logger = logging.getLogger(__name__)

OPSET = 16
# Bump when the export code changes what it writes, so that old cache files are not reused.
EXPORT_FORMAT_VERSION = 1
# The traced sample: one image (the demo's batch); height and width stay dynamic in the graph.
_SAMPLE_SIZE = (320, 320)


def _file_sha256(path: str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _runtime_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def _stable_text(value) -> str:
    """A text of a resolved config that is the same in every process: functions and classes
    (``_target_``) by their qualified names, not by ``repr``, which holds a function's memory
    address and so made every new process miss the cache."""
    if isinstance(value, dict):
        items = ", ".join(f"{k!r}: {_stable_text(v)}" for k, v in value.items())
        return "{" + items + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_stable_text(v) for v in value) + "]"
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', '?')}.{value.__qualname__}"
    return repr(value)


def onnx_cache_path(model_cfg, weights: str) -> str:
    """
    Where the export of ``model_cfg`` (``cfg.model``) with ``weights`` is cached:
    ``<folder of weights>/<weights stem>.<16 hex digits>.onnx``.
    """
    text = _stable_text(OmegaConf.to_container(model_cfg, resolve=True))
    key = hashlib.sha256()
    for part in (
        text,
        _file_sha256(weights),
        torch.__version__,
        _runtime_version(),
        str(OPSET),
        str(EXPORT_FORMAT_VERSION),
    ):
        key.update(part.encode())
        key.update(b"\0")
    stem = os.path.splitext(os.path.abspath(weights))[0]
    return f"{stem}.{key.hexdigest()[:16]}.onnx"


def export_cached(model, model_cfg, weights: str) -> str:
    """
    Path of an ONNX export of ``model`` (eval mode, CPU): reused from the cache when present,
    otherwise exported and moved into place atomically (a crash never leaves half a file that a
    later run would load).
    """
    from atss.export import export_onnx

    sample = [torch.rand(3, *_SAMPLE_SIZE) * 255]
    if not weights:
        path = os.path.join(tempfile.mkdtemp(prefix="atss_onnx_"), "model.onnx")
        logger.info(f"no weights to key a cache by: exporting to {path}")
        export_onnx(model, sample, path, opset=OPSET)
        return path
    path = onnx_cache_path(model_cfg, weights)
    if os.path.exists(path):
        logger.info(f"using the cached ONNX export {path}")
        return path
    logger.info(f"exporting to ONNX once: {path}")
    atomic_write(path, lambda f: export_onnx(model, sample, f, opset=OPSET))
    return path


class OnnxDetector(nn.Module):
    """
    An ONNX Runtime session of an exported ATSS model, called like the eager model: a list of
    ``{"image": (3, H, W) tensor, "height", "width"}`` -> ``[{"instances": Instances}]`` with the
    boxes scaled to ``height`` x ``width`` (Detectron2's ``detector_postprocess``, as the eager
    model does). So :class:`~atss.inference.TiledDetector` runs it on tiles like the eager model.
    The export takes one image per call: the images of a list run one after the other.

    Attributes copied from the eager model: ``num_classes``, ``input_format``,
    ``test_nms_thresh``, ``max_detections_per_image`` (the tiling merge reads the last two).
    """

    def __init__(self, session, eager_model: nn.Module):
        super().__init__()
        self.session = session
        (self.input_name,) = onnx_input_names(1)  # the export takes one image per call
        for name in ("num_classes", "input_format", "test_nms_thresh", "max_detections_per_image"):
            if hasattr(eager_model, name):
                setattr(self, name, getattr(eager_model, name))
        self.eval()

    def forward(self, batched_inputs):
        results = []
        for x in batched_inputs:
            image = x["image"]
            chw = np.ascontiguousarray(image.detach().cpu().numpy(), dtype=np.float32)
            boxes, classes, scores, _ = self.session.run(None, {self.input_name: chw})
            # The graph answers at its input's resolution; scale back as the eager model does.
            instances = Instances(
                tuple(chw.shape[1:]),
                pred_boxes=Boxes(torch.from_numpy(boxes)),
                scores=torch.from_numpy(scores),
                pred_classes=torch.from_numpy(classes),
            )
            height, width = x.get("height", chw.shape[1]), x.get("width", chw.shape[2])
            results.append({"instances": detector_postprocess(instances, height, width)})
        return results


class OnnxPredictor(ATSSPredictor):
    """
    :class:`~atss.engine.predictor.ATSSPredictor` on ONNX Runtime: the same model, weights,
    test-loader resize and contract (``predictor(image) -> Instances`` in the coordinates of an
    (H, W, 3) uint8 image in :attr:`input_format` order); the network runs as the cached ONNX
    export of the eager model.

    The export, and so the model, is fp32 whatever ``cfg.train.amp`` says.

    Attributes:
        model: an :class:`OnnxDetector` on the export (the eager model's ``num_classes`` and
            ``input_format``); wrap it in a ``TiledDetector`` for tiles, as the eager one.
        eager_model: the eager model the export was made from.
        onnx_path: the ONNX file in use.
    """

    def __init__(self, cfg, threads: Optional[int] = None, random_weights: bool = False):
        super().__init__(cfg, random_weights=random_weights)
        self.eager_model = self.model
        self.onnx_path = export_cached(self.model, cfg.model, self.weights)
        self.session = onnx_session(self.onnx_path, str(self.device), threads)
        self.model = OnnxDetector(self.session, self.eager_model)
        self.autocast_dtype = None
