"""Images read a window at a time, for tiled inference on images larger than memory should hold.

:class:`NpyWindows` reads an (H, W, C) uint8 ``.npy`` file a window at a time (one ``pread`` per
row, no memory map: mapped pages would stay resident as the tiles sweep the image); it has
``.shape`` and ``.dtype``, so :class:`~atss.inference.TiledDetector` takes it as an image.
:class:`ReversedChannels` flips RGB <-> BGR per window. :func:`read_for_tiling` is the one rule
for reading an image that is to be tiled (a ``.npy`` lazily, any other picture whole), and
:class:`TiledImageMapper` the test mapper of a tiled evaluation, which hands the model the
image as read. See docs/large_images.md.
"""

import copy
import os
from typing import Tuple

import cv2
import numpy as np
import torch
from detectron2.data.detection_utils import SizeMismatchError, check_image_size

from ..data.mappers import unusable_image

__all__ = [
    "NpyWindows",
    "ReversedChannels",
    "TiledImageMapper",
    "read_for_tiling",
]


def _window(key, shape) -> Tuple[slice, slice, object]:
    """(rows, columns, rest of the key) of an index into an (H, W, C) image; rows and columns
    as plain step-1 slices within the image."""
    if not isinstance(key, tuple):
        key = (key,)
    key = key + (slice(None),) * max(0, 2 - len(key))
    rows, cols, rest = key[0], key[1], key[2:]
    out = []
    for s, n in ((rows, shape[0]), (cols, shape[1])):
        if not isinstance(s, slice):
            raise TypeError(f"window index must be slices, got {s!r}")
        start, stop, step = s.indices(n)
        if step != 1:
            raise ValueError("window index: step must be 1")
        out.append(slice(start, max(start, stop)))
    return out[0], out[1], rest


class NpyWindows:
    """
    Windows of an (H, W, C) C-ordered ``.npy`` image, read from the file on demand.

    Args:
        path: the ``.npy`` file (``np.save`` of an (H, W, C) array, any dtype, C order).

    Attributes:
        shape, dtype: those of the stored array.
        bytes_read: pixels' bytes read so far (for tests and benchmarks).
    """

    def __init__(self, path: str):
        self.path = path
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            self._offset = f.tell()
        if fortran or len(shape) != 3:
            raise ValueError(f"{path}: need a C-ordered (H, W, C) array, got shape {shape}")
        self.shape, self.dtype = tuple(int(s) for s in shape), np.dtype(dtype)
        self._fd = os.open(path, os.O_RDONLY)
        self.bytes_read = 0

    def __getitem__(self, key) -> np.ndarray:
        rows, cols, rest = _window(key, self.shape)
        h, w, c = self.shape
        item = self.dtype.itemsize
        out = np.empty((rows.stop - rows.start, cols.stop - cols.start, c), self.dtype)
        length = out.shape[1] * c * item
        for i, y in enumerate(range(rows.start, rows.stop)):
            offset = self._offset + ((y * w + cols.start) * c) * item
            data = os.pread(self._fd, length, offset)
            if len(data) != length:
                raise OSError(f"{self.path}: truncated at row {y}")
            out[i] = np.frombuffer(data, self.dtype).reshape(out.shape[1], c)
        self.bytes_read += out.nbytes
        return out[(slice(None), slice(None)) + rest] if rest else out

    def __reduce__(self):
        # Sent between processes (a loader worker to the main one) by its path: the receiver
        # opens the file itself, as a file descriptor means nothing in another process.
        return NpyWindows, (self.path,)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __array__(self, dtype=None, copy=None):  # the whole image (only when asked for)
        array = self[:, :]
        return array if dtype is None else array.astype(dtype)


class ReversedChannels:
    """An HWC array-like with its channels reversed (RGB <-> BGR), window by window."""

    def __init__(self, image):
        self.image = image
        self.shape, self.dtype = tuple(image.shape), image.dtype

    def __getitem__(self, key) -> np.ndarray:
        rows, cols, rest = _window(key, self.shape)
        window = np.asarray(self.image[rows, cols])[:, :, ::-1]
        return window[(slice(None), slice(None)) + rest] if rest else window

    def __array__(self, dtype=None, copy=None):
        array = np.ascontiguousarray(self[:, :])
        return array if dtype is None else array.astype(dtype)


def read_for_tiling(path: str, image_format: str = "RGB"):
    """An (H, W, 3) image to be cut into tiles, in ``image_format`` ("RGB" or "BGR").

    A ``.npy`` file (an (H, W, 3) uint8 RGB array, ``np.save``) is returned as
    :class:`NpyWindows` (wrapped in :class:`ReversedChannels` for "BGR"): nothing is read
    until a tile is cut. Any other picture is read whole, as a C-ordered uint8 array, by
    OpenCV's ``imread``, which decodes straight into that one array (the channel order is
    swapped in place): Detectron2's ``read_image`` (PIL) holds PIL's 4-byte-per-pixel buffer,
    a converted copy of it and the array at once (both peaks: docs/benchmarks.md, "Large
    images: memory and time"). The pixels are the same for PNG and JPEG
    (checked against ``read_image``); EXIF orientation is applied as ``read_image`` does; grey
    and palette images become 3 channels, 16-bit ones are scaled to 8 bits; no pixel limit.

    Raises:
        ValueError: a ``.npy`` file that does not hold an (H, W, 3) uint8 array.
        OSError: a missing file, or one OpenCV cannot decode.
    """
    if image_format not in ("RGB", "BGR"):
        raise ValueError(f"read_for_tiling: image_format must be RGB or BGR, got {image_format!r}")
    if path.lower().endswith(".npy"):
        image = NpyWindows(path)
        if image.dtype != np.uint8 or image.shape[2] != 3:
            raise ValueError(
                f"{path}: need an (H, W, 3) uint8 array, got {image.shape} {image.dtype}"
            )
        return image if image_format == "RGB" else ReversedChannels(image)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    image = cv2.imread(path, cv2.IMREAD_COLOR)  # BGR, EXIF orientation applied
    if image is None:
        raise OSError(f"{path}: not an image OpenCV can decode")
    if image_format == "RGB":
        cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=image)
    return image


class TiledImageMapper:
    """
    The test mapper of a tiled evaluation: a dataset dict to the tiled model's input.

    Detectron2's ``DatasetMapper`` holds two full copies of each image at once (the decoded
    (H, W, C) array and the (C, H, W) tensor made from it) in every loader worker; the tiles
    need neither the second copy nor the test resize (which :class:`TiledDetector` applies to
    each tile). This mapper returns ``"image"`` as

    * a ``.npy`` file: a window reader (:func:`read_for_tiling`), so no pixel is read before a
      tile is cut and memory does not grow with the image at all;
    * any other picture: the decoded array, as a (C, H, W) tensor *view* of its (H, W, C)
      memory (no copy; a loader worker hands it over in shared memory).

    Annotations are dropped as in Detectron2's test mapper; ``height``/``width`` are checked
    against the image (or filled in) as it does.

    Args:
        image_format: "RGB" or "BGR", the model's input format (the replaced mapper's).

    Raises (when called):
        DatasetError: naming the file and image id, for an image that cannot be read or whose
            size differs from the dataset's ``height``/``width``.
    """

    def __init__(self, image_format: str = "BGR"):
        if image_format not in ("RGB", "BGR"):
            raise ValueError(
                f"TiledImageMapper: image_format must be RGB or BGR, got {image_format!r}"
            )
        self.image_format = image_format

    def __call__(self, dataset_dict: dict) -> dict:
        record = copy.deepcopy(
            {k: v for k, v in dataset_dict.items() if k not in ("annotations", "sem_seg_file_name")}
        )
        try:
            image = read_for_tiling(record["file_name"], self.image_format)
            check_image_size(record, image)
        except (OSError, ValueError, SizeMismatchError) as e:
            raise unusable_image(record, e) from e
        if isinstance(image, np.ndarray):
            image = torch.from_numpy(image).permute(2, 0, 1)
        record["image"] = image
        return record
