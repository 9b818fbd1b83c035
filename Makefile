# Entry points (see README.md):
#   make demo       — train and evaluate ATSS on the default real data (on the GPU if there is one)
#   make test       — lint + the whole test suite (what CI runs)
#   make test-fast  — the unit tier (tests not marked `slow`), for the edit loop
# Both create/refresh .venv (Python 3.10, pinned stack) on first use. A .venv that
# scripts/ensure_venv.sh did not build is used as it is, never rebuilt or removed (`make clean`
# included); `rm -rf .venv && make venv` hands it over.
SHELL := /bin/bash
PY := .venv/bin/python
LINT_PATHS := projects configs tests scripts tools $(wildcard *.py)
export PYTHONHASHSEED := 0

.PHONY: venv test test-fast lint pytest demo bench lock clean

venv:
	@scripts/ensure_venv.sh

lint: venv
	$(PY) -m flake8 $(LINT_PATHS)
	$(PY) -m isort --check-only --diff $(LINT_PATHS)
	$(PY) -m black --check --quiet $(LINT_PATHS)

pytest: venv
	$(PY) -m pytest -q --durations=15 tests

test: lint pytest

test-fast: venv
	$(PY) -m pytest -q -m "not slow" tests

format: venv
	$(PY) -m isort $(LINT_PATHS)
	$(PY) -m black --quiet $(LINT_PATHS)

demo: venv
	$(PY) tools/train_treecrowns_demo.py

bench: venv
	$(PY) tools/benchmark.py --task matcher --iters 5 --threads 2

# Re-resolve the lock file after editing requirements.txt.
lock:
	rm -rf /tmp/atss-lock && $$(scripts/find_python310.sh) -m venv /tmp/atss-lock
	/tmp/atss-lock/bin/pip install -q -r requirements.txt
	/tmp/atss-lock/bin/pip freeze | sed '1i # Lock file: exact versions resolved on Python 3.10 / linux x86_64 (pip freeze of a fresh .venv).\n# Regenerate with `make lock` after editing requirements.txt.' > constraints.txt

clean:
	@scripts/ensure_venv.sh --clean
	rm -rf output .cache
