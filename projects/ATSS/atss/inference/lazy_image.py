"""
Images read a window at a time, for tiled inference on images larger than memory should hold.

:class:`NpyWindows` reads an (H, W, C) uint8 ``.npy`` file: ``reader[y0:y1, x0:x1]`` reads only
those rows' pixels from the file (one ``pread`` per row, no memory map: mapped pages would stay
resident and count in the process's memory as the tiles sweep the image). It has ``.shape`` and
``.dtype`` like an array, so :class:`~atss.inference.TiledDetector` takes it as its ``"image"``
(any HWC array-like does: an ndarray, a memmap, this reader) and materialises one tile at a
time. :class:`ReversedChannels` flips RGB <-> BGR lazily, per window.
"""

import os
from typing import Tuple

import numpy as np

__all__ = ["NpyWindows", "ReversedChannels", "is_lazy_image"]


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


def is_lazy_image(image) -> bool:
    """True for an HWC array-like that is not an in-memory ndarray (read a window at a time)."""
    return not isinstance(image, np.ndarray) and hasattr(image, "shape")
