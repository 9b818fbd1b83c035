# The authors' solver: SGD, LR 0.01 at 16 images (scale linearly with the batch), momentum 0.9,
# weight decay 1e-4; biases get 2x LR and no weight decay; norm weights keep the weight decay.
from atss.config import get_detectron2_config

SGD = get_detectron2_config("common/optim.py").SGD
SGD.lr = 0.01
SGD.params.base_lr = "${..lr}"
SGD.params.bias_lr_factor = 2.0
SGD.params.weight_decay_bias = 0.0
SGD.params.weight_decay_norm = 1e-4
