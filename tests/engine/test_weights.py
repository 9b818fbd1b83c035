"""One way to give weights (atss.engine.weights): every entry point reads train.init_checkpoint=
(--weights, where kept, is the same), and exporting, predicting, evaluating or benchmarking an
untrained model needs an explicit --random-weights; otherwise it stops naming the key."""

import os
import sys

import cv2
import numpy as np
import pytest
import torch
from detectron2.config import instantiate

from atss.engine.config import load_config
from atss.engine.weights import WeightsError, load_trained_weights, weights_overrides
from tests.atss_testing import load_script, tiny_model, write_tiny_config

run_benchmark = load_script("tools/benchmark.py").run_benchmark

HEAD_DIMS = [64, 64]  # GN(32) needs 2 channels a group on the 1x1 P7 of a 64 px input


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny 3-class config with an empty train.init_checkpoint, a full checkpoint of its
    model whose classifier bias no initialisation gives (2.0), a backbone-only checkpoint
    (what a training init such as ImageNet weights covers) and an image."""
    root = tmp_path_factory.mktemp("weights")
    model = tiny_model(num_classes=3, **{"head.conv_dims": HEAD_DIMS})
    with torch.no_grad():
        model.head.cls_score.bias.fill_(2.0)
    state = model.state_dict()
    full, backbone = root / "trained.pth", root / "backbone.pth"
    torch.save({"model": state}, full)
    torch.save({"model": {k: v for k, v in state.items() if k.startswith("backbone.")}}, backbone)
    config = write_tiny_config(
        root / "tiny.py",
        64,
        96,
        f"model.head.conv_dims = {HEAD_DIMS}",
        'train.init_checkpoint = ""',
    )
    image = root / "img.jpg"
    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 255, (60, 80, 3), np.uint8))
    return {"config": str(config), "full": str(full), "backbone": str(backbone), "image": image}


def _export(setup, out, *args):
    module = load_script("tools/export_model.py")
    argv = ["--config-file", setup["config"], "--output", str(out), "--sample-size", "64", "96"]
    return module.main([*argv, *args])


def test_export_takes_train_init_checkpoint_like_every_other_entry_point(setup, tmp_path, capsys):
    """The issue's command: export_model.py ... train.init_checkpoint=model_final.pth used to
    export random weights (it only read --weights). The exported model must hold the
    checkpoint's weights: its classifier bias is 2.0, which no initialisation gives. --weights
    is the same. Fails if export ignores train.init_checkpoint."""
    path = _export(setup, tmp_path / "a", f"train.init_checkpoint={setup['full']}")
    assert "random" not in capsys.readouterr().out
    traced = dict(torch.jit.load(path).named_parameters())
    bias = [v for k, v in traced.items() if k.endswith("cls_score.bias")]
    assert len(bias) == 1 and torch.all(bias[0] == 2.0)
    module = load_script("tools/export_model.py")
    for opts, weights in [([f"train.init_checkpoint={setup['full']}"], ""), ([], setup["full"])]:
        model = module.load_model(setup["config"], opts, "cpu", weights)
        assert torch.all(model.head.cls_score.bias == 2.0)


def test_export_without_weights_stops_naming_the_key_and_random_needs_the_flag(
    setup, tmp_path, capsys
):
    """No weights: exit 2, one line naming train.init_checkpoint= and --random-weights, no
    file written (it used to warn and write random weights with exit 0). --random-weights
    exports. Fails if the old warning path is kept."""
    with pytest.raises(SystemExit) as e:
        _export(setup, tmp_path / "none")
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1
    assert "train.init_checkpoint=PATH" in err and "--random-weights" in err
    assert not (tmp_path / "none" / "model.ts").exists()
    assert os.path.isfile(_export(setup, tmp_path / "random", "--random-weights"))


def test_a_checkpoint_that_leaves_tensors_at_their_init_is_not_a_trained_model(setup):
    """A backbone-only checkpoint (like the COCO configs' default ImageNet
    train.init_checkpoint) leaves the head random: refused, naming the head's tensors. The full
    checkpoint loads. Fails if any loadable file counts as trained weights."""
    cfg = load_config(setup["config"], [f"train.init_checkpoint={setup['backbone']}"])
    with pytest.raises(WeightsError) as e:
        load_trained_weights(instantiate(cfg.model), cfg, what="export")
    assert "is not a trained model of this config" in str(e.value)
    assert "head.cls_score" in str(e.value) and "--random-weights" in str(e.value)
    cfg.train.init_checkpoint = setup["full"]
    model = instantiate(cfg.model)
    assert load_trained_weights(model, cfg) == setup["full"]
    assert torch.all(model.head.cls_score.bias == 2.0)
    cfg.train.init_checkpoint = setup["full"] + ".missing"
    with pytest.raises(WeightsError, match="no such file"):
        load_trained_weights(instantiate(cfg.model), cfg)


def test_weights_are_given_once():
    """--weights is train.init_checkpoint=; two different paths, or a path with
    --random-weights, are contradictions. Fails if either is silently resolved."""
    assert weights_overrides(["a.b=1"], "w.pth") == ["a.b=1", "train.init_checkpoint=w.pth"]
    assert weights_overrides(["train.init_checkpoint=w.pth"], "w.pth")[-1].endswith("=w.pth")
    with pytest.raises(WeightsError, match="name different weights"):
        weights_overrides(["train.init_checkpoint=a.pth"], "b.pth")
    with pytest.raises(WeightsError, match="--random-weights contradicts"):
        weights_overrides(["train.init_checkpoint=a.pth"], random_weights=True)
    assert weights_overrides(["train.init_checkpoint="], random_weights=True)


def test_demo_needs_weights_or_random_weights(setup, tmp_path, caplog):
    """demo.py without weights: status 2 naming the key (it used to draw a random model's
    boxes after a warning); with --random-weights it runs."""
    from demo import main

    argv = ["--config-file", setup["config"], "--input", str(setup["image"])]
    assert main([*argv, "--output", str(tmp_path / "a")]) == 2
    assert "train.init_checkpoint is empty" in caplog.text and "--random-weights" in caplog.text
    assert not (tmp_path / "a" / "img.png").exists()
    assert main([*argv, "--output", str(tmp_path / "b"), "--random-weights"]) == 0
    assert (tmp_path / "b" / "img.png").is_file()


@pytest.mark.parametrize("task", ["eval", "infer"])
def test_benchmarking_a_model_needs_weights_or_random_weights(setup, task):
    """Timing evaluation or inference of an untrained model must be asked for. Fails if the
    benchmark builds the model without the weights rule."""
    cfg = load_config(setup["config"])
    with pytest.raises(WeightsError, match="no weights to benchmark"):
        run_benchmark(cfg, task, iters=1, warmup=0, peaks=False)


@pytest.mark.parametrize(
    "extra, refused",
    [
        (["--eval-only"], "--eval-only with an empty train.init_checkpoint"),
        (["--random-weights"], "--random-weights applies to --eval-only"),
        (["--eval-only", "--random-weights"], None),
        (["--runtime", "onnxruntime"], "--runtime onnxruntime applies to --eval-only"),
        (
            [
                "--eval-only",
                "--random-weights",
                "--runtime",
                "onnxruntime",
                "+test.aug.enabled=True",
            ],
            "the test-time augmentation runs the eager model only",
        ),
        (["--eval-only", "--random-weights", "--runtime", "onnxruntime"], None),
    ],
)
def test_train_net_eval_only_needs_weights_or_random_weights(
    setup, extra, refused, monkeypatch, capsys
):
    """train_net.py --eval-only with an empty train.init_checkpoint stops before launching
    (exit 2, one line); --random-weights lets it evaluate an untrained model and means nothing
    without --eval-only; --runtime onnxruntime likewise, and not with the test-time augmentation
    (eager only). Fails if the check is skipped (launch is reached)."""
    train_net = load_script("train_net.py")
    launched = []
    monkeypatch.setattr(train_net, "launch_training", lambda *a: launched.append(a))
    monkeypatch.setattr(sys, "argv", ["train_net.py", "--config-file", setup["config"], *extra])
    if refused is None:
        train_net.invoke_main()
        assert len(launched) == 1 and launched[0][1].random_weights
        return
    with pytest.raises(SystemExit) as e:
        train_net.invoke_main()
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and refused in err and len(err.splitlines()) == 1
    assert not launched


def test_build_model_is_the_one_place_a_model_gets_its_weights(setup):
    """atss.engine.config.build_model: TRAINED loads train.init_checkpoint whole (the
    classifier bias 2.0 no initialisation gives) and returns an eval-mode model; it refuses an
    empty key and a backbone-only checkpoint with the key named; RANDOM loads nothing; NO_WEIGHTS
    (training: the checkpointer loads the start) loads nothing and keeps train mode; an unknown
    mode is refused. Fails if any mode loads the wrong thing or the refusals go."""
    from atss.engine.config import NO_WEIGHTS, RANDOM, TRAINED, build_model

    def bias(model):
        return model.head.cls_score.bias

    cfg = load_config(setup["config"], [f"train.init_checkpoint={setup['full']}"])
    model = build_model(cfg, TRAINED, "cpu")
    assert not model.training and torch.all(bias(model) == 2.0)
    for mode in (RANDOM, NO_WEIGHTS):
        model = build_model(cfg, mode, "cpu")
        assert not torch.any(bias(model) == 2.0)
        assert model.training == (mode == NO_WEIGHTS)
    for checkpoint in ("", setup["backbone"]):
        cfg.train.init_checkpoint = checkpoint
        with pytest.raises(WeightsError, match="train.init_checkpoint"):
            build_model(cfg, TRAINED, "cpu")
    with pytest.raises(ValueError, match="weights="):
        build_model(cfg, "pretrained", "cpu")
