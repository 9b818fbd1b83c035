#!/usr/bin/env bash
# Check the CUDA paths (matcher, AMP training, inference, TorchScript/ONNX export, 2-GPU NCCL)
# in a few minutes on a GPU machine; see tools/gpu_check.py. Prints a summary table; exit
# status 1 if a check failed. Without CUDA: says so and exits 0, having run nothing.
#   scripts/gpu_check.sh                       # everything
#   scripts/gpu_check.sh --skip nccl_2gpu      # names as in the table
#   scripts/gpu_check.sh --device cpu --cases 8 --gts 100 --steps 1   # smoke test on a CPU
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
export PYTHONPATH="${REPO}/projects/ATSS:${REPO}${PYTHONPATH:+:${PYTHONPATH}}"
cd "${REPO}"
exec "${PY}" tools/gpu_check.py "$@"
