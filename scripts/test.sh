#!/usr/bin/env bash
# README command 2: set up, lint, and run the whole test suite (real mpirun with several ranks).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/system_deps.sh
source scripts/mpi_env.sh
ruff check mpi_infer scripts tests
python -m pytest "$@"
