"""tools/profile_train_step.py: every labelled part of a training step gets time, forward and
backward are both attributed, the table adds up to the step, and the labels leave the model as
it was; the command line prints that table."""

import pytest
import torch

from atss.engine.config import load_config
from atss.utils.benchmark import configure
from tests.atss_testing import load_script

CONFIG = "configs/Shapes/atss_tiny_shapes.py"
SIZE = (96, 128)

profiling = load_script("tools/profile_train_step.py")


@pytest.fixture(scope="module")
def cfg():
    opts = ["train.device=cpu", "dataloader.train.num_workers=0", "model.head.norm=GN"]
    cfg = load_config(CONFIG, opts)  # GN: the head GroupNorm row has something to measure
    return configure(cfg, size=SIZE, batch=2)


def test_each_part_gets_its_forward_and_backward_time_and_the_rows_add_up(cfg):
    """One profiled step of the tiny config: the rows are PARTS in order; the backbone and head
    convolutions have forward and backward time (the backward is charged through the autograd
    sequence numbers, so a broken attribution leaves it at 0 or in "other"); the matcher and
    losses have forward time; the data row is non-zero (batches are read inside the step);
    ``step_ms`` is the sum of the rows. Fails if a label is lost or attribution breaks."""
    torch.manual_seed(0)
    result = profiling.profile_train_step(cfg, steps=1, warmup=1)
    rows = {part: (fwd, bwd) for part, fwd, bwd in result["rows"]}
    assert [r[0] for r in result["rows"]] == profiling.PARTS
    for part in ("backbone convs", "head convs"):
        assert rows[part][0] > 0 and rows[part][1] > 0, (part, rows[part])
    for part in ("matcher", "losses", "data", "FPN", "head GroupNorm"):
        assert rows[part][0] > 0, (part, rows[part])
    assert rows["matcher"][1] == 0  # the assignment has no gradient
    assert result["step_ms"] == pytest.approx(sum(f + b for f, b in rows.values()))
    table = profiling.format_profile_table(result)
    shares = [
        float(line.rsplit("|", 2)[1].strip().rstrip("%")) for line in table.splitlines()[2:-1]
    ]
    assert sum(shares) == pytest.approx(100, abs=0.1 * len(shares))


def test_labels_are_removed_after_profiling(cfg):
    """The record_function wrappers are instance attributes for the profiled steps only:
    afterwards the model's methods are its class's again (a leftover wrapper would profile
    every later step and pickle badly)."""
    from atss.engine.config import START, build_model

    model = build_model(cfg, START, "cpu")
    profiling.profile_train_step(cfg, steps=1, warmup=0, model=model)
    for attr in ("preprocess_image", "label_anchors", "losses"):
        assert attr not in vars(model), attr
    assert "forward" not in vars(model.head) and "forward" not in vars(model.backbone)


def test_interleaved_steps_train_identical_copies_identically(cfg):
    """Two copies of one model on the same batches get the same losses in every round (the
    alternation changes the order, not the work), and a time per round each."""
    import copy

    from detectron2.config import instantiate

    from atss.engine.config import NO_WEIGHTS, build_model

    torch.manual_seed(0)
    a = build_model(cfg, NO_WEIGHTS, "cpu")
    b = copy.deepcopy(a)
    batches = [next(iter(instantiate(cfg.dataloader.train)))]
    out = profiling.interleaved_train_steps({"a": a, "b": b}, cfg, batches, rounds=2)
    assert len(out["a"]["seconds"]) == len(out["b"]["seconds"]) == 2
    for la, lb in zip(out["a"]["losses"], out["b"]["losses"]):
        assert la.keys() == lb.keys()
        for k in la:
            assert la[k] == pytest.approx(lb[k], rel=1e-5), k


def test_command_line_prints_the_table(capsys):
    """``tools/profile_train_step.py --config-file ... --size H W --batch N --steps 1`` prints
    the markdown table with a step row."""
    profiling.main(
        ["--config-file", CONFIG, "--size", "96", "128", "--batch", "2", "--steps", "1",
         "--warmup", "0", "dataloader.train.num_workers=0"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert out.startswith("| part | forward ms | backward ms | total ms | share |")
    assert "| **step** |" in out and "| matcher |" in out
