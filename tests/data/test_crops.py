"""``atss.data.crops``: the tile origins and tiles of a region (its rules not already pinned in
``tests/data/test_treecrowns.py``), against hand-computed tiles."""

from atss.data.crops import region_tiles, tile_starts


def test_cover_edges_adds_no_tile_when_the_last_whole_tile_ends_at_the_edge():
    """800 px, tile 320, stride 240: whole tiles at 0, 240, 480 and the last ends at 800, the
    edge, so cover_edges adds nothing (by hand). Fails if the extra tile is added whenever the
    last one reaches the end (a duplicate tile at 480 would enter the dataset twice)."""
    assert tile_starts(800, 320, 240, cover_edges=True) == [0, 240, 480]


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
