"""CheckedDatasetMapper (atss/data/mappers.py): an image that cannot be used fails naming the
file and image id, in training and in testing."""

import pytest

from atss.data import CheckedDatasetMapper, DatasetError
from tests.data.annotation_files import H, W, write_images


def _mapper(is_train=True):
    return CheckedDatasetMapper(is_train=is_train, augmentations=[], image_format="RGB")


def _record(tmp_path, name="img0.png", **extra):
    return {"file_name": str(tmp_path / "images" / name), "image_id": 10, "height": H,
            "width": W, "annotations": [], **extra}  # fmt: skip


@pytest.mark.parametrize("corruption", ["garbage", "empty", "truncated", "missing"])
def test_an_unreadable_image_fails_naming_the_file_and_image_id(tmp_path, corruption):
    write_images(tmp_path)
    path = tmp_path / "images" / "img0.png"
    data = path.read_bytes()
    if corruption == "garbage":
        path.write_bytes(b"this is not an image" * 10)
    elif corruption == "empty":
        path.write_bytes(b"")
    elif corruption == "truncated":
        path.write_bytes(data[: len(data) // 3])
    else:
        path.unlink()
    for is_train in (True, False):
        with pytest.raises(DatasetError) as e:
            _mapper(is_train)(_record(tmp_path))
        assert f"{path} (image_id 10): cannot be used" in str(e.value)


def test_an_image_of_another_size_than_its_annotation_fails_naming_it(tmp_path):
    write_images(tmp_path)
    with pytest.raises(DatasetError, match=r"img0\.png \(image_id 10\).*SizeMismatchError"):
        _mapper()(_record(tmp_path, height=H + 1))
