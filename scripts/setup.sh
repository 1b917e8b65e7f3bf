#!/usr/bin/env bash
# Set up from nothing: a virtual environment in .venv with mpi_infer, Open MPI (pip wheel) and test tools.
# Where $PYTHON (default python3) already imports pyecvl and pyeddl (a DeepHealth image, a site's own build),
# the venv is made with --system-site-packages so the ECVL loader and EDDL engine are used and tested.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  # Inside a DeepHealth environment (pyecvl/pyeddl installed for $PYTHON), the venv sees them.
  if "$PYTHON" -c "import pyecvl.ecvl, pyeddl.eddl" >/dev/null 2>&1; then
    "$PYTHON" -m venv --system-site-packages .venv
  else
    "$PYTHON" -m venv .venv
  fi
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[mpi,test]"
