#!/usr/bin/env bash
# Run the tests marked `cuda` (matcher, AMP training and evaluation, inference, TorchScript /
# ONNX export, 2-GPU NCCL training: CUDA against the CPU and eager) on a GPU machine, then print
# a table of test, outcome, seconds and detail (time, memory). Exit status: pytest's, non-zero
# if a test failed. Without CUDA it says so and exits 0, having run nothing.
#   scripts/gpu_check.sh                      # every `cuda` test
#   scripts/gpu_check.sh -k matcher -x        # pytest arguments select and stop as usual
#   ATSS_CUDA_TESTS_DEVICE=cpu scripts/gpu_check.sh   # the same tests against the CPU
# ATSS_PYTHON: interpreter (default: the repository's .venv/bin/python, else python).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -n "${ATSS_PYTHON:-}" ]]; then
    PY="${ATSS_PYTHON}"
elif [[ -x "${REPO}/.venv/bin/python" ]]; then
    PY="${REPO}/.venv/bin/python"
else
    PY=python
fi
cd "${REPO}"
if [[ "${ATSS_CUDA_TESTS_DEVICE:-cuda}" == cuda* ]]; then
    why=$("${PY}" -c 'import torch
built = torch.version.cuda or "none (a CPU-only build)"
if not torch.cuda.is_available():
    print(f"torch {torch.__version__}, CUDA build: {built}")')
    if [[ -n "${why}" ]]; then
        echo "gpu_check: CUDA is not available here (${why}): skipped every check, nothing was run."
        exit 0
    fi
fi
report="$(mktemp -d)/cuda_tests.xml"
status=0
"${PY}" -m pytest -q -m cuda -p no:cacheprovider -o junit_family=xunit1 --junitxml="${report}" \
    "$@" || status=$?
[[ -f "${report}" ]] && "${PY}" - "${report}" <<'EOF'
import sys
import xml.etree.ElementTree as ET

rows = []
for case in ET.parse(sys.argv[1]).iter("testcase"):
    name = f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}"
    outcome, detail = "passed", ""
    for tag, word in (("skipped", "skipped"), ("error", "ERROR"), ("failure", "FAILED")):
        found = case.find(tag)
        if found is not None:
            outcome, detail = word, (found.get("message") or "").splitlines()[0][:100]
    for prop in case.iter("property"):
        if prop.get("name") == "detail":
            detail = prop.get("value")
    rows.append((name, outcome, float(case.get("time", 0)), detail))
width = max([len(r[0]) for r in rows] + [4])
print(f"\n{'test':<{width}} | outcome | seconds | detail\n{'-' * (width + 40)}")
for name, outcome, seconds, detail in rows:
    print(f"{name:<{width}} | {outcome:<7} | {seconds:>7.1f} | {detail}")
EOF
exit "${status}"
