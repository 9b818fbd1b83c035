"""Reading Pascal VOC folders (atss/data/voc.py): errors that name the file, the object and the
field, and boxes clipped to the image or dropped with a logged count."""

import logging

import numpy as np
import pytest

from atss.data.voc import read_voc_folder
from tests.data.annotation_files import write_voc


def test_missing_image_file_error_names_the_file(tmp_path):
    write_voc(tmp_path, "A", [[1, 1, 5, 5]])
    (tmp_path / "A.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"A\.xml.*A\.png"):
        read_voc_folder(tmp_path)


@pytest.mark.parametrize(
    "box, message",
    [([1, 1, "", 5], r"B\.xml.*object> #0.*xmax"), ([1, "abc", 5, 5], r"B\.xml.*ymin.*'abc'")],
)
def test_malformed_box_field_error_names_file_object_and_field(tmp_path, box, message):
    write_voc(tmp_path, "B", [box])
    with pytest.raises(ValueError, match=message):
        read_voc_folder(tmp_path)


def test_not_well_formed_xml_error_names_the_file(tmp_path):
    (tmp_path / "C.xml").write_text("<annotation><filename>C.png</filename>")
    with pytest.raises(ValueError, match=r"C\.xml.*not well-formed"):
        read_voc_folder(tmp_path)


def test_size_mismatch_between_xml_and_image_is_an_error(tmp_path):
    write_voc(tmp_path, "D", [[1, 1, 5, 5]], size=(64, 48), xml_size=(48, 64))
    with pytest.raises(ValueError, match=r"D\.xml.*48x64.*64x48"):
        read_voc_folder(tmp_path)


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_non_finite_box_is_an_error_naming_the_file(tmp_path, bad):
    write_voc(tmp_path, "E", [[1, 1, 5, 5], [1, 1, bad, 5]])
    with pytest.raises(ValueError, match=r"E\.xml.*NaN/inf.*object #1"):
        read_voc_folder(tmp_path)


def test_out_of_image_boxes_are_clipped_and_empty_ones_dropped_with_logged_counts(tmp_path, caplog):
    boxes = [[-5, 2, 10, 10], [60, 40, 80, 60], [70, 10, 90, 20], [5, 5, 5, 9], [9, 9, 3, 12]]
    write_voc(tmp_path, "F", boxes, size=(64, 48))
    with caplog.at_level(logging.WARNING, logger="atss.data.validation"):
        (img,) = read_voc_folder(tmp_path)
    np.testing.assert_allclose(img.boxes, [[0, 2, 10, 10], [60, 40, 64, 48]])
    assert "dropped 2 box(es) of zero/negative size and 1 lying outside" in caplog.text
    assert "clipped 2 box(es)" in caplog.text and "F.xml" in caplog.text
