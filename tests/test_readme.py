"""The README as a newcomer meets it: at most 300 lines, the own-data commands within its first
80, and its three Python snippets ("Using a trained model from Python": a predictor from a run
folder, tiled prediction of a large image, the exported ONNX file in onnxruntime), each at most
10 lines and run as written against the example run (tests/conftest.py)."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from detectron2.data.detection_utils import read_image
from PIL import Image

from atss.engine.config import load_config
from atss.engine.predictor import ATSSPredictor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON_SECTION = "## Using a trained model from Python"
RUN = os.path.join("output", "mine")  # the snippets' run folder, relative to where they run
ATOL = 1e-4  # tests/test_export.py's ONNX tolerance


def _readme_lines():
    with open(os.path.join(ROOT, "README.md")) as f:
        return f.read().splitlines()


def _snippets():
    """The fenced python blocks of the README's "from Python" section, in order."""
    text = "\n".join(_readme_lines())
    section = text[text.index(PYTHON_SECTION) :]
    section = section[: section.index("\n## ")]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_readme_fits_300_lines_with_the_own_data_commands_in_the_first_80():
    """The whole README <= 300 lines; "Your own data"'s command block (validate, train,
    evaluate, predict on images and on a large image with tiles, export: six commands) ends
    within line 80. Fails if the README grows back into a notebook or the own-data commands
    move down or lose a step."""
    lines = _readme_lines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines"
    start = lines.index("```bash", lines.index("## Your own data"))
    end = lines.index("```", start + 1)
    assert end < 80, f"the own-data commands end at line {end + 1}"
    commands = [line for line in lines[start:end] if line.startswith(".venv/bin/python ")]
    assert len(commands) <= 6
    steps = [
        "tools/validate_dataset.py",
        "train_net.py",
        "--eval-only",
        "demo.py",
        "--tile-size",
        "tools/export_model.py",
    ]
    assert all(any(step in command for command in commands) for step in steps), commands


def test_the_python_snippets_are_three_of_at_most_10_lines():
    """Fails if a snippet grows past 10 lines or the section loses or gains one (the tests below
    take them by position)."""
    snippets = _snippets()
    assert len(snippets) == 3
    assert [len(s.splitlines()) <= 10 for s in snippets] == [True] * 3, snippets


@pytest.fixture(scope="module")
def work(example_run, tmp_path_factory):
    """A folder holding the snippets' inputs: ``output/mine``, the example run (its training data
    gone: tests/conftest.py), ``photo.png`` (one of the example's images, not square) and
    ``big.npy`` (an RGB mosaic of it, larger than two tiles a side)."""
    work = tmp_path_factory.mktemp("readme")
    os.symlink(os.path.dirname(example_run.folder), work / "output")
    files = [os.path.join(example_run.data["image_root"], f"{i:06d}.png") for i in range(8)]
    photos = (read_image(f, format="RGB") for f in files)
    photo = next(p for p in photos if p.shape[0] != p.shape[1])  # not square
    Image.fromarray(photo).save(work / "photo.png")
    np.save(work / "big.npy", np.tile(photo, (20, 20, 1))[:1100, :1300])
    return work


def _predictor(work):
    folder = str(work / RUN)
    opts = [f"train.init_checkpoint={os.path.join(folder, 'model_final.pth')}"]
    return ATSSPredictor(load_config(os.path.join(folder, "config.yaml"), opts))


def _run_in(work, code, monkeypatch):
    """Run ``code`` with ``work`` as the current folder; returns its namespace."""
    monkeypatch.chdir(work)
    namespace = {"__name__": "__readme__"}
    exec(compile(code, "README.md", "exec"), namespace)
    return namespace


@pytest.mark.slow
def test_the_predictor_snippet_prints_the_run_folders_detections(work, monkeypatch, capsys):
    """Snippet 1 prints one line per detection of photo.png: the class id and name of the run's
    classes.json, the score, the box in the image's pixels, as the predictor built from the
    run folder finds them. Fails if the snippet no longer runs against the API or the run folder
    (config.yaml, model_final.pth, classes.json) or prints other detections."""
    found = _run_in(work, _snippets()[0], monkeypatch)["found"]
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    predictor = _predictor(work)
    expected = predictor(read_image(str(work / "photo.png"), format=predictor.input_format))
    with open(work / RUN / "classes.json") as f:
        classes = json.load(f)["classes"]
    assert len(rows) == len(expected) == len(found) > 0
    names = [(str(classes[c]["id"]), classes[c]["name"]) for c in expected.pred_classes.tolist()]
    assert [tuple(row[:2]) for row in rows] == names
    got = torch.tensor([[float(v) for v in row[2:]] for row in rows])
    torch.testing.assert_close(got[:, 0], expected.scores.cpu(), rtol=0, atol=1e-6)
    torch.testing.assert_close(got[:, 1:], expected.pred_boxes.tensor.cpu(), rtol=0, atol=1e-4)


@pytest.mark.slow
def test_the_tiled_snippet_finds_what_the_tiled_predictor_finds_in_memory(work, monkeypatch):
    """Snippet 2 reads big.npy a tile at a time (1100 x 1300 px: 3 x 3 tiles of 512) and gives
    the detections of a predictor tiled the same way on the whole array in memory, in the
    model's channel order, with boxes over the whole image. Fails if the snippet no longer runs,
    or tiles otherwise than it says (another tile size or overlap, no tiling)."""
    found = _run_in(work, _snippets()[1], monkeypatch)["found"]
    predictor = _predictor(work)
    predictor.tile(512, overlap=64)
    image = np.load(work / "big.npy")
    if predictor.input_format == "BGR":
        image = np.ascontiguousarray(image[:, :, ::-1])
    expected = predictor(image).to("cpu")
    assert len(found) == len(expected) > 0
    torch.testing.assert_close(found.scores, expected.scores, rtol=0, atol=0)
    torch.testing.assert_close(found.pred_boxes.tensor, expected.pred_boxes.tensor, rtol=0, atol=0)
    boxes = found.pred_boxes.tensor
    assert (boxes >= 0).all() and (boxes[:, 2] <= 1300).all() and (boxes[:, 3] <= 1100).all()
    assert (boxes[:, 2] > 512).any() or (boxes[:, 3] > 512).any()  # beyond the first tile


@pytest.mark.slow
def test_the_onnx_snippet_gives_the_eager_detections_without_atss(work, example_export):
    """Snippet 3 on the export of tools/export_model.py --run (model.onnx and model.json), run
    as written in a process where neither atss nor detectron2 is imported (onnxruntime, numpy,
    PIL and model.json only), gives the eager predictor's detections on photo.png (not square):
    boxes in the image's pixels and scores within 1e-4, the same classes. Fails if model.json
    misstates the resize, or if the snippet is edited wrongly (the resize or the box scale
    taken from the wrong side, no resize)."""
    code = "import sys\n" + _snippets()[2]
    code += "assert 'atss' not in sys.modules and 'detectron2' not in sys.modules\n"
    code += "print(json.dumps([boxes.tolist(), classes.tolist(), scores.tolist()]))\n"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=work, capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    boxes, classes, scores = json.loads(result.stdout.splitlines()[-1])

    predictor = _predictor(work)
    image = read_image(str(work / "photo.png"), format=predictor.input_format)
    expected = predictor(image).to("cpu")
    assert len(scores) == len(expected) > 0
    assert classes == expected.pred_classes.tolist()
    np.testing.assert_allclose(scores, expected.scores.numpy(), rtol=0, atol=ATOL)
    np.testing.assert_allclose(boxes, expected.pred_boxes.tensor.numpy(), rtol=0, atol=ATOL)
