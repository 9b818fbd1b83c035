"""Nothing written that a run does not read (issue 21, item 3): importing atss and loading any
config (atss.engine.config.load_config) write no file and register none of the project's
datasets; a dataset's files are written into the cache when it is first read."""

import glob
import os

from tests.atss_testing import REPO_ROOT as ROOT
from tests.atss_testing import coco_json_overrides, run_python, write_coco_example

CONFIGS = sorted(glob.glob("configs/**/*.py", recursive=True, root_dir=ROOT))

# Imports atss (all subpackages) and loads every config through load_config, then prints the
# datasets registered beyond Detectron2's own.
LOAD_EVERYTHING = """
import sys
from detectron2.data import DatasetCatalog

builtin = set(DatasetCatalog.list())
import atss, atss.data, atss.engine, atss.evaluation, atss.inference, atss.modeling  # noqa
imported = set(DatasetCatalog.list()) - builtin
print("after import:", sorted(imported))
from atss.engine.config import load_config

opts = sys.argv[1].split()
for path in sys.argv[2:]:
    load_config(path, opts if "coco_json" in path else [])
print("after loading:", sorted(set(DatasetCatalog.list()) - builtin))
"""


def _files_under(folder):
    return sorted(
        os.path.relpath(os.path.join(d, f), folder)
        for d, dirs, files in os.walk(folder)
        for f in files
        if "__pycache__" not in d
    )


def test_importing_atss_and_loading_every_config_writes_no_file(tmp_path):
    """In a fresh process with an empty home and no $ATSS_CACHE, importing atss and loading
    every config under configs/ (those with a dataset node given the four dataset overrides)
    registers only custom_train/custom_test and writes nothing: not in the user cache, not in
    the checkout. Fails if load_config builds the shapes or tree crowns again (it wrote
    181 PNGs into .cache/ of the checkout), or if the cache defaults into the checkout."""
    data = write_coco_example(str(tmp_path / "data"), 2, 1, size=(64, 96))
    opts = coco_json_overrides(data)
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("ATSS_CACHE", "XDG_CACHE_HOME")}
    env.update(HOME=str(home), PYTHONDONTWRITEBYTECODE="1")
    checkout_before = _files_under(ROOT)
    run = run_python(LOAD_EVERYTHING, " ".join(opts), *CONFIGS, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "after import: []" in run.stdout
    assert "after loading: ['custom_test', 'custom_train']" in run.stdout
    assert _files_under(home) == []
    assert _files_under(ROOT) == checkout_before
