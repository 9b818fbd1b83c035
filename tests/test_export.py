"""Export through Detectron2's tracing: TorchScript and ONNX match the eager model (the export
script: tests/test_run_folder.py and tests/test_own_data.py)."""

import copy
import functools
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch
from detectron2.config import LazyConfig

from atss.export import (
    OUTPUT_NAMES,
    export_info,
    export_onnx,
    export_torchscript,
    onnx_session,
    quiet_third_party_tracer_warnings,
    resize_of_test_loader,
)
from tests.atss_testing import FIT_SIZE, fitted_tiny_model, tiny_model


def split_outputs(flat):
    """The flat outputs of an exported model, one dict per image (OUTPUT_NAMES, in order)."""
    k = len(OUTPUT_NAMES)
    return [dict(zip(OUTPUT_NAMES, flat[i : i + k])) for i in range(0, len(flat), k)]


TRACE_SIZE = FIT_SIZE  # traced at the size the trained model was fitted at
TEST_SIZES = [(200, 264), (152, 136)]  # other resolutions than the traced one


def _images(sizes, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, h, w, generator=g) * 255 for h, w in sizes]


# The tiny model untrained (scores kept from 0: many candidates) and fitted (confident
# detections); with deformable convolutions in the head, fitted only (the same candidate path).
MODELS = ["plain-untrained", "plain-trained", "dcn-trained"]


@functools.lru_cache(maxsize=None)
def _model(name):
    use_dcn, which = name.split("-")[0] == "dcn", name.split("-")[1]
    if which == "trained":
        return fitted_tiny_model(use_dcn)
    untrained = tiny_model(**{"head.use_dcn": use_dcn}).eval()
    untrained.test_score_thresh = 0.0  # random weights: keep candidates to compare
    return untrained


def _eager(model, images):
    with torch.no_grad():
        return [out["instances"].to("cpu") for out in model([{"image": x} for x in images])]


def _np(x):
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _assert_close(outputs, expected):
    assert len(outputs) == len(expected)
    for out, inst in zip(outputs, expected):
        assert len(inst) > 0
        np.testing.assert_allclose(
            _np(out["pred_boxes"]), inst.pred_boxes.tensor.numpy(), atol=1e-4, rtol=0
        )
        np.testing.assert_allclose(_np(out["scores"]), inst.scores.numpy(), atol=1e-4, rtol=0)
        assert np.array_equal(_np(out["pred_classes"]), inst.pred_classes.numpy())


# Runs each (model file, inputs file, outputs file) of its arguments, in threes.
RUNNER = textwrap.dedent("""
    import sys, torch, torchvision  # torchvision registers the NMS op
    for model, inputs, outputs in zip(*[iter(sys.argv[1:])] * 3):
        model = torch.jit.load(model)
        with torch.no_grad():
            outs = [[t.clone() for t in model(*images)] for images in torch.load(inputs)]
        torch.save(outs, outputs)
    assert "atss" not in sys.modules and "detectron2" not in sys.modules
    """)


@pytest.mark.slow
def test_torchscript_matches_eager_in_a_process_without_atss(tmp_path):
    """Each model traced, saved, loaded in one process without atss/detectron2: same
    boxes/scores/classes at new sizes."""
    files, batches = [], [_images([size], seed=size[0]) for size in TEST_SIZES]
    torch.save(batches, tmp_path / "in.pt")
    for name in MODELS:
        model = _model(name)
        files += [str(tmp_path / f"{name}.ts"), str(tmp_path / "in.pt"), str(tmp_path / name)]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            export_torchscript(model, _images([TRACE_SIZE]), files[-3])
        ours = [w for w in caught if "torch.jit" in str(w.category) and "/atss/" in w.filename]
        assert not ours, [str(w.message) for w in ours]  # no TracerWarning from our code
        assert not model.training
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run(
        [sys.executable, "-c", RUNNER, *files],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    for name in MODELS:
        for images, flat in zip(batches, torch.load(tmp_path / name)):
            _assert_close(split_outputs(flat), _eager(_model(name), images))


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.slow
def test_onnx_matches_eager_in_onnxruntime(name, tmp_path):
    """ONNX (opset 16) in onnxruntime: same detections as eager at new sizes."""
    import onnxruntime

    model = _model(name)
    path = str(tmp_path / "model.onnx")
    names = export_onnx(model, _images([TRACE_SIZE]), path, opset=16)
    assert names == [n + "0" for n in OUTPUT_NAMES]
    sess = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    for size in TEST_SIZES:
        images = _images([size], seed=size[0])
        flat = sess.run(None, {"image0": images[0].numpy()})
        _assert_close(split_outputs(flat), _eager(model, images))


def test_batch_of_two_is_frozen_and_matches(tmp_path):
    """A batch-2 trace runs two images of new sizes and matches eager for both."""
    model = fitted_tiny_model(False)
    traced = export_torchscript(model, _images([TRACE_SIZE, TRACE_SIZE]), str(tmp_path / "b.ts"))
    images = _images(TEST_SIZES, seed=7)
    flat = torch.jit.load(str(tmp_path / "b.ts"))(*images)
    assert len(flat) == 2 * len(OUTPUT_NAMES) and traced is not None
    _assert_close(split_outputs(flat), _eager(model, images))


@pytest.mark.cuda
def test_exports_made_on_cuda_match_eager(cuda_device, tmp_path, record_property):
    """The fitted model on the device, traced there: TorchScript equals eager on the device;
    the ONNX export runs in ONNX Runtime (its CUDA provider when installed, else the CPU) and
    equals eager where it ran, at sizes other than the traced one. Fails on a device fixed in
    the graph (a tensor made on the CPU while tracing on CUDA) or a CUDA-only export error."""
    model = copy.deepcopy(fitted_tiny_model(False)).to(cuda_device)
    sample = [x.to(cuda_device) for x in _images([TRACE_SIZE])]
    export_torchscript(model, sample, str(tmp_path / "m.ts"))
    traced = torch.jit.load(str(tmp_path / "m.ts"), map_location=cuda_device)
    export_onnx(model, sample, str(tmp_path / "m.onnx"), opset=16)
    session = onnx_session(str(tmp_path / "m.onnx"), str(cuda_device))
    ort_on_cuda = session.get_providers()[0] == "CUDAExecutionProvider"
    reference = model if ort_on_cuda else copy.deepcopy(model).cpu()
    for size in TEST_SIZES:
        images = _images([size], seed=size[0])
        on_device = [x.to(cuda_device) for x in images]
        with torch.no_grad():
            _assert_close(split_outputs(traced(*on_device)), _eager(model, on_device))
        flat = session.run(None, {"image0": images[0].numpy()})
        _assert_close(split_outputs(flat), _eager(reference, on_device if ort_on_cuda else images))
    record_property("detail", "ONNX Runtime on " + ("CUDA" if ort_on_cuda else "the CPU"))


def test_export_prints_no_third_party_tracer_warnings_but_keeps_ours(tmp_path):
    """Tracing prints none of the dozens of TracerWarnings raised inside Detectron2's Boxes /
    Instances and torchvision (a user of tools/export_model.py saw a screenful), while a
    TracerWarning from this package's own modules would still be shown."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_torchscript(tiny_model().eval(), _images([TRACE_SIZE]), str(tmp_path / "m.ts"))
        with quiet_third_party_tracer_warnings():
            for module in ("atss.modeling.head", "detectron2.structures.boxes"):
                warnings.warn_explicit(
                    "probe", torch.jit.TracerWarning, module.replace(".", "/") + ".py", 1, module
                )
    tracer = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    assert [w.filename for w in tracer] == ["atss/modeling/head.py"], [
        f"{w.filename}: {w.message}" for w in tracer
    ]


def test_export_info_names_the_resize_channels_and_classes():
    """model.json's content for the Custom config: its test resize (512, 853), RGB, 0-255 and
    the user's ids; a drawn short edge is refused (a user could not reproduce it). Fails if
    the resize is read from the train loader or the ids are the class indices."""
    cfg = LazyConfig.load("configs/Custom/atss_MNV2_FPN_coco_json.py")
    assert resize_of_test_loader(cfg) == {"short_edge": 512, "max_size": 853}
    info = export_info("out/model.onnx", "RGB", resize_of_test_loader(cfg), [(3, "a"), (7, "b")], 2,
                       ["pred_boxes0"], ["image0"])  # fmt: skip
    assert info["model"] == "model.onnx" and info["input_names"] == ["image0"]
    assert info["pixel_range"] == [0, 255] and info["input_format"] == "RGB"
    assert info["classes"] == [{"id": 3, "name": "a"}, {"id": 7, "name": "b"}]
    assert [c["id"] for c in export_info("m", "BGR", None, None, 2, [], [])["classes"]] == [0, 1]
    cfg.dataloader.test.mapper.augmentations[0].short_edge_length = [96, 128]
    with pytest.raises(ValueError, match="short edge"):
        resize_of_test_loader(cfg)
