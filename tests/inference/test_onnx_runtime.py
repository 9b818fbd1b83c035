"""atss.inference.onnx_runtime, `demo.py --runtime onnxruntime`: the example run's model
(tests/conftest.py) gives the eager detections; the export is cached, keyed by the model's
config and the weights' bytes (tiled: tests/test_run_folder.py)."""

import copy
import os
import shutil
import types

import cv2
import numpy as np
import pytest
import torch
from detectron2.config import LazyConfig
from detectron2.data import transforms as T
from detectron2.data.detection_utils import read_image
from omegaconf import OmegaConf

import atss.export
from atss.engine.config import load_config
from atss.inference.onnx_runtime import OnnxPredictor, export_cached, onnx_cache_path

# The example run's test resize (EXAMPLE_OVERRIDES; the config's longer-side cap).
TEST_SHORT_EDGE, TEST_MAX_SIZE = 96, 853
TOLERANCE = 1e-4  # tests/test_export.py's ONNX tolerance


def _cfg(run, *overrides):
    return load_config(run.config, [f"train.init_checkpoint={run.weights}", *overrides])


def _image(run):
    """A 64 x 96 validation image of the example, in the model's channel order (RGB)."""
    return read_image(os.path.join(run.data["image_root"], "000009.png"), format="RGB")


def _eager_oracle(cfg, image):
    """The eager model on Detectron2's own resize of ``image``, answered at the original size."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import instantiate

    model = instantiate(cfg.model).eval()
    DetectionCheckpointer(model).load(cfg.train.init_checkpoint)
    resize = T.ResizeShortestEdge(TEST_SHORT_EDGE, TEST_MAX_SIZE)
    resized = resize.get_transform(image).apply_image(image)
    tensor = torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))
    with torch.no_grad():
        out = model([{"image": tensor, "height": image.shape[0], "width": image.shape[1]}])
    return out[0]["instances"]


@pytest.mark.slow
# The switch on first: its export is the one the later tests take from the cache.
@pytest.mark.parametrize(
    "amp", [["train.amp.enabled=True", "train.amp.precision=bf16"], []], ids=["amp", "fp32"]
)
def test_onnx_predictor_gives_the_eager_detections_in_image_coordinates(example_run, amp, tmp_path):
    """
    Boxes and scores within the export tolerance, identical classes, in the coordinates of the
    original (not the resized) image; the export is fp32 with the precision switch on too.
    Fails if the ONNX outputs are not scaled back from the resized input, if the channel order
    or the resize differ from eager, if the graph is wrong, or if it is traced under autocast.
    """
    cfg, image = _cfg(example_run, *amp), _image(example_run)
    if amp and os.path.exists(onnx_cache_path(cfg.model, example_run.weights)):
        # Weights where no export is cached, so that this one is made under the switch.
        weights = shutil.copy(example_run.weights, tmp_path)
        cfg = _cfg(example_run, f"train.init_checkpoint={weights}", *amp)
    expected = _eager_oracle(cfg, image)
    got = OnnxPredictor(cfg)(image)
    assert len(expected) > 0 and len(got) == len(expected)
    assert got.image_size == image.shape[:2] and min(image.shape[:2]) != TEST_SHORT_EDGE
    np.testing.assert_allclose(
        got.pred_boxes.tensor.numpy(), expected.pred_boxes.tensor.numpy(), atol=TOLERANCE, rtol=0
    )
    np.testing.assert_allclose(got.scores.numpy(), expected.scores.numpy(), atol=TOLERANCE, rtol=0)
    assert torch.equal(got.pred_classes, expected.pred_classes)


@pytest.mark.slow
def test_export_is_cached_next_to_the_weights_and_keyed(example_run, tmp_path, monkeypatch):
    """
    A second predictor reuses the file without exporting; other weights bytes or another model
    config get another file. Fails if the cache is ignored (re-export every run) or if its key
    misses the weights or the config (a stale graph would run).
    """
    first = OnnxPredictor(_cfg(example_run))
    assert first.onnx_path.startswith(example_run.folder)

    def refuse(*args, **kwargs):
        raise AssertionError("exported again although the cache holds this model")

    monkeypatch.setattr(atss.export, "export_onnx", refuse)
    second = OnnxPredictor(_cfg(example_run))
    assert second.onnx_path == first.onnx_path
    image = _image(example_run)
    np.testing.assert_array_equal(second(image).scores.numpy(), first(image).scores.numpy())

    model = _cfg(example_run).model
    path = onnx_cache_path(model, example_run.weights)
    assert path == first.onnx_path
    other_model = _cfg(example_run, "model.test_nms_thresh=0.5").model
    assert onnx_cache_path(other_model, example_run.weights) != path
    state = torch.load(example_run.weights)
    state["model"]["head.cls_score.bias"] += 1.0
    torch.save(state, tmp_path / "other.pth")
    renamed = tmp_path / "model_final.pth"
    renamed.write_bytes((tmp_path / "other.pth").read_bytes())
    assert onnx_cache_path(model, str(renamed)).split(".")[-2] != path.split(".")[-2]


def test_weights_rewritten_in_place_are_exported_again(tmp_path, monkeypatch):
    """Retraining into the same model_final.pth (same path, same size, here even the same
    modification time) must not serve the previous run's export. Fails if the cache key holds
    the weights' path (or path, size and mtime) instead of their bytes, or remembers a file's
    hash by its path."""
    exported = []

    def fake_export(model, sample, f, opset):
        exported.append(opset)
        f.write(b"graph")

    monkeypatch.setattr(atss.export, "export_onnx", fake_export)
    weights = tmp_path / "model_final.pth"
    state = {"model": {"head.cls_score.bias": torch.zeros(3)}}
    torch.save(state, weights)
    model_cfg = LazyConfig.load("configs/Shapes/atss_tiny_shapes.py").model
    first = export_cached(torch.nn.Identity(), model_cfg, str(weights))
    assert export_cached(torch.nn.Identity(), model_cfg, str(weights)) == first
    assert len(exported) == 1
    before = os.stat(weights)
    state["model"]["head.cls_score.bias"] += 1.0
    torch.save(state, weights)
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(weights).st_size == before.st_size
    second = export_cached(torch.nn.Identity(), model_cfg, str(weights))
    assert second != first and len(exported) == 2


def _as_in_another_process(value):
    """``value`` (a config as plain containers) rebuilt as another process would hold it: every
    function and object a new one (other memory addresses), with the same names and contents."""
    if isinstance(value, dict):
        return {k: _as_in_another_process(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_in_another_process(v) for v in value]
    if isinstance(value, types.FunctionType):
        clone = types.FunctionType(
            value.__code__, value.__globals__, value.__name__, value.__defaults__, value.__closure__
        )
        clone.__qualname__, clone.__module__ = value.__qualname__, value.__module__
        return clone
    return copy.deepcopy(value)


def test_cache_key_is_the_same_in_every_process(tmp_path):
    """The cache path of the MobileNetV2 configs (whose backbone ``_target_`` is a function) is
    the same for the config rebuilt with new function and object instances, as another process
    holds them, and changes with the config. Fails if the key holds a ``repr`` with a memory
    address (every new process would miss the cache and export again)."""
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"weights")
    model = load_config("configs/TreeCrowns/atss_MNV2_FPN_treecrowns_xsite.py").model
    assert isinstance(model.backbone._target_, types.FunctionType)
    rebuilt = _as_in_another_process(OmegaConf.to_container(model))
    rebuilt = OmegaConf.create(rebuilt, flags={"allow_objects": True})
    assert rebuilt.backbone._target_ is not model.backbone._target_
    path = onnx_cache_path(model, str(weights))
    assert path.endswith(".onnx") and onnx_cache_path(rebuilt, str(weights)) == path
    rebuilt.test_nms_thresh = 0.5
    assert onnx_cache_path(rebuilt, str(weights)) != path


@pytest.mark.slow
def test_demo_with_onnxruntime_draws_what_eager_draws(example_run, tmp_path):
    """
    `demo.py --runtime onnxruntime` writes the same annotated image as the eager demo (up to a
    few anti-aliased pixels). Fails if the flag is not wired, or draws other detections.
    """
    from demo import main

    image = tmp_path / "img.png"
    cv2.imwrite(str(image), _image(example_run)[:, :, ::-1])
    drawn = {}
    for runtime in ("eager", "onnxruntime"):
        out = tmp_path / runtime
        argv = ["--run", example_run.folder, "--input", str(image), "--output", str(out)]
        np.random.seed(0)  # Visualizer draws each box in a random colour
        assert main(argv + ["--runtime", runtime, "--confidence-threshold", "0.02"]) == 0
        drawn[runtime] = cv2.imread(str(out / "img.png"))
    assert drawn["eager"].shape == drawn["onnxruntime"].shape
    differs = np.abs(drawn["eager"].astype(int) - drawn["onnxruntime"]).max(axis=2) > 0
    assert differs.mean() < 0.001, differs.mean()
    blank = cv2.imread(str(image))
    assert (np.abs(drawn["eager"].astype(int) - blank).max(axis=2) > 0).mean() > 0.01  # drawn
