#!/usr/bin/env bash
# Re-render the example manifests in this folder (tests check they match the renderer).
set -euo pipefail
cd "$(dirname "$0")/.."
M="python -m mpi_infer manifest"
$M --name isic-infer --namespace deephealth --workers 2 --slots 2 --image registry.example.org/mpi-infer:0.4.0 \
  --pvc isic-data --dataset /data/isic/isic_segmentation.yml --model /data/models/isic_segm_segnet.bin \
  --out /data/results/isic-run1 --nfs-server nfs.example.org --nfs-path /export/deephealth \
  --run-args "--split test --batch-size 8" -o manifests/mpijob-cpu.yaml
$M --name isic-infer-gpu --namespace deephealth --workers 2 --gpus-per-worker 1 \
  --image registry.example.org/mpi-infer-gpu:0.4.0 --pvc isic-data --dataset /data/isic/isic_segmentation.yml \
  --model /data/models/isic_segm_segnet.onnx --out /data/results/isic-gpu-run1 --cpu 4 --memory 8Gi \
  -o manifests/mpijob-gpu.yaml
$M --name isic-infer-ft --namespace deephealth --workers 4 --slots 1 --image registry.example.org/mpi-infer:0.4.0 \
  --pvc isic-data --dataset /data/isic/isic_segmentation.yml --model /data/models/isic_segm_segnet.onnx \
  --out /data/results/isic-ft-run1 --fault-tolerant --run-args "--split test --batch-size 8" \
  -o manifests/mpijob-cpu-fault-tolerant.yaml
$M --name isic-compare --namespace deephealth --workers 2 --slots 2 --image registry.example.org/mpi-infer:0.4.0 \
  --pvc isic-data --dataset /data/isic/isic_segmentation.yml --model segnet=/data/models/isic_segm_segnet.bin \
  --model unet=/data/models/unet.onnx --out /data/results/isic-compare \
  --image-pull-secret registry-creds --node-selector nodepool=cpu --toleration dedicated=imaging:NoSchedule \
  --label team=imaging --annotation owner=imaging-lab --run-args "--split test --ensemble mean" \
  -o manifests/mpijob-cpu-site.yaml
$M --name isic-queued --namespace deephealth --workers 4 --slots 2 --image registry.example.org/mpi-infer:0.4.0 \
  --pvc isic-data --dataset /data/isic/isic_segmentation.yml --model /data/models/isic_segm_segnet.bin \
  --out /data/results/isic-queued --queue kueue:imaging-queue --priority-class batch-low \
  --run-args "--split test --metrics-file /data/results/isic-queued.prom" -o manifests/mpijob-cpu-kueue.yaml
$M --name isic-gang --namespace deephealth --workers 4 --slots 2 --image registry.example.org/mpi-infer:0.4.0 \
  --pvc isic-data --dataset /data/isic/isic_segmentation.yml --model /data/models/isic_segm_segnet.bin \
  --out /data/results/isic-gang --queue volcano:imaging --network-policy -o manifests/mpijob-cpu-volcano.yaml
$M --kind indexed-job --name isic-parts --namespace deephealth --workers 4 --parallel 2 \
  --image registry.example.org/mpi-infer:0.4.0 --pvc isic-data --dataset /data/isic/isic_segmentation.yml \
  --model /data/models/isic_segm_segnet.bin --out /data/results/isic-parts --queue kueue:imaging-queue \
  --run-args "--split test --batch-size 8" -o manifests/indexed-job-cpu.yaml
$M --kind trainjob --name isic-trainer --namespace deephealth --workers 2 --slots 2 \
  --image registry.example.org/mpi-infer:0.4.0 --pvc isic-data --dataset /data/isic/isic_segmentation.yml \
  --model /data/models/isic_segm_segnet.bin --out /data/results/isic-trainer --queue kueue:imaging-queue \
  --run-args "--split test --batch-size 8" -o manifests/trainjob-cpu.yaml
