#!/usr/bin/env bash
# README command 2: set up, lint, and run the whole test suite (real mpirun with several ranks).
# The ECVL loader and EDDL engine tests run where pyecvl/pyeddl import (a site's DeepHealth image, or the user's
# own install into the Python that runs this); elsewhere they skip and say why. Inside a DeepHealth environment,
# MPI_INFER_REQUIRE_ECVL=1 bash scripts/test.sh turns such a skip into a failure, to check the site's stack.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/system_deps.sh
source scripts/mpi_env.sh
ruff check mpi_infer scripts tests
python -m pytest "$@"
