"""scripts/ensure_venv.sh (what `make venv`, `make test` and `make clean` run) on fake .venv
folders in a temporary copy of the repository's build files: a fake Python 3.10 records what
the script runs and "creates" a venv holding a copy of itself. The real .venv is never touched.

The rule: build when there is no .venv (a fresh clone, as in CI); refresh or remove only a .venv
the script built (it holds .venv/.stamp, as every version of the script wrote, or the marker
.venv/.ensure_venv written before a build starts); leave any other .venv alone, saying how to
hand it over (`rm -rf .venv && make venv`)."""

import hashlib
import os
import shutil
import stat
import subprocess
import textwrap

import pytest

pytestmark = pytest.mark.slow  # each test runs the script (bash) in a process

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KEY_FILES = [  # what the script hashes, in its order
    "requirements.txt",
    "requirements-base.txt",
    "constraints.txt",
    "requirements-nodeps.txt",
    "setup.cfg",
    "pyproject.toml",
]
HAND_OVER = "rm -rf .venv && make venv"


def _executable(path, text):
    path.write_text(textwrap.dedent(text))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def repo(tmp_path):
    """A folder with a copy of scripts/ensure_venv.sh, the files of its key (placeholder text)
    and a scripts/find_python310.sh naming the fake interpreter ``python3.10-fake``, which
    appends its arguments to ``calls.log`` and fails a ``pip install`` when ``FAKE_PIP_FAILS``
    is set."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(os.path.join(ROOT, "scripts", "ensure_venv.sh"), tmp_path / "scripts")
    for name in KEY_FILES:
        (tmp_path / name).write_text(f"placeholder {name}\n")
    log = tmp_path / "calls.log"
    _executable(
        tmp_path / "python3.10-fake",
        f"""\
        #!/usr/bin/env bash
        echo "$*" >> {log}
        if [ "$1 $2" = "-m venv" ]; then mkdir -p "$3/bin" && cp "$0" "$3/bin/python"; fi
        if [ "$1 $2 $3" = "-m pip install" ] && [ -n "${{FAKE_PIP_FAILS:-}}" ]; then exit 1; fi
        exit 0
        """,
    )
    _executable(
        tmp_path / "scripts" / "find_python310.sh",
        f"""\
        #!/usr/bin/env bash
        echo {tmp_path / "python3.10-fake"}
        """,
    )
    return tmp_path


def _key(repo):
    """The script's key, computed here: the first 16 hex digits of the sha256 of the key files
    concatenated."""
    data = b"".join((repo / name).read_bytes() for name in KEY_FILES)
    return hashlib.sha256(data).hexdigest()[:16]


def _run(repo, *args, **env):
    return subprocess.run(
        ["bash", str(repo / "scripts" / "ensure_venv.sh"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
    )


def _calls(repo):
    log = repo / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


def _venv(repo, *files, python=True):
    """A .venv holding ``files`` (name -> text), a ``bin/python`` if asked, and a canary."""
    venv = repo / ".venv"
    (venv / "bin").mkdir(parents=True)
    if python:
        _executable(venv / "bin" / "python", "#!/usr/bin/env bash\nexit 0\n")
    (venv / "canary").write_text("a package the user installed")
    for name, text in files:
        (venv / name).write_text(text)
    return venv


def test_a_fresh_clone_gets_a_venv_built(repo):
    """CI runs `make test` on a fresh clone. Fails if a missing .venv is taken for one the
    script did not build (nothing would be installed)."""
    result = _run(repo)
    assert result.returncode == 0, result.stderr
    assert (repo / ".venv" / ".stamp").read_text().strip() == _key(repo)
    calls = _calls(repo)
    assert calls[0] == "-m venv .venv"
    assert "-m pip install -q -r requirements.txt -c constraints.txt" in calls
    assert "-m pip check" in calls


def test_a_venv_the_script_did_not_build_is_used_as_it_is(repo):
    """A .venv built by hand (e.g. for a cluster's torch/CUDA stack) has neither .stamp nor the
    marker. Fails if the script deletes and rebuilds it (as it did before: any .venv without a
    matching stamp was rm -rf'ed)."""
    venv = _venv(repo)
    result = _run(repo)
    assert result.returncode == 0, result.stderr
    assert (venv / "canary").exists() and not (venv / ".stamp").exists()
    assert _calls(repo) == []  # no interpreter found, no venv created, nothing installed
    assert "not built by scripts/ensure_venv.sh" in result.stderr
    assert HAND_OVER in result.stderr


def test_a_foreign_venv_without_python_is_an_error_that_says_how_to_rebuild(repo):
    venv = _venv(repo, python=False)
    result = _run(repo)
    assert result.returncode == 1
    assert "no bin/python" in result.stderr and HAND_OVER in result.stderr
    assert (venv / "canary").exists() and _calls(repo) == []


@pytest.mark.parametrize("marker", [".stamp", ".ensure_venv"])
def test_a_stale_venv_of_the_script_is_rebuilt(repo, marker):
    """A .venv built by an older ensure_venv.sh holds only .stamp (with the key of its day);
    one of this version, the marker too. Fails if ownership were read from the marker alone
    (every existing .venv of the project would be frozen at its old lock file)."""
    venv = _venv(repo, (marker, "0123456789abcdef\n"))
    result = _run(repo)
    assert result.returncode == 0, result.stderr
    assert not (venv / "canary").exists()
    assert (venv / ".stamp").read_text().strip() == _key(repo)
    assert _calls(repo)[0] == "-m venv .venv"


def test_an_up_to_date_venv_is_left_as_it_is(repo):
    venv = _venv(repo, (".stamp", _key(repo) + "\n"))
    result = _run(repo)
    assert result.returncode == 0, result.stderr
    assert (venv / "canary").exists() and _calls(repo) == []


def test_an_interrupted_build_is_still_the_scripts_own(repo):
    """A build that fails half-way leaves a .venv without .stamp. Fails if the marker is not
    written before the build starts: the next `make` would then refuse its own .venv."""
    assert _run(repo, FAKE_PIP_FAILS="1").returncode != 0
    assert (repo / ".venv").is_dir() and not (repo / ".venv" / ".stamp").exists()
    result = _run(repo)
    assert result.returncode == 0, result.stderr
    assert (repo / ".venv" / ".stamp").read_text().strip() == _key(repo)


def test_clean_removes_only_a_venv_the_script_built(repo):
    """`make clean` runs `ensure_venv.sh --clean`. Fails if it removes a hand-built .venv."""
    venv = _venv(repo)
    result = _run(repo, "--clean")
    assert result.returncode == 0 and (venv / "canary").exists()
    assert HAND_OVER in result.stderr
    (venv / ".stamp").write_text(_key(repo) + "\n")
    assert _run(repo, "--clean").returncode == 0
    assert not venv.exists()
