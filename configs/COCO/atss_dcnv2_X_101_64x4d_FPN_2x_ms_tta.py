# The authors' best result: ATSS_dcnv2_X_101_64x4d_FPN_2x evaluated with multi-scale + flip
# test-time augmentation and soft box voting (published figure: configs/README.md). For evaluation
# only (`--eval-only train.init_checkpoint=<trained model>`). The test loader hands the original
# image to the TTA wrapper, which resizes it to every scale itself (800 included).
from .atss_dcnv2_X_101_64x4d_FPN_2x_ms import (
    dataloader,
    lr_multiplier,
    model,
    optimizer,
    test,
    train,
)

test.aug.enabled = True
dataloader.test.mapper.augmentations = []

train.output_dir = "./output/COCO/atss_dcnv2_X_101_64x4d_FPN_2x_ms_tta"
