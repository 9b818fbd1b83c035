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
    predictor.autocast_dtype = None  # fp32
    predictor.tile(150, 40, max_detections_per_image=1000)
    image = RecordingImage(mosaic.permute(1, 2, 0).numpy())
    got = predictor(image)
    height, width = mosaic.shape[1:]
    n_tiles = 3 * 4  # rows at 0, 110, 170; columns at 0, 110, 220, 330
    assert len(image.windows) == n_tiles
    assert max(h * w for h, w in image.windows) <= 150 * 150
    expected = _tiled(model, False)([{"image": mosaic, "height": height, "width": width}])
    assert torch.equal(got.pred_boxes.tensor, expected[0]["instances"].pred_boxes.tensor)


# ------------------------------------------------------------------ the tiled evaluation's mapper
def _record(path, height, width):
    return {
        "file_name": str(path),
        "image_id": 5,
        "height": height,
        "width": width,
        "annotations": [{"bbox": [1, 2, 3, 4], "bbox_mode": 0, "category_id": 0}],
    }


def test_tiled_image_mapper_holds_one_copy_and_reads_npy_lazily(tmp_path):
    """A picture comes back as a (C, H, W) tensor *view* of the decoded (H, W, C) array (no
    second copy; RGB as stored, BGR reversed), a ``.npy`` image as a window reader that has
    read nothing yet and survives pickling (as a loader worker sends it); annotations are
    dropped and the dataset dict is left as it was. Fails if the mapper makes the
    channels-first copy Detectron2's mapper makes or reads the ``.npy`` whole (a reader that
    cannot cross processes fails the loader test below: "Bad file descriptor")."""
    import pickle

    from PIL import Image

    from atss.inference.lazy_image import TiledImageMapper

    rng = np.random.default_rng(1)
    array = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    Image.fromarray(array).save(tmp_path / "a.png")
    np.save(tmp_path / "a.npy", array)
    record = _record(tmp_path / "a.png", 37, 53)
    out = TiledImageMapper("RGB")(record)
    assert "annotations" not in out and "annotations" in record and "image" not in record
    image = out["image"]
    assert image.shape == (3, 37, 53) and image.dtype == torch.uint8
    assert image.permute(1, 2, 0).is_contiguous()  # HWC memory: a view, not a CHW copy
    assert np.array_equal(image.permute(1, 2, 0).numpy(), array)
    bgr = TiledImageMapper("BGR")(record)["image"]
    assert np.array_equal(bgr.permute(1, 2, 0).numpy(), array[:, :, ::-1])

    for fmt, expected in (("RGB", array), ("BGR", array[:, :, ::-1])):
        lazy = TiledImageMapper(fmt)(_record(tmp_path / "a.npy", 37, 53))["image"]
        reader = lazy if fmt == "RGB" else lazy.image
        assert isinstance(reader, NpyWindows) and reader.bytes_read == 0
        assert lazy.shape == (37, 53, 3)
        sent = pickle.loads(pickle.dumps(lazy))
        assert np.array_equal(sent[4:20, 7:30], expected[4:20, 7:30])


def test_tiled_image_mapper_names_the_file_and_image_of_a_bad_image(tmp_path):
    """A size other than the dataset's, a missing file and a ``.npy`` that is not an
    (H, W, 3) uint8 image each raise DatasetError naming the file and the image id."""
    from PIL import Image

    from atss.data import DatasetError
    from atss.inference.lazy_image import TiledImageMapper

    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(tmp_path / "a.png")
    np.save(tmp_path / "grey.npy", np.zeros((10, 12), np.uint8)[:, :, None])
    cases = [
        (_record(tmp_path / "a.png", 11, 12), "a.png"),
        (_record(tmp_path / "missing.png", 10, 12), "missing.png"),
        (_record(tmp_path / "grey.npy", 10, 12), "grey.npy"),
    ]
    for record, name in cases:
        with pytest.raises(DatasetError, match=rf"{name} \(image_id 5\): cannot be used"):
            TiledImageMapper("RGB")(record)


# Detectron2's loader forks its worker as in a real evaluation; Python >= 3.12 warns that torch's
# threads make fork() risky (DeprecationWarning), which the newest-stack check would print.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
@pytest.mark.slow  # a worker process
def test_tiled_evaluation_loader_gives_the_in_memory_detections(fitted, tmp_path):
    """Through Detectron2's test loader with a worker process, the tiled model gets the same
    detections from the mosaic as a PNG (a tensor view handed over in shared memory) and as a
    ``.npy`` (a window reader reopened in the main process) as from the mosaic in memory. Fails
    if the view or the reader is cut differently, or the reader cannot cross processes."""
    from detectron2.data import build_detection_test_loader
    from PIL import Image

    from atss.inference.lazy_image import TiledImageMapper

    model, mosaic = fitted
    height, width = mosaic.shape[1:]
    hwc = mosaic.permute(1, 2, 0).numpy()
    Image.fromarray(hwc).save(tmp_path / "m.png")
    np.save(tmp_path / "m.npy", hwc)
    expected = _tiled(model, True)([{"image": mosaic, "height": height, "width": width}])
    expected = expected[0]["instances"]
    dataset = [_record(tmp_path / f"m.{ext}", height, width) for ext in ("png", "npy")]
    loader = build_detection_test_loader(
        dataset=dataset, mapper=TiledImageMapper("RGB"), num_workers=1
    )
    kinds = []
    for (inp,) in loader:
        kinds.append(type(inp["image"]).__name__)
        got = _tiled(model, True)([inp])[0]["instances"]
        assert torch.equal(got.pred_boxes.tensor, expected.pred_boxes.tensor)
        assert torch.equal(got.scores, expected.scores)
        assert torch.equal(got.pred_classes, expected.pred_classes)
    assert kinds == ["Tensor", "NpyWindows"] and len(expected) >= 6


def test_read_for_tiling_gives_read_images_pixels(tmp_path):
    """Pictures read for tiling (OpenCV, decoded into one array) have exactly the pixels of
    Detectron2's ``read_image`` (PIL) in both channel orders: PNG, JPEG, a grey PNG (three
    equal channels) and a JPEG with an EXIF rotation (applied by both); the result is a
    writable C-ordered uint8 array. A missing file and a file that is no image raise OSError.
    Fails if the channels are swapped the wrong way, the orientation is ignored, or a
    decoder gives other pixels."""
    from detectron2.data.detection_utils import read_image
    from PIL import Image

    from atss.inference.lazy_image import read_for_tiling

    rng = np.random.default_rng(2)
    colour = rng.integers(0, 256, (30, 44, 3), dtype=np.uint8)
    Image.fromarray(colour).save(tmp_path / "a.png")
    Image.fromarray(colour).save(tmp_path / "a.jpg", quality=90)
    Image.fromarray(colour[:, :, 0]).save(tmp_path / "grey.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(colour).save(tmp_path / "rotated.jpg", quality=90, exif=exif)
    for name in ("a.png", "a.jpg", "grey.png", "rotated.jpg"):
        for fmt in ("RGB", "BGR"):
            got = read_for_tiling(str(tmp_path / name), fmt)
            expected = read_image(str(tmp_path / name), format=fmt)
            assert got.flags.c_contiguous and got.flags.writeable and got.dtype == np.uint8
            assert got.shape == expected.shape, (name, fmt)
            assert np.array_equal(got, expected), (name, fmt)
    assert read_for_tiling(str(tmp_path / "rotated.jpg")).shape == (44, 30, 3)
    (tmp_path / "text.png").write_text("not an image")
    for name in ("missing.png", "text.png"):
        with pytest.raises(OSError, match=name):
            read_for_tiling(str(tmp_path / name))
