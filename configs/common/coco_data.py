# COCO detection data in the authors' two recipes, on Detectron2's common COCO loader.
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L

from atss.config import get_detectron2_config
from atss.data import CheckedDatasetMapper, get_checked_detection_dataset_dicts

# 1x: single scale, shorter side 800 (max 1333), horizontal flip.
dataloader = get_detectron2_config("common/data/coco.py").dataloader
# Validated loading, same arguments as Detectron2's: bad annotations fail early naming the file,
# image id and field, or are repaired/filtered with a logged count; unreadable images fail
# naming the file (atss/data/validation.py, docs/own_data.md "Bad data").
dataloader.train.dataset._target_ = get_checked_detection_dataset_dicts
dataloader.test.dataset._target_ = get_checked_detection_dataset_dicts
dataloader.train.mapper._target_ = CheckedDatasetMapper
dataloader.test.mapper._target_ = CheckedDatasetMapper
dataloader.train.mapper.use_instance_mask = False
dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=800, max_size=1333, sample_style="choice"),
    L(T.RandomFlip)(horizontal=True),
]

# 2x multi-scale: shorter side drawn uniformly from the integers 640..800 per image.
MULTI_SCALE_AUGMENTATIONS = [
    L(T.ResizeShortestEdge)(short_edge_length=(640, 800), max_size=1333, sample_style="range"),
    L(T.RandomFlip)(horizontal=True),
]
