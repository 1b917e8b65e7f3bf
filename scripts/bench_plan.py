#!/usr/bin/env python3
"""Planning at scale: generate ISIC-like YAMLs of 10k, 100k and 1M images, then time load + validate +
plan (and building the shard descriptors) in one run. Prints one JSON line per size.

    python scripts/bench_plan.py [--sizes 10000 100000 1000000] [--parts 4] [--keep DIR]

Target (issue 2): load + validate + plan of the 1M-image YAML (~100 MB) in <= 5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mpi_infer.data.dataset import load_dataset, select_splits, selected_items  # noqa: E402
from mpi_infer.data.partition import plan  # noqa: E402


def write_yaml(path: str, n: int) -> int:
    n_train, n_val = int(n * 0.727), int(n * 0.055)
    with open(path, "w") as fh:
        fh.write("name: ISIC-like\ndescription: planning benchmark\nimages:\n")
        chunk = []
        for i in range(n):
            chunk.append(f"  - location: images_segmentation/ISIC_{i:07d}.jpg\n"
                         f"    label: ground_truth/ISIC_{i:07d}_segmentation.png\n")
            if len(chunk) == 10000:
                fh.write("".join(chunk))
                chunk = []
        fh.write("".join(chunk))
        fh.write("split:\n")
        for name, lo, hi in (("training", 0, n_train), ("validation", n_train, n_train + n_val),
                             ("test", n_train + n_val, n)):
            fh.write(f"  {name}: [" + ", ".join(map(str, range(lo, hi))) + "]\n")
    return os.path.getsize(path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--parts", type=int, default=4)
    ap.add_argument("--keep", default=None, help="keep the generated YAMLs in this folder")
    args = ap.parse_args()
    folder = args.keep or tempfile.mkdtemp(prefix="bench_plan_")
    os.makedirs(folder, exist_ok=True)
    for n in args.sizes:
        path = os.path.join(folder, f"isic_{n}.yml")
        size = os.path.getsize(path) if os.path.exists(path) else write_yaml(path, n)
        t0 = time.perf_counter()
        ds = load_dataset(path)
        t1 = time.perf_counter()
        sel = selected_items(ds, select_splits(ds, ["all"]))
        shards = plan(sel, args.parts)
        t2 = time.perf_counter()
        rows = sum(len(ds.work_list(s.parts)) for s in shards)
        t3 = time.perf_counter()
        print(json.dumps({
            "figure": "plan", "images": n, "yaml_mb": round(size / 1e6, 1), "parts": args.parts,
            "load_validate_s": round(t1 - t0, 3), "plan_s": round(t2 - t1, 3),
            "load_validate_plan_s": round(t2 - t0, 3), "target_s": 5.0, "descriptors_s": round(t3 - t2, 3),
            "descriptors": rows, "machine": f"{platform.machine()} {os.cpu_count()} cores",
        }), flush=True)
        if not args.keep:
            os.unlink(path)


if __name__ == "__main__":
    main()
