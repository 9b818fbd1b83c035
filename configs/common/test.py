# What evaluation runs besides the model and the loader, as `test.*` (train_net.py reads it):
# test-time augmentation (configs/common/tta.py), tiled inference and the field metrics.
from .tta import aug

test = dict(
    aug=aug,
    # Tiled inference for large images (atss.inference.tiled_detector.TiledDetector, whose
    # arguments the keys are): tile side and overlap in image pixels (as read: each tile then
    # gets the test loader's resize); size 0 = off.
    tile=dict(size=0, overlap=0, merge_type="nms", batch_size=1),
    # Field metrics (atss.evaluation.pr_metrics): precision / recall / F1 at this IoU, at the
    # F1-best score threshold and, when set, at score_threshold.
    iou_threshold=0.5,
    score_threshold=None,
)
