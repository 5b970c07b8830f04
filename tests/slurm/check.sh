#!/bin/bash
# The real-Slurm check of the sweep tool: starts a single-node Slurm with accounting (as root,
# tests/slurm/start_slurm.sh; it says why when Slurm cannot start), then runs the tests marked
# `slurm` (tests/test_slurm_cluster.py) with their output shown.
#
#     sudo tests/slurm/check.sh [--python=/path/to/venv/bin/python]
set -u
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-.venv/bin/python}
for arg in "$@"; do case $arg in --python=*) PYTHON=${arg#--python=} ;; esac; done
[ -x "$PYTHON" ] || { echo "No Python at $PYTHON (give --python=.../bin/python)" >&2; exit 1; }
bash tests/slurm/start_slurm.sh || exit 1
PYTHONPATH="$PWD" exec "$PYTHON" -m pytest --slurm -s -v tests/test_slurm_cluster.py
