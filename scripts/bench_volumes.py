#!/usr/bin/env python3
"""Figures for volumes (docs/medical-images.md), measured in one run on this machine:
- the per-slice read cost of a DICOM series against the same slices as 16-bit PNG (both decoded to the same
  int16 values);
- a NIfTI volume read once for all its slices (the rank's cache) against once per slice;
- the whole command, N=2 against N=1, on a 20-volume synthetic CT set;
- the peak RSS per rank on one 512x512x300 series (a rank holds one volume at a time).

    .venv/bin/python scripts/bench_volumes.py        # JSON lines
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import cv2
import nibabel as nib
import numpy as np

from mpi_infer.data.synth import SynthSpec
from mpi_infer.data.synth_volumes import make_volume_dataset
from mpi_infer.loaders.medical import read_dicom, read_nifti_volume
from mpi_infer.loaders.volumes import VolumeCache, read_slice

MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "PRTE_MCA_rmaps_default_mapping_policy": ":oversubscribe", "MPIEXEC_TIMEOUT": "1200"}


def emit(**values) -> None:
    print(json.dumps(values), flush=True)


def run(n: int, dataset: str, model: str, out: str, size: int) -> tuple[float, dict]:
    mpirun = os.path.join(os.path.dirname(sys.executable), "mpirun")
    t0 = time.perf_counter()
    subprocess.run([mpirun, "-n", str(n), sys.executable, "-m", "mpi_infer", "run", "--dataset", dataset, "--model",
                    model, "--profile", "kidney-seg", "--size", str(size), str(size), "--out", out, "--split", "all",
                    "--quiet"], check=True, env={**os.environ, **MPI_ENV})
    wall = time.perf_counter() - t0
    with open(os.path.join(out, "summary.json")) as fh:
        return wall, json.load(fh)


def main() -> int:
    work = tempfile.mkdtemp(prefix="mi-bench-vol-")
    data = os.path.join(work, "ct")
    dataset = make_volume_dataset(data, SynthSpec(n=20, seed=1), "ct", size=256, slices=(24, 32))
    # 1. a DICOM series against the same slices as 16-bit PNG
    first = sorted(os.listdir(os.path.join(data, "ct")))[0]
    series_dir = os.path.join(data, "ct", first)
    vol_dir = os.path.join(series_dir, sorted(os.listdir(series_dir))[0])
    files = sorted(os.path.join(vol_dir, f) for f in os.listdir(vol_dir))
    pngs = []
    for k, f in enumerate(files):
        png = os.path.join(work, f"slice{k:03d}.png")
        cv2.imwrite(png, (read_dicom(f, []).astype(np.int32) + 1024).astype(np.uint16))
        pngs.append(png)
    for _ in range(2):  # warm the page cache for both
        t0 = time.perf_counter()
        for f in files:
            read_dicom(f, [])
        dicom_s = (time.perf_counter() - t0) / len(files)
        t0 = time.perf_counter()
        for p in pngs:
            cv2.imread(p, cv2.IMREAD_ANYDEPTH)
        png_s = (time.perf_counter() - t0) / len(pngs)
    emit(figure="dicom_slice_read", slices=len(files), size="256x256", dicom_ms=round(dicom_s * 1e3, 3),
         png16_ms=round(png_s * 1e3, 3), ratio=round(dicom_s / png_s, 2))
    # 2. a NIfTI volume: once for all slices (the cache) against once per slice
    mri = make_volume_dataset(os.path.join(work, "mri"), SynthSpec(n=1, seed=2), "mri", size=256, slices=(64, 64))
    path = os.path.join(os.path.dirname(mri), "mri", sorted(os.listdir(os.path.join(os.path.dirname(mri), "mri")))[0])
    z = nib.load(path).shape[2]
    t0 = time.perf_counter()
    cache = VolumeCache()
    for k in range(z):
        read_slice((path,), k, "yaml", cache, [])
    once = time.perf_counter() - t0
    t0 = time.perf_counter()
    for k in range(z):
        read_nifti_volume(path, [])[:, :, k]
    per_slice = time.perf_counter() - t0
    emit(figure="nifti_volume_read", slices=z, gz=True, read_once_s=round(once, 4),
         read_per_slice_s=round(per_slice, 4), ratio=round(per_slice / once, 1))
    # 3. the whole command, N=2 against N=1
    model = os.path.join(data, "model.onnx")
    w1, s1 = run(1, dataset, model, os.path.join(work, "n1"), 224)
    w2, s2 = run(2, dataset, model, os.path.join(work, "n2"), 224)
    emit(figure="volumes_whole_command", volumes=20, slices=s1["images"]["selected"], n1_wall_s=round(w1, 2),
         n2_wall_s=round(w2, 2), speedup=round(w1 / w2, 2), same_slices=s1["metrics"] == s2["metrics"])
    # 4. peak RSS per rank on one 512x512x300 series
    big = make_volume_dataset(os.path.join(work, "big"), SynthSpec(n=1, seed=3), "ct", size=512, slices=(300, 300))
    _, s = run(1, big, os.path.join(work, "big", "model.onnx"), os.path.join(work, "bigout"), 224)
    emit(figure="peak_rss_one_512x512x300_series", slices=s["images"]["selected"],
         peak_rss_mb=[r["peak_rss_mb"] for r in s["timings"]["per_rank"]],
         bench_process_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
