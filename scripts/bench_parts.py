#!/usr/bin/env python3
"""Figures for parts and merge (docs/slurm.md): on one synthetic set, one ``mpirun -n 2`` run against 2 Slurm array
parts plus the merge under a real one-node Slurm (scripts/slurm_cluster.py; needs root and slurm-wlm), each
whole command's wall time and the merge's own cost; and what a static stride with no merge (nnU-Net's
``-num_parts/-part_id``) reports when one part never ran, against what ``merge`` does then.

    sudo .venv/bin/python scripts/bench_parts.py --images 200     # JSON lines, one per figure
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from slurm_cluster import SlurmCluster, missing  # noqa: E402

MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "PRTE_MCA_rmaps_default_mapping_policy": ":oversubscribe", "MPIEXEC_TIMEOUT": "600"}


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mpi_infer", *args], capture_output=True, text=True,
                          env={**os.environ, **MPI_ENV, **(env or {})})


def timed(cmd: list[str], env: dict | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, **MPI_ENV, **(env or {})})
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--model", default="demo-onnx")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="mi-bench-parts-")
    data = os.path.join(work, "data")
    cli("synth", data, "--n", str(args.images), "--seed", "3")
    dataset = os.path.join(data, "dataset.yml")
    common = ["--dataset", dataset, "--model", args.model, "--split", "all", "--quiet"]
    mpirun = os.path.join(os.path.dirname(sys.executable), "mpirun")
    wall_mpi = timed([mpirun, "-n", "2", sys.executable, "-m", "mpi_infer", "run", *common, "--out",
                      os.path.join(work, "mpi")])
    t0 = time.perf_counter()
    for k in range(2):
        cli("run", *common, "--out", os.path.join(work, "seq"), "--part", f"{k}/2")
    parts_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    merged = cli("merge", os.path.join(work, "seq"), "--quiet")
    merge_wall = time.perf_counter() - t1
    print(json.dumps({"figure": "parts_without_slurm", "images": args.images, "mpirun_n2_wall_s": round(wall_mpi, 2),
                      "two_parts_one_after_the_other_s": round(parts_s, 2), "merge_command_s": round(merge_wall, 2),
                      "merge_exit": merged.returncode}))
    why = missing()
    if why:
        print(json.dumps({"figure": "parts_under_slurm", "skipped": why}))
    else:
        with SlurmCluster(os.path.join(work, "slurm")) as slurm:
            out = os.path.join(work, "slurm-out")
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "mpi_infer", "sbatch", "-o", os.path.join(work, "scripts"),
                                   "--dataset", dataset, "--model", args.model, "--out", out, "-n", "2",
                                   "--run-args", "--split all --quiet", "--submit"], capture_output=True, text=True,
                                  env={**slurm.env, **MPI_ENV})
            assert proc.returncode == 0, proc.stderr
            slurm.wait_idle(1800)
            wall = time.perf_counter() - t0
            with open(os.path.join(out, "summary.json")) as fh:
                summary = json.load(fh)
            print(json.dumps({"figure": "parts_under_slurm", "images": args.images, "array_parts": 2,
                              "submit_to_merged_s": round(wall, 2), "merge_s": summary["parts"]["merge_s"],
                              "part_wall_s": [p["wall_s"] for p in summary["parts"]["per_part"]],
                              "mpirun_n2_wall_s": round(wall_mpi, 2)}))
    # A missing part: 5 parts, part 3 never ran. A static stride with no merge scores what it finds.
    out = os.path.join(work, "missing")
    for k in (0, 1, 2, 4):
        cli("run", *common, "--out", out, "--part", f"{k}/5")
    found = 0
    for k in (0, 1, 2, 4):
        ledger = os.path.join(out, "parts", f"part-{k:03d}-of-005", "ledger")
        for name in os.listdir(ledger):
            with open(os.path.join(ledger, name)) as fh:
                found += sum(1 for _ in fh)
    merge = cli("merge", out)
    print(json.dumps({"figure": "a_missing_part", "selected": args.images,
                      "static_stride_without_merge_would_score": found, "merge_exit": merge.returncode,
                      "merge_says": merge.stderr.strip()[:400]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
