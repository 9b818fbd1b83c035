"""
Tests of tiled inference on images read a window at a time (``atss.inference.lazy_image``): the
``.npy`` window reader, the same detections as the in-memory tensor path, and that only the
current tile is ever materialised (counted on a fake array that records what it is asked for).
"""

import numpy as np
import pytest
import torch
from detectron2.data import transforms as T

from atss.engine.predictor import ATSSPredictor
from atss.inference import TiledDetector
from atss.inference.lazy_image import NpyWindows, ReversedChannels
from tests.atss_testing import fit_briefly, make_inputs, tiny_model

BOXES = torch.tensor([[20.0, 30.0, 90.0, 110.0], [100.0, 20.0, 150.0, 70.0]])


@pytest.fixture(scope="module")
def fitted():
    """A tiny model fitted briefly on two 160 px images, and a 2 x 3 mosaic of them (uint8
    CHW, 320 x 480) with its detections in-memory."""
    torch.manual_seed(0)
    train = make_inputs([(160, 160)] * 2, [BOXES] * 2, seed=3)
    model = fit_briefly(tiny_model(), train, steps=12)
    subs = [x["image"].to(torch.uint8) for x in train]
    subs += [s.flip(-1) for s in subs] + [s.flip(-2) for s in subs]
    mosaic = torch.cat([torch.cat(subs[:3], dim=2), torch.cat(subs[3:], dim=2)], dim=1)
    return model, mosaic


def _tiled(model, resize):
    augs = [T.ResizeShortestEdge(short_edge_length=200, max_size=1000)] if resize else []
    return TiledDetector(
        model, size=150, overlap=40, max_detections_per_image=1000, augmentations=augs
    ).eval()


def test_npy_windows_read_exactly_the_window(tmp_path):
    """``NpyWindows[y0:y1, x0:x1]`` equals the same slice of the saved array (edges, open and
    negative bounds, a channel index), and reads only that window's bytes. Fails if a row
    offset is wrong or the reader reads more than the window."""
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    np.save(tmp_path / "a.npy", array)
    reader = NpyWindows(str(tmp_path / "a.npy"))
    assert reader.shape == (37, 53, 3) and reader.dtype == np.uint8
    for key in [
        (slice(0, 10), slice(0, 7)),
        (slice(30, 37), slice(40, 53)),
        (slice(5, None), slice(None, -3)),
        (slice(0, 37), slice(0, 53), slice(None, None, -1)),
    ]:
        before = reader.bytes_read
        window = reader[key]
        assert np.array_equal(window, array[key]), key
        assert reader.bytes_read - before == window.size
    flipped = ReversedChannels(reader)
    assert np.array_equal(flipped[3:9, 4:20], array[3:9, 4:20, ::-1])
    assert np.array_equal(np.asarray(reader), array)


@pytest.mark.parametrize("resize", [False, True])
def test_lazy_npy_gives_the_in_memory_detections(fitted, tmp_path, resize):
    """The tiled detector on the mosaic saved as ``.npy`` and read a tile at a time (HWC)
    gives the same boxes, scores and classes as on the mosaic in memory (a CHW uint8 tensor),
    with and without a test resize of each tile. Fails if the lazy path cuts other windows,
    mixes up HWC / CHW or converts the tiles differently."""
    model, mosaic = fitted
    np.save(tmp_path / "m.npy", mosaic.permute(1, 2, 0).numpy())
    height, width = mosaic.shape[1:]
    expected = _tiled(model, resize)([{"image": mosaic, "height": height, "width": width}])
    reader = NpyWindows(str(tmp_path / "m.npy"))
    got = _tiled(model, resize)([{"image": reader, "height": height, "width": width}])
    expected, got = expected[0]["instances"], got[0]["instances"]
    assert len(expected) >= 6
    assert torch.equal(got.pred_boxes.tensor, expected.pred_boxes.tensor)
    assert torch.equal(got.scores, expected.scores)
    assert torch.equal(got.pred_classes, expected.pred_classes)


class RecordingImage:
    """An (H, W, 3) uint8 array-like that records every window it is asked for."""

    def __init__(self, array):
        self.array, self.shape, self.dtype = array, array.shape, array.dtype
        self.windows = []

    def __getitem__(self, key):
        window = self.array[key]
        self.windows.append(window.shape[:2])
        return window.copy()

    def __array__(self, dtype=None, copy=None):
        self.windows.append(self.shape[:2])
        return self.array.copy()


def test_predictor_materialises_one_tile_at_a_time(fitted, tmp_path):
    """Through ``ATSSPredictor.tile`` (the demo's path), an image read a window at a time is
    only ever asked for windows of at most one tile, each tile once: the whole image (or a
    float copy of it) is never materialised, so memory is bounded by the tile, not the image.
    Fails if the predictor preprocesses (converts or copies) the whole image before tiling."""
    model, mosaic = fitted
    predictor = ATSSPredictor.__new__(ATSSPredictor)  # the fitted model, no config needed
    predictor.model, predictor.device, predictor.input_format = model, "cpu", "BGR"
    predictor.augmentations, predictor.tiled = T.AugmentationList([]), False
    predictor.tile(150, 40, max_detections_per_image=1000)
    image = RecordingImage(mosaic.permute(1, 2, 0).numpy())
    got = predictor(image)
    height, width = mosaic.shape[1:]
    n_tiles = 3 * 4  # rows at 0, 110, 170; columns at 0, 110, 220, 330
    assert len(image.windows) == n_tiles
    assert max(h * w for h, w in image.windows) <= 150 * 150
    expected = _tiled(model, False)([{"image": mosaic, "height": height, "width": width}])
    assert torch.equal(got.pred_boxes.tensor, expected[0]["instances"].pred_boxes.tensor)
