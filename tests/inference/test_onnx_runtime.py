"""atss.inference.onnx_runtime, `demo.py --runtime onnxruntime`: eager detections, cached export."""

import os

import cv2
import numpy as np
import pytest
import torch
from detectron2.config import LazyConfig
from detectron2.data import transforms as T

import atss.export
from atss.inference.onnx_runtime import OnnxPredictor, export_cached, onnx_cache_path
from tests.atss_testing import (
    FIT_BOXES,
    FIT_SIZE,
    fit_briefly,
    make_inputs,
    tiny_model,
    write_tiny_config,
)

SIZE = FIT_SIZE  # image size; the test resize makes it 160 x 198 (a real rescale)
# The tiny ResNet-18 FPN of the test suite (BGR input), its test loader resizing to 160 px.
TEST_SHORT_EDGE, TEST_MAX_SIZE = 160, 1333
TOLERANCE = 1e-4  # tests/test_export.py's ONNX tolerance


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny model fitted for 8 steps on one image (so it detects on it), its weights, config
    file and that image as a BGR PNG."""
    root = tmp_path_factory.mktemp("onnx_rt")
    inputs = make_inputs([SIZE], [FIT_BOXES])
    model = fit_briefly(tiny_model(), inputs)
    weights = root / "weights" / "tiny.pth"
    weights.parent.mkdir()
    torch.save({"model": model.state_dict()}, weights)
    config = write_tiny_config(root / "tiny_config.py", TEST_SHORT_EDGE, TEST_MAX_SIZE)
    bgr = inputs[0]["image"].permute(1, 2, 0).numpy().astype(np.uint8)  # model format is BGR
    image = root / "img.png"
    cv2.imwrite(str(image), bgr)
    return {"root": root, "weights": weights, "config": config, "bgr": bgr, "image": image}


def _cfg(setup, *overrides):
    cfg = LazyConfig.load(str(setup["config"]))
    return LazyConfig.apply_overrides(
        cfg, [f"train.init_checkpoint={setup['weights']}", *overrides]
    )


def _eager_oracle(cfg, bgr):
    """The eager model on Detectron2's own resize of ``bgr``, answered at the original size."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import instantiate

    model = instantiate(cfg.model).eval()
    DetectionCheckpointer(model).load(cfg.train.init_checkpoint)
    resize = T.ResizeShortestEdge(TEST_SHORT_EDGE, TEST_MAX_SIZE)
    resized = resize.get_transform(bgr).apply_image(bgr)
    image = torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))
    with torch.no_grad():
        out = model([{"image": image, "height": bgr.shape[0], "width": bgr.shape[1]}])
    return out[0]["instances"]


@pytest.mark.slow
def test_onnx_predictor_gives_the_eager_detections_in_image_coordinates(setup):
    """
    Boxes and scores within the export tolerance, identical classes, in the coordinates of the
    original (not the resized) image. Fails if the ONNX outputs are not scaled back from the
    resized input, if the channel order or the resize differ from eager, or if the graph is wrong.
    """
    cfg = _cfg(setup)
    expected = _eager_oracle(cfg, setup["bgr"])
    got = OnnxPredictor(cfg)(setup["bgr"])
    assert len(expected) > 0 and len(got) == len(expected)
    assert got.image_size == SIZE
    np.testing.assert_allclose(
        got.pred_boxes.tensor.numpy(), expected.pred_boxes.tensor.numpy(), atol=TOLERANCE, rtol=0
    )
    np.testing.assert_allclose(got.scores.numpy(), expected.scores.numpy(), atol=TOLERANCE, rtol=0)
    assert torch.equal(got.pred_classes, expected.pred_classes)


def test_export_is_cached_next_to_the_weights_and_keyed(setup, monkeypatch):
    """
    A second predictor reuses the file without exporting; other weights bytes or another model
    config get another file. Fails if the cache is ignored (re-export every run) or if its key
    misses the weights or the config (a stale graph would run).
    """
    first = OnnxPredictor(_cfg(setup))
    assert first.onnx_path.startswith(str(setup["weights"].parent))

    def refuse(*args, **kwargs):
        raise AssertionError("exported again although the cache holds this model")

    monkeypatch.setattr(atss.export, "export_onnx", refuse)
    second = OnnxPredictor(_cfg(setup))
    assert second.onnx_path == first.onnx_path
    np.testing.assert_array_equal(
        second(setup["bgr"]).scores.numpy(), first(setup["bgr"]).scores.numpy()
    )

    path = onnx_cache_path(_cfg(setup).model, str(setup["weights"]))
    assert path == first.onnx_path
    assert onnx_cache_path(_cfg(setup, "model.test_nms_thresh=0.5").model, path) != path
    other = setup["root"] / "weights" / "other.pth"
    state = torch.load(setup["weights"])
    state["model"]["head.cls_score.bias"] += 1.0
    torch.save(state, other)
    renamed = setup["root"] / "weights" / "tiny_copy.pth"
    renamed.write_bytes(other.read_bytes())
    assert onnx_cache_path(_cfg(setup).model, str(renamed)).split(".")[-2] != path.split(".")[-2]


def test_weights_rewritten_in_place_are_exported_again(setup, tmp_path, monkeypatch):
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
    state = torch.load(setup["weights"])
    torch.save(state, weights)
    cfg = _cfg(setup, f"train.init_checkpoint={weights}")
    first = export_cached(torch.nn.Identity(), cfg.model, str(weights))
    assert export_cached(torch.nn.Identity(), cfg.model, str(weights)) == first
    assert len(exported) == 1
    before = os.stat(weights)
    state["model"]["head.cls_score.bias"] += 1.0
    torch.save(state, weights)
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(weights).st_size == before.st_size
    second = export_cached(torch.nn.Identity(), cfg.model, str(weights))
    assert second != first and len(exported) == 2


def test_cache_key_is_the_same_in_every_process(tmp_path):
    """The cache path of the MobileNetV2 configs (whose backbone ``_target_`` is a function)
    is the same in two fresh processes, and changes with the config. Fails if the key holds a
    ``repr`` with a memory address (every new process would miss the cache and export again)."""
    import subprocess
    import sys

    weights = tmp_path / "w.pth"
    weights.write_bytes(b"weights")
    code = (
        "import sys\n"
        "from atss.engine.config import load_config\n"
        "from atss.inference.onnx_runtime import onnx_cache_path\n"
        "cfg = load_config(sys.argv[1], sys.argv[3:])\n"
        "print(onnx_cache_path(cfg.model, sys.argv[2]))\n"
    )
    config = "configs/TreeCrowns/atss_MNV2_FPN_treecrowns_xsite.py"

    def path(*opts):
        run = subprocess.run(
            [sys.executable, "-c", code, config, str(weights), *opts],
            capture_output=True,
            text=True,
            check=True,
        )
        return run.stdout.strip().splitlines()[-1]

    first = path()
    assert first.endswith(".onnx") and path() == first
    assert path("model.test_nms_thresh=0.5") != first


@pytest.mark.slow
def test_demo_with_onnxruntime_draws_what_eager_draws(setup, tmp_path):
    """
    `demo.py --runtime onnxruntime` writes the same annotated image as the eager demo (up to a
    few anti-aliased pixels). Fails if the flag is not wired, or draws other detections.
    """
    from demo import main

    drawn = {}
    for runtime in ("eager", "onnxruntime"):
        out = tmp_path / runtime
        argv = ["--config-file", str(setup["config"]), "--input", str(setup["image"])]
        argv += ["--output", str(out), "--runtime", runtime, "--confidence-threshold", "0.05"]
        np.random.seed(0)  # Visualizer draws each box in a random colour
        assert main(argv + [f"train.init_checkpoint={setup['weights']}"]) == 0
        drawn[runtime] = cv2.imread(str(out / "img.png"))
    assert drawn["eager"].shape == drawn["onnxruntime"].shape
    differs = np.abs(drawn["eager"].astype(int) - drawn["onnxruntime"]).max(axis=2) > 0
    assert differs.mean() < 0.001, differs.mean()
    blank = cv2.imread(str(setup["image"]))
    assert (np.abs(drawn["eager"].astype(int) - blank).max(axis=2) > 0).mean() > 0.01  # drawn


@pytest.mark.slow
def test_tiled_onnx_runtime_gives_the_tiled_eager_detections(setup):
    """`--runtime onnxruntime --tile-size`: the ONNX model (OnnxDetector) under TiledDetector
    on a 2 x 2 mosaic of the fitted image, with the config's resize applied per tile, gives the
    tiled eager model's detections: boxes and scores within the export tolerance, same
    classes. Fails if the ONNX runner ignores a tile's height/width (boxes left at the resized
    tile's scale) or if the tiles are not all run."""
    from atss.engine.predictor import ATSSPredictor

    cfg = _cfg(setup)
    tile = np.concatenate([setup["bgr"], setup["bgr"][:, ::-1]], axis=1)
    mosaic = np.ascontiguousarray(np.concatenate([tile, tile[::-1]], axis=0))  # 272 x 336
    results = []
    for predictor in (ATSSPredictor(cfg), OnnxPredictor(cfg)):
        predictor.tile(max(SIZE), 32, max_detections_per_image=400)
        results.append(predictor(mosaic))
    eager, onnx = results
    assert eager.image_size == onnx.image_size == mosaic.shape[:2]
    assert len(eager) > 4 and len(onnx) == len(eager)
    np.testing.assert_allclose(
        onnx.pred_boxes.tensor.numpy(), eager.pred_boxes.tensor.numpy(), atol=TOLERANCE, rtol=0
    )
    np.testing.assert_allclose(onnx.scores.numpy(), eager.scores.numpy(), atol=TOLERANCE, rtol=0)
    assert torch.equal(onnx.pred_classes, eager.pred_classes)
