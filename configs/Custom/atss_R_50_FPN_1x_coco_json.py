# ATSS R-50-FPN on your own COCO-format data, for GPUs: the COCO recipe
# (configs/COCO/atss_R_50_FPN_1x.py: batch 16, SGD LR 0.01, shorter side 800, max 1333) with the
# data from the command line, as configs/Custom/atss_MNV2_FPN_coco_json.py:
#
#   python train_net.py --num-gpus 8 --config-file configs/Custom/atss_R_50_FPN_1x_coco_json.py \
#       dataset.train.json_file=data/train.json dataset.train.image_root=data/images \
#       dataset.test.json_file=data/val.json dataset.test.image_root=data/images
#
# model.num_classes comes from the train JSON's categories. The 1x schedule's steps
# (60k/80k of 90k) and warmup are fractions of the run, so `train.max_iter=N` rescales them; a
# small dataset wants far fewer than 90k iterations (docs/own_data.md, "Fine-tuning").
# To fine-tune a COCO-trained ATSS: `train.init_checkpoint=PATH.pth`; every weight but the
# classifier's output layer is loaded (atss.engine.AtomicDetectionCheckpointer logs which not).
from detectron2.config import LazyCall as L
from detectron2.evaluation import COCOEvaluator

from ..COCO.atss_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, test, train
from ..common.coco_json_data import dataset, test_dataset, train_dataset

# From the data; `model.num_classes=N` on the command line forces a count.
model.num_classes = "${dataset.num_classes}"
dataloader.train.dataset = train_dataset  # dataset.train, from the command line
dataloader.test.dataset = test_dataset
dataloader.evaluator = L(COCOEvaluator)(
    dataset_name="${..test.dataset.names}", output_dir="${...train.output_dir}/inference"
)
train.output_dir = "./output/Custom/atss_R_50_FPN_1x_coco_json"
train.eval_period = 0  # 0: evaluate once, after the last iteration
