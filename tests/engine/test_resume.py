"""atss.engine.resume: the config identity a checkpoint records and the ``--resume`` check on
hand-written run folders (the train loop end to end: tests/test_train_net.py)."""

import logging
import os

import pytest
import torch

from atss.engine import AtomicDetectionCheckpointer, check_resume, config_identity


def _run_folder(path, recorded):
    """A run folder whose last checkpoint was written under ``recorded`` (None: no record)."""
    path.mkdir(parents=True, exist_ok=True)
    checkpointer = AtomicDetectionCheckpointer(
        torch.nn.Linear(2, 1), str(path), config_file=recorded or ""
    )
    checkpointer.save("model_0000009", iteration=9)
    return str(path)


def test_config_identity_is_the_same_in_every_checkout(tmp_path, monkeypatch):
    """Two clones (or two cluster nodes with the repository at different paths) name the same
    config alike, relative or absolute. Fails if the identity is the absolute path: every node
    but the one that wrote the checkpoint would refuse to resume."""
    for root in ["/home/a/atss", "/scratch/b/clone"]:
        path = f"{root}/configs/COCO/ablations/topk_3.py"
        assert config_identity(path) == "configs/COCO/ablations/topk_3.py"
    monkeypatch.chdir(tmp_path)
    assert config_identity("configs/Shapes/x.py") == "configs/Shapes/x.py"
    assert config_identity("./configs/../configs/Shapes/x.py") == "configs/Shapes/x.py"
    # Outside any configs/ folder: the absolute path (a file named configs.py is no folder).
    assert config_identity("mine/configs.py") == str(tmp_path / "mine" / "configs.py")


def test_resume_refuses_a_checkpoint_recorded_under_another_config(tmp_path):
    """Fails if check_resume compares anything weaker than the config's path under configs/
    (its file name alone: two folders may hold a file of the same name), or nothing."""
    out = _run_folder(tmp_path / "run", "configs/COCO/atss_R_50_FPN_1x.py")
    with pytest.raises(ValueError) as e:
        check_resume(out, "/elsewhere/configs/COCO/ablations/topk_3.py")
    message = str(e.value)
    assert "configs/COCO/atss_R_50_FPN_1x.py" in message
    assert "configs/COCO/ablations/topk_3.py" in message
    assert os.path.join(out, "model_0000009.pth") in message
    with pytest.raises(ValueError, match="configs/Custom/atss_R_50_FPN_1x.py"):
        check_resume(out, "configs/Custom/atss_R_50_FPN_1x.py")
    check_resume(out, "/another/clone/configs/COCO/atss_R_50_FPN_1x.py")  # same config: fine


def test_resume_without_a_checkpoint_or_record_is_not_refused(tmp_path, caplog):
    check_resume(str(tmp_path / "fresh"), "configs/COCO/atss_R_50_FPN_1x.py")  # no folder
    out = _run_folder(tmp_path / "old", None)  # written before checkpoints recorded a config
    logger = logging.getLogger("detectron2")  # may not propagate (Detectron2's setup_logger)
    logger.addHandler(caplog.handler)
    try:
        check_resume(out, "configs/COCO/atss_R_50_FPN_1x.py")
    finally:
        logger.removeHandler(caplog.handler)
    assert "does not record the config" in caplog.text
