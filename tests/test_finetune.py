"""Fine-tuning a COCO (80-class) checkpoint into a model with another class count:
AtomicDetectionCheckpointer loads every tensor of matching shape, leaves the classifier's output
layer at its fresh initialisation, and says so in one warning line (the tensors by name on an
info line)."""

import logging
import math

import pytest
import torch
from detectron2.config import LazyConfig, instantiate

from atss.engine import AtomicDetectionCheckpointer

CONFIG = "configs/Custom/atss_MNV2_FPN_coco_json.py"
# Written by hand: the only tensors whose shape depends on the class count (C x #A channels).
CLASS_DEPENDENT = {"head.cls_score.weight", "head.cls_score.bias"}
PRIOR_PROB = 0.01  # RetinaNet/ATSS classifier bias init: sigmoid(bias) = prior


def build(num_classes, seed):
    cfg = LazyConfig.apply_overrides(
        LazyConfig.load(CONFIG),
        [f"model.num_classes={num_classes}", "model.backbone.pretrained=False"],
    )
    torch.manual_seed(seed)
    return instantiate(cfg.model)


@pytest.fixture(scope="module")
def coco_checkpoint(tmp_path_factory):
    """A synthetic 80-class checkpoint: a fresh model's state under another seed (so that every
    loaded tensor differs from the N-class model's own initialisation)."""
    path = tmp_path_factory.mktemp("ckpt") / "coco80.pth"
    torch.save({"model": build(80, seed=1).state_dict()}, path)
    return str(path)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def _load_and_log(model, checkpoint):
    """Load ``checkpoint`` into ``model`` through AtomicDetectionCheckpointer; return the log
    records of the load."""
    checkpointer = AtomicDetectionCheckpointer(model)
    handler, level = _Records(), checkpointer.logger.level
    checkpointer.logger.addHandler(handler)
    checkpointer.logger.setLevel(logging.INFO)  # as Detectron2's setup_logger leaves it
    try:
        checkpointer.load(checkpoint)
    finally:
        checkpointer.logger.removeHandler(handler)
        checkpointer.logger.setLevel(level)
    return handler.records


@pytest.mark.parametrize("num_classes", [1, 3])
def test_loads_all_but_the_classifier_and_logs_one_line(coco_checkpoint, num_classes):
    """Every tensor of the model equals the checkpoint's, except the two class-dependent ones,
    which equal a fresh model's init with the same seed (bias = the prior-probability value).
    The log has exactly one warning, on one line, counting the classifier's two tensors of
    another shape, and an info line naming both with their shapes. Fails if the classifier is
    loaded partially (e.g. the first N of 80 channels), if mismatched tensors abort the load or
    get re-initialised differently, or if the checkpointer logs fvcore's per-tensor lines and
    multi-line lists instead of one line."""
    fresh = build(num_classes, seed=0).state_dict()
    model = build(num_classes, seed=0)
    records = _load_and_log(model, coco_checkpoint)

    saved = torch.load(coco_checkpoint, map_location="cpu")["model"]
    loaded = model.state_dict()
    assert set(loaded) == set(saved)
    for key, value in loaded.items():
        if key in CLASS_DEPENDENT:
            assert saved[key].shape != value.shape, key
            assert torch.equal(value, fresh[key]), f"{key} should keep its fresh init"
        else:
            assert torch.equal(value, saved[key]), f"{key} was not loaded"
            if value.is_floating_point() and value.numel() > 1 and value.std() > 0:
                assert not torch.equal(value, fresh[key]), f"{key}: the test cannot tell"
    bias = loaded["head.cls_score.bias"]
    assert bias.shape == (num_classes,)
    assert torch.allclose(bias, torch.full_like(bias, -math.log((1 - PRIOR_PROB) / PRIOR_PROB)))

    warnings = [r.getMessage() for r in records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings
    assert warnings[0].endswith(" keep their initialisation): head.cls_score: 2 of another shape")
    listing = [r.getMessage() for r in records if r.getMessage().startswith("Tensors not loaded")]
    for key in CLASS_DEPENDENT:
        assert key in listing[0]
    shapes = f"(80, 128, 3, 3) in the checkpoint vs ({num_classes}, 128, 3, 3) in the model"
    assert shapes in listing[0]


def test_same_class_count_loads_silently(coco_checkpoint):
    """An 80-class model loads everything: no warning (the line is only for what is skipped)."""
    model = build(80, seed=0)
    records = _load_and_log(model, coco_checkpoint)
    assert not [r for r in records if r.levelno >= logging.WARNING]
    saved = torch.load(coco_checkpoint, map_location="cpu")["model"]
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
