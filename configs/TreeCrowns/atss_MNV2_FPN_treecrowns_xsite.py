# As atss_MNV2_FPN_treecrowns.py, on the cross-site split: train on some deepforest sites
# (`treecrowns_xsite_train`, 93 tiles), test on a site never seen in training
# (`treecrowns_xsite_val`).
from .atss_MNV2_FPN_treecrowns import dataloader, lr_multiplier, model, optimizer, test, train

dataloader.train.dataset.names = "treecrowns_xsite_train"
dataloader.test.dataset.names = "treecrowns_xsite_val"
train.output_dir = "./output/TreeCrowns/atss_MNV2_FPN_treecrowns_xsite"

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "test", "train"]
