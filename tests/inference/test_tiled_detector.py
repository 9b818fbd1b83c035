"""
Tests of ``atss.inference.tiled_detector``: the tile grid, the inner-border rule and the merge
on a fake detector that "detects" painted rectangles exactly (so every expected box is known by
hand), and single-tile equality with a real (tiny, random) ATSS model.
"""

import copy

import pytest
import torch
from detectron2.config import LazyConfig
from detectron2.data import transforms as T
from detectron2.structures import Boxes, Instances
from torch import nn

from atss.inference import TiledDetector, build_tiled_model, cut_by_inner_border, tile_grid
from tests.atss_testing import fit_briefly, make_inputs, tiny_model

TEST_CONFIG = "configs/common/test.py"


# ------------------------------------------------------------------------------ fake detector
def paint(height, width, objects):
    """
    A (3, H, W) uint8 image with each object painted as a filled rectangle: channel 0 = object
    id (1..), channel 1 = class, channel 2 = score x 255. ``objects``: (x0, y0, x1, y1, class,
    score) with integer pixel corners, x1/y1 exclusive.
    """
    img = torch.zeros(3, height, width, dtype=torch.uint8)
    for i, (x0, y0, x1, y1, cls, score) in enumerate(objects, start=1):
        img[0, y0:y1, x0:x1] = i
        img[1, y0:y1, x0:x1] = cls
        img[2, y0:y1, x0:x1] = round(score * 255)
    return img


class PaintedRectangleDetector(nn.Module):
    """Detects every painted rectangle of its input exactly (the visible part of it): one box
    per object id, in the coordinates of the image it is given."""

    test_nms_thresh = 0.6
    max_detections_per_image = 100

    def __init__(self):
        super().__init__()
        self.calls = []  # (h, w) of each input image, to check what the model saw

    def forward(self, batched_inputs):
        outs = []
        for x in batched_inputs:
            img = x["image"]
            h, w = img.shape[-2:]
            self.calls.append((h, w))
            boxes, scores, classes = [], [], []
            for oid in torch.unique(img[0]).tolist():
                if oid == 0:
                    continue
                ys, xs = torch.nonzero(img[0] == oid, as_tuple=True)
                boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
                classes.append(int(img[1, ys[0], xs[0]]))
                scores.append(float(img[2, ys[0], xs[0]]) / 255)
            inst = Instances((h, w))
            inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
            inst.scores = torch.tensor(scores, dtype=torch.float32)
            inst.pred_classes = torch.tensor(classes, dtype=torch.int64)
            order = inst.scores.argsort(descending=True)
            outs.append({"instances": inst[order]})
        return outs


def run_tiled(objects, height, width, **kwargs):
    model = PaintedRectangleDetector().eval()
    tiled = TiledDetector(model, **kwargs).eval()
    inst = tiled([{"image": paint(height, width, objects), "height": height, "width": width}])
    return inst[0]["instances"], model


def as_rows(inst):
    """Detections as a sorted list of (x0, y0, x1, y1, class)."""
    rows = torch.cat([inst.pred_boxes.tensor, inst.pred_classes[:, None].float()], dim=1)
    return sorted(tuple(round(v, 3) for v in r) for r in rows.tolist())


# ------------------------------------------------------------------------------ tile_grid
@pytest.mark.parametrize(
    "height,width,size,overlap",
    [(200, 200, 120, 40), (1000, 730, 256, 64), (100, 999, 128, 0), (50, 60, 128, 32)],
)
def test_tile_grid_covers_the_image_with_at_least_the_overlap(height, width, size, overlap):
    """Every pixel is in a tile, every tile lies in the image and is `size` long (or the whole
    side when shorter), neighbours share >= `overlap` pixels, and no two tiles are equal.
    Fails if the last tile is not moved back to the edge (pixels left out or a tile past the
    image) or the stride ignores the overlap."""
    tiles = tile_grid(height, width, size, overlap)
    covered = torch.zeros(height, width, dtype=torch.bool)
    for x0, y0, x1, y1 in tiles.tolist():
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        assert x1 - x0 == min(size, width) and y1 - y0 == min(size, height)
        covered[y0:y1, x0:x1] = True
    assert bool(covered.all())
    assert len({tuple(t) for t in tiles.tolist()}) == len(tiles)
    for axis in (0, 1):
        starts = sorted(set(tiles[:, axis].tolist()))
        assert starts[0] == 0
        for a, b in zip(starts, starts[1:]):
            assert a + min(size, (width, height)[axis]) - b >= overlap


def test_tile_grid_hand_computed():
    """200 px, tile 120, overlap 40: stride 80, origins 0 and 80 (the second flush with the
    edge). Fails on an off-by-one in the tile count."""
    assert tile_grid(200, 200, 120, 40).tolist() == [
        [0, 0, 120, 120],
        [80, 0, 200, 120],
        [0, 80, 120, 200],
        [80, 80, 200, 200],
    ]
    assert tile_grid(90, 300, 120, 20).tolist() == [
        [0, 0, 120, 90],
        [100, 0, 220, 90],
        [180, 0, 300, 90],
    ]


@pytest.mark.parametrize("size,overlap", [(0, 0), (100, 100), (100, -1)])
def test_tile_grid_rejects_bad_arguments(size, overlap):
    with pytest.raises(ValueError, match="tile"):
        tile_grid(500, 500, size, overlap)


# ------------------------------------------------------------------------------ border rule
def test_cut_by_inner_border_hand_case():
    """Tiles [0,120) and [80,200) of a 200 x 100 image. Box A (100..120) touches tile 0's inner
    right border and lies well inside tile 1: dropped. Box B (0..30) touches tile 0's left side,
    an image edge: kept. Box C (85..150) from tile 1 touches no inner border: kept. Box D
    (80..140) from tile 1 touches its inner left border but tile 0 cannot hold it (it reaches
    past 120): kept. Fails if image edges count as inner borders or if a box is dropped without
    a tile holding it whole."""
    tiles = tile_grid(100, 200, 120, 40)
    boxes = torch.tensor(
        [[100.0, 10, 120, 40], [0, 10, 30, 40], [85, 50, 150, 90], [80, 10, 140, 40]]
    )
    drop = cut_by_inner_border(boxes, torch.tensor([0, 0, 1, 1]), tiles, (100, 200), margin=2)
    assert drop.tolist() == [True, False, False, False]


def test_a_side_within_the_margin_touches_the_border():
    """Tiles [0, 120) and [80, 200) of a 200 x 100 image, margin 2, boxes from tile 0. A side
    at exactly 2 px from a tile side touches it, one at 2.5 px does not (by hand): (a) right
    side at 118 touches tile 0's inner border and tile 1 holds the box: dropped; (b) at 117.5:
    not cut, kept; (c) left side at 82 touches tile 1's inner border, so tile 1 does not hold
    it whole: kept; (d) left side at 82.5: tile 1 holds it: dropped. Fails if "within the
    margin" is strict (<) or the margin is ignored."""
    tiles = tile_grid(100, 200, 120, 40)
    boxes = torch.tensor(
        [[90.0, 10, 118, 40], [90, 10, 117.5, 40], [82, 10, 119, 40], [82.5, 10, 119, 40]]
    )
    drop = cut_by_inner_border(boxes, torch.zeros(4, dtype=torch.int64), tiles, (100, 200), 2)
    assert drop.tolist() == [True, False, False, True]


def test_object_exactly_filling_the_overlap_is_kept_once():
    """An object as wide as the overlap and lying exactly in it (80..120) ends on an inner
    border of both tiles: each tile's box touches that tile's inner border, so neither tile
    holds the other's whole; both are kept and merged into one (by hand). Fails if "held whole"
    does not require the holding tile's inner borders to be untouched (both copies would be
    dropped and the object lost)."""
    inst, _ = run_tiled([(80, 10, 120, 50, 0, 0.9)], 200, 200, size=120, overlap=40)
    assert as_rows(inst) == [(80, 10, 120, 50, 0)]


@pytest.mark.parametrize("merge_type", ["nms", "vote", "soft-vote"])
def test_overlapping_objects_of_two_classes_are_merged_per_class(merge_type):
    """Two objects in the overlap of tiles 0 and 1, of classes 0 and 1, overlapping with IoU
    (18 x 18) / (20 x 20) = 0.81 (above the NMS 0.6 and the voting 0.66): each is found by both
    tiles, merged with its own duplicate only, and both are reported (by hand). Fails if the
    merge is class-agnostic (the 0.8 box of class 1 would suppress the class-0 one)."""
    objects = [(90, 20, 110, 40, 0, 0.7), (92, 22, 110, 40, 1, 0.8)]  # the second painted over
    inst, _ = run_tiled(objects, 200, 200, size=120, overlap=40, merge_type=merge_type)
    assert as_rows(inst) == [(90, 20, 110, 40, 0), (92, 22, 110, 40, 1)]


def test_nms_threshold_defaults_to_the_models():
    """An object wider than the overlap (75..145) is kept as two pieces, 75..120 and 80..145,
    with IoU 40 / 70 = 0.57 (by hand): the fake model's test_nms_thresh 0.6 keeps both, the
    same model with test_nms_thresh 0.5 keeps one. Fails if the merge uses a fixed threshold
    instead of the model's ``test_nms_thresh``."""
    image = paint(200, 200, [(75, 10, 145, 50, 0, 0.9)])
    for nms_thresh, expected in ((0.6, 2), (0.5, 1)):
        model = PaintedRectangleDetector().eval()
        model.test_nms_thresh = nms_thresh
        tiled = TiledDetector(model, size=120, overlap=40).eval()
        inst = tiled([{"image": image, "height": 200, "width": 200}])[0]["instances"]
        assert len(inst) == expected, nms_thresh


@pytest.mark.parametrize("merge_type", ["nms", "vote", "soft-vote"])
def test_object_crossing_a_tile_border_is_detected_once(merge_type):
    """An object crossing the inner border x = 120 of tile 0 (it is seen cut, 100..120, by tile 0
    and whole, 100..160, by tile 1; the IoU of the two is 1/3, so NMS alone keeps both) is
    reported once, with its whole box. The same for an object across the corner of four tiles.
    Fails if cut boxes are not dropped, or if the tile offset is not added back."""
    objects = [(100, 10, 160, 50, 1, 0.9), (95, 95, 135, 125, 2, 0.8)]
    inst, _ = run_tiled(objects, 200, 200, size=120, overlap=40, merge_type=merge_type)
    assert as_rows(inst) == [(95, 95, 135, 125, 2), (100, 10, 160, 50, 1)]


def test_object_inside_the_overlap_and_objects_on_image_edges():
    """An object wholly inside the overlap of two tiles (found whole by both) is merged into
    one; objects touching the image edges (never an inner border) are kept; an object on the
    bottom image edge crossing the inner border x = 120 is reported once, whole (the tile that
    holds it touches the image edge, which is no cut). Fails without the cross-tile merge or if
    image edges are taken for inner borders."""
    objects = [
        (90, 20, 110, 40, 0, 0.7),  # inside the overlap 80..120 of tiles 0 and 1
        (0, 0, 30, 30, 0, 0.6),  # top-left image corner
        (170, 170, 200, 200, 1, 0.5),  # bottom-right image corner
        (100, 170, 160, 200, 1, 0.4),  # bottom edge, across x = 120
    ]
    inst, _ = run_tiled(objects, 200, 200, size=120, overlap=40)
    assert as_rows(inst) == [
        (0, 0, 30, 30, 0),
        (90, 20, 110, 40, 0),
        (100, 170, 160, 200, 1),
        (170, 170, 200, 200, 1),
    ]


def test_object_larger_than_the_overlap_is_not_lost():
    """An object wider than the overlap (70..150, overlap 80..120) is cut in both tiles, and no
    tile holds it whole: its pieces are kept (here both, IoU 0.5 < NMS 0.6). Fails if every
    box touching an inner border is dropped."""
    inst, _ = run_tiled([(70, 10, 150, 50, 0, 0.9)], 200, 200, size=120, overlap=40)
    assert as_rows(inst) == [(70, 10, 120, 50, 0), (80, 10, 150, 50, 0)]


def test_cap_on_detections_keeps_the_best_scores_in_total():
    """12 objects spread over 4 tiles, cap 5: the 5 best scores of the image are returned, in
    decreasing order. Fails if the cap is applied per tile only (the model's own cap) or before
    sorting."""
    objects = [
        (5 + 16 * (i % 12), 5 + 150 * (i % 2), 15 + 16 * (i % 12), 20 + 150 * (i % 2), 0, s)
        for i, s in enumerate([0.3, 0.9, 0.1, 0.5, 0.8, 0.2, 0.7, 0.4, 0.6, 0.35, 0.95, 0.15])
    ]
    inst, _ = run_tiled(objects, 200, 200, size=120, overlap=40, max_detections_per_image=5)
    expected = sorted(round(o[5] * 255) / 255 for o in objects)[::-1][:5]
    assert inst.scores.tolist() == pytest.approx(expected)


def test_cap_on_detections_defaults_to_the_models():
    """12 objects over 4 tiles, the model's max_detections_per_image 3 and no cap given: 3
    detections, the best scores. Fails if the default cap is a fixed 100 instead of the
    model's own."""
    objects = [(5 + 16 * i, 5 + 150 * (i % 2), 15 + 16 * i, 20 + 150 * (i % 2), 0, (i + 1) / 20)
               for i in range(12)]  # fmt: skip
    model = PaintedRectangleDetector().eval()
    model.max_detections_per_image = 3
    tiled = TiledDetector(model, size=120, overlap=40).eval()
    inst = tiled([{"image": paint(200, 200, objects), "height": 200, "width": 200}])[0]
    expected = [round(s * 255) / 255 for s in (0.6, 0.55, 0.5)]  # scores painted as s x 255
    assert inst["instances"].scores.tolist() == pytest.approx(expected)


def test_the_model_sees_only_tiles_and_boxes_are_scaled_to_the_original_size():
    """The model is called with tile-sized images only; boxes found on the (resized) input are
    scaled to the original height/width given in the input dict. Fails if the whole image is
    fed to the model or the scaling is left out."""
    model = PaintedRectangleDetector().eval()
    tiled = TiledDetector(model, size=64, overlap=16, batch_size=3).eval()
    img = paint(150, 150, [(10, 10, 30, 40, 0, 0.9)])
    out = tiled([{"image": img, "height": 300, "width": 450}])[0]["instances"]
    assert set(model.calls) == {(64, 64)} and len(model.calls) == 9
    assert out.image_size == (300, 450)
    assert out.pred_boxes.tensor.tolist() == [[30.0, 20.0, 90.0, 80.0]]


# ------------------------------------------------------------------------------ real model
@pytest.mark.parametrize("resized", [False, True])
def test_single_tile_equals_the_untiled_model(resized):
    """An image that fits in one tile gives exactly the model's own result (same boxes, scores,
    classes, order), also when the input was resized from a larger original. Fails if the tile
    is cropped, padded or re-scaled differently from the model's own path."""
    model = tiny_model(num_classes=3, channels=64, test_score_thresh=0.0).eval()
    g = torch.Generator().manual_seed(1)
    image = torch.randint(0, 256, (3, 96, 130), generator=g, dtype=torch.uint8)
    inp = {"image": image, "height": 96, "width": 130}
    if resized:
        inp.update(height=150, width=203)
    with torch.no_grad():
        expected = model([dict(inp)])[0]["instances"]
    got = TiledDetector(model, size=160, overlap=32).eval()([dict(inp)])[0]["instances"]
    assert len(expected) > 10
    assert got.image_size == expected.image_size
    assert torch.equal(got.pred_boxes.tensor, expected.pred_boxes.tensor)
    assert torch.equal(got.scores, expected.scores)
    assert torch.equal(got.pred_classes, expected.pred_classes)


def test_real_model_on_many_tiles_gives_valid_capped_output():
    """A real model over 3 x 2 tiles: boxes inside the image, scores sorted, at most
    max_detections_per_image. Fails on boxes left in tile coordinates past the image or an
    unsorted merge."""
    model = tiny_model(num_classes=3, channels=64, test_score_thresh=0.0).eval()
    image = torch.randint(0, 256, (3, 150, 260), generator=torch.Generator().manual_seed(2))
    tiled = TiledDetector(model, size=128, overlap=32, max_detections_per_image=40).eval()
    inst = tiled([{"image": image.to(torch.uint8), "height": 150, "width": 260}])[0]["instances"]
    b = inst.pred_boxes.tensor
    assert len(inst) == 40
    assert bool((b[:, 0] >= 0).all() and (b[:, 2] <= 260).all() and (b[:, 3] <= 150).all())
    assert bool((inst.scores[:-1] >= inst.scores[1:]).all())


def test_config_switch():
    """`test.tile.size=0` (the default) leaves the model alone; a positive size wraps it with
    the config's overlap. Fails if the default config switched tiling on."""
    cfg = LazyConfig.load(TEST_CONFIG)
    model = PaintedRectangleDetector()
    assert build_tiled_model(cfg, model) is model
    on = LazyConfig.apply_overrides(cfg, ["test.tile.size=256", "test.tile.overlap=48"])
    tiled = build_tiled_model(on, model)
    assert isinstance(tiled, TiledDetector) and (tiled.size, tiled.overlap) == (256, 48)


def _fields(**kwargs):
    """A stand-in for a data loader and its mapper: what they were built with."""
    return kwargs


def test_tiled_evaluation_moves_the_test_resize_from_the_loader_to_the_tiles():
    """With tiling on, the evaluation's loader reads the images unresized and the tiled model
    applies the loader's augmentations to each tile (tiles in image pixels); with tiling off
    the loader keeps them and the model is unchanged. Fails if the whole image is still resized
    by the loader before it is tiled."""
    from detectron2.config import LazyCall as L

    from atss.inference import build_tiled_evaluation

    cfg = LazyConfig.load(TEST_CONFIG)
    resize = L(T.ResizeShortestEdge)(short_edge_length=512, max_size=853)
    cfg.dataloader = {"test": L(_fields)(mapper=L(_fields)(augmentations=[resize]))}
    model = PaintedRectangleDetector()
    same, loader = build_tiled_evaluation(cfg, model)
    assert same is model and len(loader["mapper"]["augmentations"]) == 1
    on = LazyConfig.apply_overrides(cfg, ["test.tile.size=256", "test.tile.overlap=48"])
    tiled, loader = build_tiled_evaluation(on, model)
    assert loader["mapper"]["augmentations"] == []
    (aug,) = tiled.augmentations.augs
    assert isinstance(aug, T.ResizeShortestEdge) and aug.short_edge_length == (512, 512)
    assert len(on.dataloader.test.mapper.augmentations) == 1  # the config itself is unchanged


def test_tiled_evaluation_replaces_a_whole_image_mapper_only():
    """Detectron2's DatasetMapper and our CheckedDatasetMapper (read, resize, make a CHW copy)
    become a TiledImageMapper with the same image format when tiling is on; with tiling off,
    or a mapper of another class, the mapper is the config's. Fails if the tiled evaluation
    keeps the two-copy mapper or replaces a mapper it does not know."""
    from detectron2.config import LazyCall as L
    from detectron2.data import DatasetMapper

    from atss.data import CheckedDatasetMapper
    from atss.inference import build_tiled_evaluation
    from atss.inference.lazy_image import TiledImageMapper

    cfg = LazyConfig.load(TEST_CONFIG)
    model = PaintedRectangleDetector()
    on = ["test.tile.size=256", "test.tile.overlap=48"]
    for target in (DatasetMapper, CheckedDatasetMapper, "atss.data.CheckedDatasetMapper"):
        mapper = L(target)(is_train=False, augmentations=[], image_format="RGB")
        cfg.dataloader = {"test": L(_fields)(mapper=mapper)}
        _, loader = build_tiled_evaluation(cfg, model)
        assert type(loader["mapper"]) is (
            target if not isinstance(target, str) else CheckedDatasetMapper
        )
        tiled = LazyConfig.apply_overrides(copy.deepcopy(cfg), on)
        _, loader = build_tiled_evaluation(tiled, model)
        assert isinstance(loader["mapper"], TiledImageMapper)
        assert loader["mapper"].image_format == "RGB"
    cfg.dataloader = {"test": L(_fields)(mapper=L(_fields)(augmentations=[]))}
    _, loader = build_tiled_evaluation(LazyConfig.apply_overrides(cfg, on), model)
    assert loader["mapper"] == {"augmentations": []}


# ------------------------------------------------------------------------------ entry points
from tests.test_demo import setup  # noqa: E402,F401  (the demo's tiny model, config, images)


def test_demo_tile_options(setup, tmp_path):  # noqa: F811
    """demo.py --tile-size/--tile-overlap runs the tiled model and writes the pictures; an
    overlap not smaller than the tile is refused with exit status 2. Fails if the options are
    not wired or a bad overlap crashes with a traceback."""
    from demo import main

    base = ["--config-file", str(setup["config"]), "--input", *map(str, setup["images"])]
    weights = [f"train.init_checkpoint={setup['weights']}"]
    out = tmp_path / "tiled"
    tiled = ["--output", str(out), "--tile-size", "48", "--tile-overlap", "16"]
    assert main(base + tiled + weights) == 0
    assert sorted(p.name for p in out.iterdir()) == ["img0.png", "img1.png"]
    bad = ["--output", str(tmp_path / "bad"), "--tile-size", "48", "--tile-overlap", "48"]
    assert main(base + bad + weights) == 2


# ------------------------------------------------- tiles in image pixels, then the test resize
MOSAIC_SUB = 320  # side of each of the 2 x 2 sub-images of the mosaic, in image pixels
MOSAIC_RESIZE = 160  # the test resize (ResizeShortestEdge), as a config's test loader has it
MOSAIC_BOXES = torch.tensor([[20.0, 30.0, 90.0, 110.0], [100.0, 20.0, 150.0, 70.0]])


def _match_own_detections(own, got, origin, seams, margin=4.0):
    """The confident detections of a sub-image run on its own (``own``, sub-image pixels) that
    lie away from the seams, and how many of them ``got`` (mosaic pixels) holds: same class,
    score within 1e-4 and box within 1e-2 px once shifted by ``origin``."""
    ox, oy = origin
    shift = torch.tensor([ox, oy, ox, oy], dtype=torch.float32)
    wanted = matched = 0
    for box, score, cls in zip(own.pred_boxes.tensor, own.scores, own.pred_classes):
        b = box + shift
        if score < 0.2 or any(
            (
                (b[0] - margin <= s <= b[2] + margin)
                if axis == "x"
                else (b[1] - margin <= s <= b[3] + margin)
            )
            for axis, s in seams
        ):
            continue
        wanted += 1
        same = (
            (got.pred_classes == cls)
            & ((got.scores - score).abs() < 1e-4)
            & ((got.pred_boxes.tensor - b).abs().max(dim=1).values < 1e-2)
        )
        matched += int(same.any())
    return wanted, matched


def test_tiles_are_cut_in_image_pixels_then_resized_like_a_test_image():
    """A 2 x 2 mosaic of four 320-px images, with a test resize to 160 px (as the Custom
    configs resize every test image) and 320-px tiles: each tile is one sub-image, resized like
    an image of its own, so every confident detection of a sub-image run alone (away from the
    seams) comes back, same class, score and box. Fails with the order "resize the whole image,
    then tile" (the mosaic shrinks to 160 px and becomes a single tile: objects 4x smaller than
    the model learnt), which is checked to lose most of them."""
    torch.manual_seed(0)
    side = MOSAIC_RESIZE
    train = make_inputs([(side, side)] * 2, [MOSAIC_BOXES] * 2, seed=3)
    model = fit_briefly(tiny_model(), train, steps=12)
    resize = [T.ResizeShortestEdge(short_edge_length=side, max_size=1000)]
    # sub-images: the two training images and their mirror images, upsampled 2x (nearest)
    subs = [x["image"].to(torch.uint8) for x in train]
    subs += [s.flip(-1) for s in subs]
    subs = [s.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2) for s in subs]
    mosaic = torch.cat([torch.cat(subs[:2], dim=2), torch.cat(subs[2:], dim=2)], dim=1)
    full = 2 * MOSAIC_SUB
    origins = [(0, 0), (MOSAIC_SUB, 0), (0, MOSAIC_SUB), (MOSAIC_SUB, MOSAIC_SUB)]
    seams = [("x", MOSAIC_SUB), ("y", MOSAIC_SUB)]

    tiled = TiledDetector(
        model, size=MOSAIC_SUB, overlap=0, max_detections_per_image=1000, augmentations=resize
    ).eval()
    got = tiled([{"image": mosaic, "height": full, "width": full}])[0]["instances"]
    # the old order: the whole mosaic through the resize, tiles in model-input pixels
    small = _resized(mosaic, resize)
    old = TiledDetector(model, size=MOSAIC_SUB, overlap=0, max_detections_per_image=1000).eval()
    old_got = old([{"image": small, "height": full, "width": full}])[0]["instances"]

    totals = {"new": [0, 0], "old": [0, 0]}
    with torch.no_grad():
        for sub, origin in zip(subs, origins):
            own = model(
                [{"image": _resized(sub, resize), "height": MOSAIC_SUB, "width": MOSAIC_SUB}]
            )[0]["instances"]
            for key, result in (("new", got), ("old", old_got)):
                wanted, matched = _match_own_detections(own, result, origin, seams)
                totals[key][0] += wanted
                totals[key][1] += matched
    wanted, matched = totals["new"]
    assert wanted >= 8, "the briefly fitted model should find its two objects in each sub-image"
    assert matched == wanted, totals
    assert totals["old"][1] <= wanted // 2, totals


def _resized(image, augmentations):
    """(C, H, W) uint8 -> the same through Detectron2 augmentations, as the test mapper does."""
    aug_input = T.AugInput(image.permute(1, 2, 0).numpy().copy())
    T.AugmentationList(augmentations)(aug_input)
    return torch.as_tensor(aug_input.image.transpose(2, 0, 1).copy())
