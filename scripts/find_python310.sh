#!/usr/bin/env bash
# Print the path of a working Python 3.10 interpreter (detectron2's prebuilt wheel needs 3.10).
# Order: $PYTHON310 if set, `python3.10` on PATH (pyenv shims may exist but be inactive, so the
# interpreter is actually run), then pyenv's install folder.
set -u
try() { [ -n "$1" ] && "$1" -c 'import sys; assert sys.version_info[:2] == (3, 10)' >/dev/null 2>&1 && { echo "$1"; exit 0; }; }
try "${PYTHON310:-}"
try "$(command -v python3.10 2>/dev/null)"
for p in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.10.*/bin/python3.10 /usr/bin/python3.10 /usr/local/bin/python3.10; do
  try "$p"
done
echo "error: no Python 3.10 interpreter found (tried \$PYTHON310, python3.10 on PATH," \
     "\$HOME/.pyenv/versions/3.10.*). Install one, e.g. 'pyenv install 3.10', or set PYTHON310=/path/to/python3.10." >&2
exit 1
