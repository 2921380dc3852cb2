#!/usr/bin/env bash
# Every GPU check in one run of at most 8 minutes (bench/gpu_check.py; its --help lists them), from
# the repository root; one JSON line last. Without CUDA it is a dry run that says what it skips.
#   bench/gpu_check.sh [--checks sdpa,compile] [--cap compile=240] [--batch-size 16]
# The interpreter: $PYTHON if set, else the project's .venv, else python3 (a lent GPU machine's own
# torch). The project's packages are found through PYTHONPATH, so no install is needed beyond torch
# and the project's dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -n "${PYTHON:-}" ]]; then
    py=$PYTHON
elif [[ -x .venv/bin/python ]]; then
    py=.venv/bin/python
else
    py=python3
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$py" bench/gpu_check.py "$@"
