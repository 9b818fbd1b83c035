"""The dataset mapper of every config: Detectron2's, with errors that name the image.

An image that cannot be read (missing, corrupt, truncated, not an image, another size than its
record says) fails inside a data-loader worker, where PIL's or OpenCV's bare error says neither
which file nor which record. :class:`CheckedDatasetMapper` re-raises it as a
:class:`~.validation.DatasetError` naming both; :func:`unusable_image` is that one message, also
raised by the tiled evaluation's mapper (:class:`atss.inference.lazy_image.TiledImageMapper`).
"""

from detectron2.data import DatasetMapper
from detectron2.data.detection_utils import SizeMismatchError

from .validation import DatasetError, _where

__all__ = ["CheckedDatasetMapper", "unusable_image"]


class CheckedDatasetMapper(DatasetMapper):
    """Detectron2's :class:`DatasetMapper` whose failures to read an image (missing, corrupt,
    truncated, not an image, other size than the annotation says) raise :class:`DatasetError`
    naming the file and image id, instead of a bare PIL/OS error from inside a loader worker."""

    def __call__(self, dataset_dict):
        try:
            return super().__call__(dataset_dict)
        except (OSError, SizeMismatchError) as e:  # PIL's UnidentifiedImageError is an OSError
            raise unusable_image(dataset_dict, e) from e


def unusable_image(record: dict, error: Exception) -> DatasetError:
    """The error a mapper raises for an image of ``record`` that cannot be read or used:
    "file (image_id N): cannot be used: <error type>: <error>"."""
    return DatasetError(f"{_where(None, record)}: cannot be used: {type(error).__name__}: {error}")
