"""atss.model_zoo: the configs of configs/ found through the package, in a checkout (through the
link atss/model_zoo/configs) and in a wheel installed into a fresh environment outside it."""

import glob
import json
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

from atss import model_zoo
from tests.atss_testing import REPO_ROOT

# A COCO, a Custom and the tree-crown config: relative imports of common/ pieces, one of them
# two levels deep (Custom -> COCO -> common).
CONFIGS = (
    "COCO/atss_R_50_FPN_1x.py",
    "Custom/atss_R_50_FPN_1x_coco_json.py",
    "TreeCrowns/atss_MNV2_FPN_treecrowns.py",
)


def _zoo_files(configs_dir):
    return sorted(
        os.path.relpath(p, configs_dir)
        for p in glob.glob(os.path.join(configs_dir, "**", "*.py"), recursive=True)
    )


def test_every_config_of_the_checkout_is_in_the_zoo():
    """Each configs/**.py is the zoo's file of that name (the same file, not a copy). Fails if
    the link atss/model_zoo/configs is missing or points elsewhere."""
    configs_dir = os.path.join(REPO_ROOT, "configs")
    for name in _zoo_files(configs_dir):
        assert os.path.samefile(model_zoo.get_config_file(name), os.path.join(configs_dir, name))


def test_get_config_composes_through_relative_imports():
    """The Custom R-50 config imports the COCO one, which imports common/: loaded from the zoo,
    it has the COCO recipe's schedule and its own output folder."""
    cfg = model_zoo.get_config("Custom/atss_R_50_FPN_1x_coco_json.py")
    assert cfg.train.max_iter == 90000
    assert cfg.train.output_dir == "./output/Custom/atss_R_50_FPN_1x_coco_json"


def test_an_unknown_config_names_the_zoo_and_an_example():
    with pytest.raises(FileNotFoundError, match=r"'COCO/nope\.py' is not in atss's config zoo"):
        model_zoo.get_config("COCO/nope.py")


LOAD = """
import json, sys
import atss
from atss import model_zoo
out = {"atss": atss.__file__, "zoo": model_zoo.get_config_file("COCO/atss_R_50_FPN_1x.py")}
for name in sys.argv[1:]:
    cfg = model_zoo.get_config(name)
    out[name] = [cfg.train.max_iter, cfg.dataloader.train.dataset.names]
print(json.dumps(out))
"""


@pytest.mark.slow
def test_the_wheel_carries_the_configs_into_an_environment_without_a_checkout(tmp_path):
    """Build the wheel (from a copy of the checkout), install it into a fresh venv outside the
    checkout that sees the test environment's packages but not its editable atss, and load a
    COCO, a Custom and the tree-crown config there with ``atss.model_zoo``. Fails if
    package_data leaves a config out, if the link is packaged as a link (a dangling one in the
    wheel) or if a config needs the checkout at load time; and checks that ``atss`` came from
    the wheel, not the checkout."""
    source = tmp_path / "source"  # pip builds in the source folder: not in the checkout
    source.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(os.path.join(REPO_ROOT, name), source / name)
    for name in ("configs", "projects"):
        shutil.copytree(
            os.path.join(REPO_ROOT, name),
            source / name,
            symlinks=True,
            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
        )
    run = dict(capture_output=True, text=True, timeout=600, check=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist",
                    source], cwd=tmp_path, **run)  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("*.whl")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], **run)
    python = venv / "bin" / "python"
    subprocess.run([*pip, "--python", python, "install", "--no-deps", "--no-index", wheel], **run)
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], **run
    ).stdout.strip()
    # The test environment's packages (torch, detectron2, ...) after the venv's own, where the
    # wheel's atss is; a folder named in a .pth file gets no .pth processing of its own, so
    # the editable install's path to the checkout is not added.
    with open(os.path.join(site, "test_env.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([python, "-c", LOAD, *CONFIGS], cwd=tmp_path, env=env, **run)
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    installed = os.path.join(site, "atss", "model_zoo", "configs")
    assert loaded["atss"] == os.path.join(site, "atss", "__init__.py")
    assert loaded["zoo"] == os.path.join(installed, "COCO", "atss_R_50_FPN_1x.py")
    assert not os.path.islink(installed)
    assert _zoo_files(installed) == _zoo_files(os.path.join(REPO_ROOT, "configs"))
    for name in CONFIGS:  # the same configs as the checkout's
        cfg = model_zoo.get_config(name)
        assert loaded[name] == [cfg.train.max_iter, cfg.dataloader.train.dataset.names], name
