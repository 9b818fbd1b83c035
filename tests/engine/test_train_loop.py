"""The LR schedule of a shorter run: ``train.max_iter=N`` alone rescales the LR steps and the
warmup, because Detectron2's LRScheduler hook evaluates the config's multiplier at
``iteration / train.max_iter``; the trainer of each precision (the train loop end to end:
tests/test_train_net.py)."""

import itertools

import numpy as np
import pytest
import torch
from detectron2.config import instantiate
from detectron2.engine import AMPTrainer, HookBase, SimpleTrainer, hooks
from detectron2.utils.events import EventStorage

from atss.engine import train_loop
from atss.engine.config import load_config
from tests.atss_testing import FIT_BOXES, FIT_SIZE, make_inputs, record_head_dtypes, tiny_model

TREECROWNS = "configs/TreeCrowns/atss_MNV2_FPN_treecrowns.py"  # 1100 iterations, steps 800/1000


class _Constant(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, batch):
        return {"loss": self.weight.sum() * 0}


class _RecordLR(HookBase):
    def __init__(self):
        self.lr = []

    def before_step(self):
        self.lr.append(self.trainer.optimizer.param_groups[0]["lr"])


def _lr_per_iteration(max_iter):
    """The LR of every iteration of the tree-crown config run with ``train.max_iter=N`` (and
    nothing else changed) under Detectron2's own SimpleTrainer and LRScheduler hook, as
    train_net.py registers it, on a one-parameter model."""
    cfg = load_config(TREECROWNS, [f"train.max_iter={max_iter}"])
    model = _Constant()
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.optimizer.lr)
    trainer = SimpleTrainer(model, itertools.repeat(None), optimizer)
    recorder = _RecordLR()
    trainer.register_hooks([hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)), recorder])
    trainer.train(0, cfg.train.max_iter)
    assert len(recorder.lr) == max_iter
    return cfg.optimizer.lr, recorder.lr


@pytest.mark.parametrize(
    "max_iter, warm, steps",
    [
        # The config's own length: warmup over 150 iterations, steps at 800 and 1000.
        (1100, 150, (800, 1000)),
        # 500 iterations: 150 * 500 / 1100 = 68.2, 800 * 500 / 1100 = 363.6 and
        # 1000 * 500 / 1100 = 454.5, so full LR from iteration 69 and steps at 364 and 455.
        (500, 69, (364, 455)),
    ],
)
def test_train_max_iter_alone_rescales_the_lr_steps_and_the_warmup(max_iter, warm, steps):
    """Hand-computed: each step lands on the first iteration at or past its scaled position
    (step x max_iter / 1100), and the linear warmup reaches the full LR at 150 / 1100 of the
    run. Fails if Detectron2 kept the steps in absolute iterations (a 500-iteration run would
    never reach them) or if the config's schedule stopped being a fraction of train.max_iter
    (e.g. a scheduler given num_updates in iterations of another length)."""
    base, lr = _lr_per_iteration(max_iter)
    first, second = steps
    assert lr[0] == pytest.approx(base * 0.001)  # the warmup factor
    assert lr[warm - 1] < base and lr[warm] == pytest.approx(base)
    assert lr[first - 1] == pytest.approx(base) and lr[first] == pytest.approx(base * 0.1)
    assert lr[second - 1] == pytest.approx(base * 0.1)
    assert lr[second] == pytest.approx(base * 0.01) and lr[-1] == pytest.approx(base * 0.01)


# ------------------------------------------------------------------ the precision of training
def _tiny_trainer(dtype):
    model = tiny_model()
    batch = make_inputs([FIT_SIZE], [FIT_BOXES])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    return model, train_loop.build_trainer(model, itertools.repeat(batch), optimizer, "cpu", dtype)


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_one_training_step_runs_the_network_in_the_chosen_precision(dtype):
    """The trainer train_net.py builds for autocast_dtype's answer: fp32, or bf16 where the
    network (and the losses computed in its forward) runs under autocast while the parameters,
    their gradients and the optimizer stay fp32. Fails if the trainer ignores the precision, or
    if bf16 goes to Detectron2's AMPTrainer (CUDA only: its step asserts CUDA)."""
    model, trainer = _tiny_trainer(dtype)
    head = record_head_dtypes(model)
    with EventStorage(0) as storage:
        trainer.run_step()
    assert head == [{dtype or torch.float32}]
    assert np.isfinite(storage.history("total_loss").latest())
    params = list(model.parameters())
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in params)
    assert any(p.grad is not None and p.grad.dtype == torch.float32 for p in params)


# Built here without CUDA, torch's GradScaler warns that it disables itself: expected.
@pytest.mark.filterwarnings("ignore:torch.cuda.amp.GradScaler is enabled, but CUDA:UserWarning")
def test_fp16_trains_with_a_gradient_scaler_that_resumes_any_checkpoint():
    """fp16 goes to Detectron2's AMPTrainer (autocast and a gradient scaler: CUDA; its steps run
    in the `cuda` tests), which resumes the trainer state of an fp32 or bf16 run, where no
    scaler state was saved. Fails on Detectron2's AMPTrainer itself (KeyError 'grad_scaler'),
    which would refuse to resume an fp32 run in fp16."""
    _, fp32 = _tiny_trainer(None)
    fp32.iter = 7
    _, fp16 = _tiny_trainer(torch.float16)
    assert isinstance(fp16, AMPTrainer)
    fp16.load_state_dict(fp32.state_dict())
    assert fp16.iter == 7
