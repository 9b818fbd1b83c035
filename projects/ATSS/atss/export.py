"""
Export an ATSS model through Detectron2's tracing: TorchScript (``torch.jit.trace``) and ONNX.

The traced graph takes the images as (3, H, W) float tensors in the model's input format
(0-255, ``model.input_format`` channel order), one per image, and returns per image
``(pred_boxes (R, 4) XYXY, pred_classes (R,) int64, scores (R,), image_size (2,))`` flattened
into one tuple, in the resolution of the input. The batch size (number of images) is frozen at
trace time; the resolution is not (anchors are generated from the feature shapes).
Running it needs ``torch`` and ``torchvision`` (for the NMS op), not detectron2 or atss.
"""

import contextlib
import inspect
import json
import logging
import os
import warnings
from typing import BinaryIO, List, Optional, Sequence, Tuple, Union

import torch
from detectron2.export import TracingAdapter
from torch import Tensor, nn

__all__ = [
    "INFO_FILE",
    "OUTPUT_NAMES",
    "build_traceable",
    "export_info",
    "export_torchscript",
    "export_onnx",
    "onnx_input_names",
    "onnx_session",
    "resize_of_test_loader",
    "write_export_info",
]

logger = logging.getLogger(__name__)

# Per image, in the order TracingAdapter flattens an Instances (fields sorted, then image size).
OUTPUT_NAMES = ("pred_boxes", "pred_classes", "scores", "image_size")


# Tracing Detectron2's structures (Boxes, Instances) and torchvision's ops raises dozens of
# TracerWarnings about Python booleans and shape checks that are constant for a traced ATSS graph
# (the outputs are checked against eager at other sizes in tests/test_export.py). They are
# silenced by module; a TracerWarning raised in this package's own code still shows.
THIRD_PARTY_TRACED_MODULES = r"(detectron2|torchvision|torch)(\.|$)"


@contextlib.contextmanager
def quiet_third_party_tracer_warnings():
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", category=torch.jit.TracerWarning, module=THIRD_PARTY_TRACED_MODULES
        )
        yield


def _instances_only(model, *images):
    outputs = model([{"image": img} for img in images])
    return [out["instances"] for out in outputs]


def build_traceable(model: nn.Module, images: Sequence[Tensor]) -> TracingAdapter:
    """
    Wrap a model (eval mode) so that it maps a tuple of image tensors to a tuple of tensors.

    Args:
        model: an ATSS model (or any Detectron2 dense detector).
        images: sample inputs, (3, H, W) each; their number fixes the batch size.
    """
    model.eval()
    adapter = TracingAdapter(model, tuple(images), inference_func=_instances_only)
    # TracingAdapter is an nn.Module created in training mode; tracing restores the mode of
    # the module it traces, which would put the wrapped model back in training mode.
    adapter.eval()
    return adapter


def export_torchscript(model: nn.Module, images: Sequence[Tensor], path: str):
    """Trace ``model`` on ``images`` and save the TorchScript module to ``path``."""
    adapter = build_traceable(model, images)
    with torch.no_grad(), quiet_third_party_tracer_warnings():
        traced = torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    traced.save(path)
    return traced


def export_onnx(
    model: nn.Module, images: Sequence[Tensor], path: Union[str, BinaryIO], opset: int = 16
):
    """Export ``model`` to ONNX (``opset`` >= 16) with dynamic image height and width, into the
    file ``path`` or a binary file object."""
    if opset < 16:
        raise ValueError(f"export_onnx: opset {opset} < 16 is not supported")
    adapter = build_traceable(model, images)
    n = len(images)
    input_names = onnx_input_names(n)
    output_names = [f"{name}{i}" for i in range(n) for name in OUTPUT_NAMES]
    dynamic: dict = {name: {1: f"height{i}", 2: f"width{i}"} for i, name in enumerate(input_names)}
    for name in output_names:
        if not name.startswith("image_size"):
            dynamic[name] = {0: "detections"}
    if isinstance(path, str):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with torch.no_grad(), quiet_third_party_tracer_warnings():
        torch.onnx.export(
            adapter,
            adapter.flattened_inputs,
            path,
            opset_version=opset,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic,
            **_TRACING_EXPORTER,
        )
    return output_names


def onnx_input_names(num_images: int) -> List[str]:
    """The graph's input names, one per image of the traced batch: ``image0``, ``image1``, ..."""
    return [f"image{i}" for i in range(num_images)]


def onnx_session(path: str, device: str = "cpu", threads: Optional[int] = None):
    """An onnxruntime session of ``path``: CUDA provider for a CUDA ``device`` when installed
    (else the CPU, with a warning); ``threads`` sets the intra-op thread count."""
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


# The exporter is chosen, not left to the torch version: torch >= 2.9 defaults to the dynamo
# exporter (torch.export; needs onnxscript), which does not take TracingAdapter's flattened
# trace. The TorchScript-based tracing exporter is the one TracingAdapter is made for; torch
# < 2.5 has only that one and no `dynamo` keyword.
_TRACING_EXPORTER = (
    {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
)


# Written beside the exported file: what its user must know to run it (see export_info).
INFO_FILE = "model.json"


def resize_of_test_loader(cfg) -> Optional[dict]:
    """The test loader's resize, ``{"short_edge": S, "max_size": M}`` (Detectron2's
    ``ResizeShortestEdge``: the shorter side to S, then the longer side to at most M, sizes
    rounded, bilinear); None when the config's test loader does not resize. Raises ValueError
    for a resize a user could not reproduce from these two numbers (a range of short edges,
    other augmentations)."""
    from detectron2.config import instantiate
    from detectron2.data import transforms as T

    try:
        augmentations = list(instantiate(cfg.dataloader.test.mapper.augmentations))
    except (AttributeError, KeyError):  # no test loader: the model gets images as they are
        return None
    if not augmentations:
        return None
    resize = augmentations[0]
    lengths = getattr(resize, "short_edge_length", None)
    if len(augmentations) > 1 or not isinstance(resize, T.ResizeShortestEdge) or lengths is None:
        raise ValueError(f"the test augmentations {augmentations} are not one ResizeShortestEdge")
    if len(set(lengths)) != 1:
        raise ValueError(f"the test resize draws its short edge from {lengths}: give one value")
    return {"short_edge": int(lengths[0]), "max_size": int(resize.max_size)}


def export_info(
    model_file: str,
    input_format: str,
    resize: Optional[dict],
    classes: Optional[Sequence[Tuple[int, str]]],
    num_classes: int,
    output_names: Sequence[str],
    input_names: Sequence[str],
) -> dict:
    """The content of :data:`INFO_FILE`: the model file, its inputs (names, (3, H, W) float32,
    0-255, ``input_format`` channel order, the test resize to apply first), its outputs, and
    the class list: entry ``i`` is the ``{"id", "name"}`` of ``pred_classes == i`` (the user's
    category ids; the class index and ``class<i>`` when the config names none)."""
    if classes is None:
        classes = [(i, f"class{i}") for i in range(num_classes)]
    if len(classes) != num_classes:
        raise ValueError(f"{len(classes)} class names for a model of {num_classes} classes")
    return {
        "model": os.path.basename(model_file),
        "input_names": list(input_names),
        "input_layout": "CHW",
        "input_dtype": "float32",
        "input_format": input_format,
        "pixel_range": [0, 255],
        "test_resize": resize,
        "output_names": list(output_names),
        "boxes": "XYXY, in the pixels of the (resized) input",
        "classes": [{"id": int(i), "name": str(n)} for i, n in classes],
    }


def write_export_info(folder: str, info: dict) -> str:
    """Write ``info`` as ``folder/model.json``; returns the path."""
    path = os.path.join(folder, INFO_FILE)
    os.makedirs(folder, exist_ok=True)
    with open(path, "w") as f:
        json.dump(info, f, indent=1)
    return path
