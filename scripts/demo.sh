#!/usr/bin/env bash
# README command 1: set up, generate the synthetic demo dataset, run the shipped EDDL .bin model on it
# with 2 MPI ranks, and print the summary. Usage: scripts/demo.sh [RANKS] [IMAGES]
set -euo pipefail
cd "$(dirname "$0")/.."
RANKS=${1:-2}
IMAGES=${2:-200}
bash scripts/setup.sh
source scripts/mpi_env.sh
rm -rf demo
mpi_infer synth demo/data --n "$IMAGES" --seed 2026
mpirun -n "$RANKS" python -m mpi_infer run --dataset demo/data/dataset.yml --model demo --arch segnet \
  --out demo/out --split all --save-masks --report
echo "demo: results in demo/out (summary.json, per_image.csv, masks/, report.html)"
