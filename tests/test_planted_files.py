"""No entry point or tool runs a planted file. A weights file (``.pth``, ``.pkl``) whose
unpickling would create a marker file, given to every command that reads weights, and a run's
``config.yaml`` with a Python tag that would, given to every command that reads a config, are
refused with one line naming the file (exit status 2; ``validate_dataset.py`` reports it as a
failed check, status 1) and the marker never appears. Each command runs in this process, as
``main(argv)`` (``train_net.py``: ``invoke_main()`` under its command line). The readers
themselves, and the legitimate files they load: tests/test_fileio.py."""

import sys

import pytest
from detectron2.config import LazyConfig

from tests import payloads
from tests.atss_testing import load_script

CONFIG = "configs/Shapes/atss_tiny_shapes.py"
TRAIN = ["train.max_iter=1", "dataloader.train.num_workers=0", "train.output_dir={out}"]
WEIGHTS = "train.init_checkpoint={weights}"

# The command lines given a planted weights file ({weights}); {out} is an empty folder, {run}
# one whose last_checkpoint names the file.
WEIGHTS_READERS = {
    "train_net.py: training start": ["--config-file", CONFIG, *TRAIN, WEIGHTS],
    "train_net.py --eval-only": ["--config-file", CONFIG, "--eval-only", *TRAIN, WEIGHTS],
    "train_net.py --resume": ["--config-file", CONFIG, "--resume", "train.output_dir={run}"],
    "demo.py": ["--config-file", CONFIG, "--input", "x.jpg", "--output", "{out}", WEIGHTS],
    "tools/export_model.py": ["--config-file", CONFIG, "--output", "{out}", WEIGHTS],
    "tools/benchmark.py": ["--config-file", CONFIG, "--task", "infer", "--iters", "1", WEIGHTS],
    "tools/convert_checkpoint.py": ["{weights}", "{out}/converted.pth"],
}
# The command lines given a run folder ({run}) whose config.yaml is planted.
CONFIG_READERS = {
    "train_net.py": ["--config-file", "{run}/config.yaml"],
    "demo.py": ["--run", "{run}", "--input", "x.jpg", "--output", "{out}"],
    "tools/export_model.py": ["--run", "{run}", "--output", "{out}"],
    "tools/benchmark.py": ["--config-file", "{run}/config.yaml", "--task", "infer"],
    "tools/validate_dataset.py": ["--config-file", "{run}/config.yaml"],
}


def _run(command, argv, monkeypatch):
    """The exit status of the script that ``command`` names, run on ``argv`` in this process."""
    script = command.split(" ")[0].rstrip(":")
    module = load_script(script)
    try:
        if script == "train_net.py":
            monkeypatch.setattr(sys, "argv", [script, *argv])
            module.invoke_main()
            return 0
        return module.main(argv)
    except SystemExit as e:
        return e.code


def _refusals(capsys, caplog, path):
    """The lines of stdout, stderr and the log that refuse the file ``path``."""
    captured = capsys.readouterr()
    text = "\n".join([captured.out, captured.err, *(r.getMessage() for r in caplog.records)])
    return [line for line in text.splitlines() if f"{path}: refused" in line]


@pytest.mark.parametrize("kind", ["pth", "pkl"])
@pytest.mark.parametrize("command", sorted(WEIGHTS_READERS))
def test_a_planted_weights_file_is_refused_by_every_command(
    tmp_path, monkeypatch, capsys, caplog, command, kind
):
    """Fails for any command whose weights reach a trusting reader: Detectron2's checkpointer
    (torch.load before torch 2.6, pickle.load of every .pkl), torch.load in the --resume check
    or the converter."""
    marker, out, run = tmp_path / "marker", tmp_path / "out", tmp_path / "run"
    out.mkdir()
    run.mkdir()
    if kind == "pth":
        weights = payloads.planted_checkpoint(run / "evil.pth", marker)
    else:
        weights = payloads.planted_model_zoo_pkl(run / "evil.pkl", marker)
    (run / "last_checkpoint").write_text(weights.name)
    argv = [a.format(weights=weights, out=out, run=run) for a in WEIGHTS_READERS[command]]
    status = _run(command, argv, monkeypatch)
    assert not marker.exists()
    refusals = _refusals(capsys, caplog, weights)
    assert status == 2 and refusals and payloads.OPENS in refusals[0], (status, refusals)


@pytest.fixture(scope="module")
def saved_config(tmp_path_factory):
    """The text of the config.yaml a run of CONFIG saves."""
    path = tmp_path_factory.mktemp("saved") / "config.yaml"
    LazyConfig.save(LazyConfig.load(CONFIG), str(path))
    return path.read_text()


@pytest.mark.parametrize("command", sorted(CONFIG_READERS))
def test_a_planted_run_config_is_refused_by_every_command(
    tmp_path, monkeypatch, capsys, caplog, saved_config, command
):
    """Fails for any command whose config reaches Detectron2's LazyConfig.load, which reads a
    .yaml file with yaml.unsafe_load."""
    marker, out, run = tmp_path / "marker", tmp_path / "out", tmp_path / "run"
    out.mkdir()
    run.mkdir()
    config = payloads.planted_config(run / "config.yaml", marker, saved_config)
    (run / "model_final.pth").write_bytes(b"")  # --run needs one; never read
    argv = [a.format(out=out, run=run) for a in CONFIG_READERS[command]]
    status = _run(command, argv, monkeypatch)
    assert not marker.exists()
    refusals = _refusals(capsys, caplog, config)
    expected = 1 if command == "tools/validate_dataset.py" else 2
    assert status == expected and refusals, (status, refusals)
    assert "!!python/object/apply:builtins.open" in refusals[0]
