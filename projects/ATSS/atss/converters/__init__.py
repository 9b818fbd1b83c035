"""atss.converters: converters from the published ATSS checkpoints (authors', mmdetection)."""

from .convert import (
    AUTHORS,
    FORMATS,
    MMDET,
    check_against_model,
    convert_authors_state_dict,
    convert_checkpoint,
    convert_mmdet_state_dict,
    convert_state_dict,
    detect_format,
    read_checkpoint,
)
