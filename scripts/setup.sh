#!/usr/bin/env bash
# Set up from nothing: a virtual environment in .venv with mpi_infer, Open MPI (pip wheel) and test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[mpi,test]"
