#!/usr/bin/env bash
# README command 2: set up, lint, and run the whole test suite (real mpirun with several ranks).
# Where the DeepHealth build kit sits beside the checkout (../shared/deephealth, as in this project's CI), the
# real pyecvl/pyeddl are built (once; cached in /opt/deephealth-kit) and installed into .venv first, so the
# ECVL loader and EDDL engine tests run; on a clone without it they skip and say why.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/system_deps.sh
KIT=${DEEPHEALTH_KIT:-../shared/deephealth/build.sh}
if [ -f "$KIT" ]; then
  start=$(date +%s)
  bash "$KIT" --python .venv/bin/python
  echo "deephealth kit: pyecvl/pyeddl ready in $(( $(date +%s) - start )) s"
fi
source scripts/mpi_env.sh
ruff check mpi_infer scripts tests
python -m pytest "$@"
