"""The authors' test resize (atss.data.transforms) on hand-computed sizes."""

import numpy as np
import pytest
from detectron2.data.transforms import ResizeShortestEdge

from atss.data.transforms import AuthorsResizeShortestEdge, authors_resize_shape

# (h, w) -> (authors' h, w) and Detectron2's, shorter side 800, longer side <= 1333. Worked out
# by hand from maskrcnn-benchmark's Resize.get_size:
# * 480 x 640: 800 * 640 / 480 = 1066.67 -> int() 1066 (Detectron2 rounds: 1067);
# * 400 x 1000: 2.5 * 800 > 1333 -> size = round(1333 * 400 / 1000 = 533.2) = 533,
#   long = int(533 * 2.5 = 1332.5) = 1332 (Detectron2 scales both by 1333 / 2000: 533 x 1333);
# * 500 x 1000: size = round(666.5) = 666 (round half to even), long = 1332 (Detectron2:
#   666.5 -> 667, 1333);
# * 427 x 640: 1199.06 -> 1199 both; 800 x 800 and 800 x 1200: no resize needed, both.
CASES = {
    (480, 640): ((800, 1066), (800, 1067)),
    (640, 480): ((1066, 800), (1067, 800)),
    (400, 1000): ((533, 1332), (533, 1333)),
    (500, 1000): ((666, 1332), (667, 1333)),
    (427, 640): ((800, 1199), (800, 1199)),
    (800, 800): ((800, 800), (800, 800)),
    (800, 1200): ((800, 1200), (800, 1200)),
}


@pytest.mark.parametrize("size", sorted(CASES))
def test_authors_resize_truncates_where_detectron2_rounds(size):
    """
    Fails if the longer side is rounded (Detectron2's rule, 1067 for 640 x 480), if the capped
    shorter side rounds halves up (667 for 1000 x 500), or if the capped longer side is set to
    max_size instead of being truncated from the rounded shorter side.
    """
    authors, detectron2 = CASES[size]
    assert authors_resize_shape(*size, 800, 1333) == authors
    assert ResizeShortestEdge.get_output_shape(*size, 800, 1333) == detectron2


def test_authors_resize_transform_resizes_image_and_boxes_to_that_size():
    """The augmentation (used by the authors-converted configs) applies that size."""
    aug = AuthorsResizeShortestEdge(short_edge_length=800, max_size=1333)
    image = np.zeros((480, 640, 3), dtype=np.uint8)
    tfm = aug.get_transform(image)
    assert tfm.apply_image(image).shape[:2] == (800, 1066)
    box = tfm.apply_box(np.array([[0.0, 0.0, 640.0, 480.0]]))
    np.testing.assert_allclose(box, [[0.0, 0.0, 1066.0, 800.0]], rtol=1e-6)
