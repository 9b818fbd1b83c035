# Test-time augmentation (the authors' recipe for their best result, configs/README.md):
# the test scale 800/1333 + its flip, shorter sides 400..1800 (+ flips, longer side <= 3000, or
# <= 1333 below 800) with per-scale box-size filters, then per-class soft box voting at IoU 0.66.
# Off by default; configs/common/test.py puts it at `test.aug`. Switch on with
# `test.aug.enabled=True`; the training script wraps the model with
# `atss.modeling.tta.build_tta_model(cfg, model)` (a no-op while the switch is off). Every other
# key is an argument of atss.modeling.tta.ATSSWithTTA and can be overridden the same way, e.g.
# `test.aug.min_sizes=[600,1000] test.aug.size_ranges=null test.aug.scale_flip=False`.
from atss.modeling.tta import TTA_MIN_SIZES, TTA_SIZE_RANGES

aug = dict(
    enabled=False,
    # The single-scale test resize (keep in sync with dataloader.test), run with no filter.
    test_size=800,
    test_max_size=1333,
    flip=True,
    # Extra shorter sides; the longer side is capped at max_size (test_max_size below 800).
    min_sizes=list(TTA_MIN_SIZES),
    max_size=3000,
    scale_flip=True,
    # Per extra scale: keep boxes with min^2 < area < max^2 in that scale's input pixels.
    size_ranges=[list(r) for r in TTA_SIZE_RANGES],
    merge_type="soft-vote",
    vote_iou_threshold=0.66,
    soft_score_threshold=0.05,
    # The authors keep 1000 boxes per image; COCO's AP then uses <= 100 per image and class.
    max_detections_per_image=1000,
    batch_size=2,
)
