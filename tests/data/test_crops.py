"""``atss.data.crops``: tile origins, the tiles of a region and the boxes in a window, against
hand-computed values."""

import numpy as np
import pytest

from atss.data.crops import boxes_in_window, region_tiles, tile_starts


def test_tile_starts_whole_tiles_only_unless_cover_edges():
    assert tile_starts(1000, 320, 240) == [0, 240, 480]
    assert tile_starts(1000, 320, 240, cover_edges=True) == [0, 240, 480, 680]
    assert tile_starts(300, 320, 240) == [0]  # short region: one tile, clipped by the caller


@pytest.mark.parametrize("cover_edges", [False, True])
def test_a_last_whole_tile_ending_at_the_edge_is_kept(cover_edges):
    """800 px, tile 320, stride 240: (800 - 320) is a multiple of the stride, so the whole tiles
    start at 0, 240, 480 and the last ends exactly at 800 (by hand), with or without edge cover.
    Fails if the last origin is excluded (``range(0, length - tile_size, stride)``: that tile
    would be dropped, its pixels never trained on) or, with cover_edges, if a tile flush with
    the end is added although the last one already reaches it (a duplicate tile at 480)."""
    assert tile_starts(800, 320, 240, cover_edges=cover_edges) == [0, 240, 480]


@pytest.mark.parametrize(
    "cover_edges, expected", [(False, [0, 240, 480]), (True, [0, 240, 480, 481])]
)
def test_one_pixel_past_a_whole_tile_needs_the_edge_cover(cover_edges, expected):
    """801 px, one step past the boundary above: the whole tiles are still 0, 240, 480 (the next
    would start at 720 and end past 801), and they leave the last pixel uncovered, which
    cover_edges covers with a tile flush with the end at 481 (by hand). Fails if a partial tile
    is cut without cover_edges, or if the edge tile is placed at a multiple of the stride
    (720) instead of flush with the end."""
    assert tile_starts(801, 320, 240, cover_edges=cover_edges) == expected


def test_region_tiles_are_in_image_coordinates_and_clipped_to_the_region():
    """Region x 100..400, y 50..300, tile 200, stride 150, cover_edges: origins along x 0, 100
    and along y 0, 50 relative to the region, so tiles (100, 50, 300, 250), (200, 50, 400,
    250), (100, 100, 300, 300), (200, 100, 400, 300), row by row (by hand); a 150 px high
    region gives one row clipped to it. Fails if the region's origin is not added (tiles in
    region coordinates) or the tiles are not clipped to the region."""
    assert region_tiles((100, 50, 400, 300), 200, 150, cover_edges=True) == [
        (100, 50, 300, 250),
        (200, 50, 400, 250),
        (100, 100, 300, 300),
        (200, 100, 400, 300),
    ]
    assert region_tiles((100, 50, 300, 200), 200, 150) == [(100, 50, 300, 200)]


def test_box_kept_only_when_more_than_half_inside_and_clipped_to_window():
    boxes = np.array([[90.0, 0, 110, 10], [88, 0, 108, 10], [10, 10, 20, 20]])  # 50%, 60%, 100%
    clipped, idx = boxes_in_window(boxes, (0, 0, 100, 50), 0.5)
    assert idx.tolist() == [1, 2]
    np.testing.assert_allclose(clipped, [[88, 0, 100, 10], [10, 10, 20, 20]])
    clipped, idx = boxes_in_window(boxes, (50, 2, 150, 50), 0.5)  # 80% inside
    np.testing.assert_allclose(clipped[:1], [[40, 0, 60, 8]])  # in window coordinates
