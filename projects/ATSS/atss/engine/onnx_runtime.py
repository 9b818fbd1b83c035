"""
Run an ATSS config in ONNX Runtime: export once through :func:`atss.export.export_onnx`, cache
the file next to the weights, and predict like Detectron2's ``DefaultPredictor``.

The cache file is ``<weights stem>.<key>.onnx`` in the weights' folder, where ``key`` hashes the
model config, the weights' bytes, the torch and onnxruntime versions and the opset: editing the
config, retraining into the same path or upgrading either library exports again instead of
running a stale graph. A model without weights (random initialisation) is exported to a
temporary file every time: there is nothing stable to key it by.
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

from atss.fileio import atomic_write

from .predictor import ATSSPredictor

__all__ = ["OPSET", "onnx_cache_path", "export_cached", "onnx_session", "OnnxPredictor"]

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


def onnx_cache_path(model_cfg, weights: str) -> str:
    """
    Where the export of ``model_cfg`` (``cfg.model``) with ``weights`` is cached:
    ``<folder of weights>/<weights stem>.<16 hex digits>.onnx``.
    """
    text = repr(OmegaConf.to_container(model_cfg, resolve=True))
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


def onnx_session(path: str, device: str = "cpu", threads: Optional[int] = None):
    """An onnxruntime session of ``path``: CUDA provider for a CUDA ``device`` when installed."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    providers = ["CPUExecutionProvider"]
    if str(device).startswith("cuda"):
        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        else:
            logger.warning("onnxruntime has no CUDA provider here: running on the CPU")
    return onnxruntime.InferenceSession(path, sess_options=options, providers=providers)


class OnnxPredictor(ATSSPredictor):
    """
    :class:`~atss.engine.predictor.ATSSPredictor` on ONNX Runtime: the same model, weights,
    test-loader resize and contract (``predictor(image) -> Instances`` in the coordinates of an
    (H, W, 3) uint8 image in :attr:`input_format` order); the network runs as the cached ONNX
    export of the eager model.

    Attributes:
        model: the eager model the export was made from (its ``num_classes``, ``input_format``).
        onnx_path: the ONNX file in use.
    """

    def __init__(self, cfg, threads: Optional[int] = None, random_weights: bool = False):
        super().__init__(cfg, random_weights=random_weights)
        self.onnx_path = export_cached(self.model, cfg.model, self.weights)
        self.session = onnx_session(self.onnx_path, str(self.device), threads)

    def __call__(self, image: np.ndarray) -> Instances:
        height, width = image.shape[:2]
        chw = self.preprocess(image)
        boxes, classes, scores, _ = self.session.run(None, {"image0": chw})
        # The graph answers at the resized input's resolution; scale back exactly as the eager
        # model does for inputs that carry "height" and "width".
        instances = Instances(
            tuple(chw.shape[1:]),
            pred_boxes=Boxes(torch.from_numpy(boxes)),
            scores=torch.from_numpy(scores),
            pred_classes=torch.from_numpy(classes),
        )
        return detector_postprocess(instances, height, width)
