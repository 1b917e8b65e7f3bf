#!/usr/bin/env bash
# README command 1: set up, generate a synthetic demo dataset, run the shipped demo model on it with 2 MPI
# ranks, and print the summary. Usage: scripts/demo.sh [RANKS] [IMAGES] [segmentation|classification|volumes]
#   segmentation (default): lesion masks, the shipped EDDL .bin SegNet, Dice/IoU
#   classification: three lesion classes, the shipped EDDL .bin LeNet, accuracy/F1/confusion matrix
#   volumes: IMAGES synthetic CT volumes (per-slice DICOM series, NIfTI labels; default 20), the threshold model
#     synth writes beside them, Dice per slice and per volume (per_volume.csv), per patient (DICOM PatientID)
set -euo pipefail
cd "$(dirname "$0")/.."
RANKS=${1:-2}
TASK=${3:-segmentation}
IMAGES=${2:-$([ "$TASK" = volumes ] && echo 20 || echo 200)}
SYNTH=(--task "$TASK")
case "$TASK" in
  segmentation) MODEL=demo; EXTRA=(--save-masks) ;;
  classification) MODEL=demo-classifier; EXTRA=() ;;
  volumes) MODEL=demo/data/model.onnx; SYNTH=(--preset ct)
    EXTRA=(--profile kidney-seg --patient-by dicom:PatientID) ;;
  *) echo "usage: scripts/demo.sh [RANKS] [IMAGES] [segmentation|classification|volumes]" >&2; exit 2 ;;
esac
bash scripts/setup.sh
source scripts/mpi_env.sh
rm -rf demo
mpi_infer synth demo/data --n "$IMAGES" --seed 2026 "${SYNTH[@]}"
mpirun -n "$RANKS" python -m mpi_infer run --dataset demo/data/dataset.yml --model "$MODEL" \
  --out demo/out --split all --report "${EXTRA[@]}"
echo "demo: results in demo/out (summary.json, per_image.csv, report.html$([ "$TASK" = segmentation ] && echo ', masks/')$([ "$TASK" = volumes ] && echo ', per_volume.csv, patients.csv'))"
