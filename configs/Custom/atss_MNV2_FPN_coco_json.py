# ATSS on your own COCO-format data, sized for a CPU: ImageNet MobileNetV2-FPN, 2 x 128 head,
# batch 4 (as configs/TreeCrowns/atss_MNV2_FPN_treecrowns.py). The data come from the command line:
#
#   python train_net.py --config-file configs/Custom/atss_MNV2_FPN_coco_json.py \
#       dataset.train.json_file=data/train.json dataset.train.image_root=data/images \
#       dataset.test.json_file=data/val.json dataset.test.image_root=data/images
#
# The loaders read these paths through the config (../common/coco_json_data.py), so Detectron2's
# own tools/lazyconfig_train_net.py takes the same command line; model.num_classes is the
# number of the train JSON's categories (any ids); give model.num_classes=N to force it.
# Loading is validated (configs/common/coco_data.py); the test set is evaluated with
# COCOEvaluator. Images: anything PIL reads, 8-bit grey or colour.
#
# Choices for an unknown dataset on a CPU:
# * input: shorter side 448-576 for training (+ horizontal flip), 512 for testing, longer side
#   <= 853: ~2.4x fewer pixels than COCO's 800/1333. For small objects raise both, e.g.
#   `dataloader.test.mapper.augmentations.0.short_edge_length=800`;
# * solver: SGD LR 0.0025 (the authors' 0.01 @ 16 images scaled linearly to 4), 3000 iterations
#   (12k images seen: ~24 epochs of 500 images), linear warmup over the first 5%, LR x0.1 at 2/3
#   and 8/9 of the run (the 1x schedule's 60k/80k of 90k). The schedule is in fractions of the
#   run, so `train.max_iter=N` alone rescales warmup and steps.
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.evaluation import COCOEvaluator

from atss.config import get_detectron2_config

from ..common.coco_data import dataloader
from ..common.coco_json_data import dataset, test_dataset, train_dataset
from ..common.models.atss_mnv2 import model
from ..common.optim import SGD as optimizer
from ..common.schedule import atss_schedule
from ..common.test import test

TEST_SHORT_EDGE, MAX_SIZE = 512, 853

# --- model ---------------------------------------------------------------------------------
# The CPU model of configs/common/models/atss_mnv2.py (as the tree-crown configs).
# From the data; `model.num_classes=N` on the command line forces a count.
model.num_classes = "${dataset.num_classes}"

# --- loaders -------------------------------------------------------------------------------
dataloader.train.dataset = train_dataset  # dataset.train, from the command line
dataloader.train.mapper.image_format = "RGB"
dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(
        short_edge_length=(448, 480, 512, 544, 576), max_size=MAX_SIZE, sample_style="choice"
    ),
    L(T.RandomFlip)(horizontal=True),
]
dataloader.train.total_batch_size = 4
dataloader.train.num_workers = 0  # in-process on a 2-core CPU; raise with more cores
dataloader.test.dataset = test_dataset
dataloader.test.mapper.image_format = "RGB"
dataloader.test.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=TEST_SHORT_EDGE, max_size=MAX_SIZE),
]
dataloader.test.num_workers = 0
dataloader.evaluator = L(COCOEvaluator)(
    dataset_name="${..test.dataset.names}", output_dir="${...train.output_dir}/inference"
)
test.aug.test_size = TEST_SHORT_EDGE
test.aug.test_max_size = MAX_SIZE

# --- solver --------------------------------------------------------------------------------
optimizer.lr = 0.0025  # linear scaling of 0.01 @ 16 images
MAX_ITER = 3000
# The milestones and the warmup are fractions of the run (fvcore evaluates them at
# iteration / train.max_iter), so `train.max_iter=N` alone rescales them.
lr_multiplier = atss_schedule(
    MAX_ITER, steps=(2000, 2667), warmup_iters=150, warmup_factor=0.001, warmup_method="linear"
)

train = get_detectron2_config("common/train.py").train
train.max_iter = MAX_ITER
train.init_checkpoint = ""  # the backbone loads its ImageNet weights itself
train.output_dir = "./output/Custom/atss_MNV2_FPN_coco_json"
train.checkpointer.period = 1000
train.checkpointer.max_to_keep = 3
train.eval_period = 0  # 0: evaluate once, after the last iteration
train.log_period = 20
train.seed = 0
