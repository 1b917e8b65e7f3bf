#!/usr/bin/env python3
"""The honest baseline: the script a user would write instead of mpi_infer, written as well as we can.

One process: a few decode threads (OpenCV releases the GIL) feed a bounded queue of network-size images, ONNX
Runtime runs batches with its own intra-op threads (spinning off, so it leaves the decode threads their cores),
and every image's Dice/IoU is computed as upstream defines them. The preprocessing is ECVL's (RGB, resize on
uint8, x * float32(1/255), then mean/std), so its per-image scores equal mpi_infer's. What it lacks is what
mpi_infer adds: MPI across hosts, validation, the ledger and --resume, failures as records, the report.

    python scripts/baseline_infer.py --dataset D.yml --model M.onnx [--split all] [--size 192 192]
    # prints one JSON line: images, wall_s, startup_s, steady_images_per_s, peak_rss_mb, mean_dice
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

T0 = time.perf_counter()

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import yaml  # noqa: E402


def entries(dataset: str, split: str) -> list[tuple[int, str, str | None]]:
    """(index, image path, mask path) of the selected images, in dataset order."""
    with open(dataset) as fh:
        doc = yaml.safe_load(fh)
    root = os.path.dirname(os.path.abspath(dataset))
    images = doc["images"]
    if split == "all":
        chosen = range(len(images))
    else:
        chosen = sorted(int(i) for i in doc["split"][split])
    out = []
    for i in chosen:
        e = images[i]
        label = e.get("label")
        out.append((i, os.path.join(root, e["location"]), os.path.join(root, label) if label else None))
    return out


def load(entry, size, mean, std):
    index, image, mask = entry
    bgr = cv2.imread(image, cv2.IMREAD_COLOR)
    x = cv2.cvtColor(cv2.resize(bgr, size, interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB)
    x = x.astype(np.float32).transpose(2, 0, 1) * np.float32(1.0 / 255.0)
    if mean is not None:
        x = (x - mean[:, None, None]) / std[:, None, None]
    gt = None
    if mask:
        gt = cv2.resize(cv2.imread(mask, cv2.IMREAD_GRAYSCALE), size, interpolation=cv2.INTER_NEAREST)
    return index, x, gt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--size", type=int, nargs=2, default=(192, 192), metavar=("H", "W"))
    ap.add_argument("--mean", type=float, nargs=3, default=None)
    ap.add_argument("--std", type=float, nargs=3, default=None)
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--decode-threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--ort-threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--csv", default=None, help="write index,iou,dice per image here")
    args = ap.parse_args()

    size = (args.size[1], args.size[0])
    mean = np.asarray(args.mean, np.float32) if args.mean else None
    std = np.asarray(args.std, np.float32) if args.std else None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.ort_threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(args.model, sess_options=opts, providers=["CPUExecutionProvider"])
    in_name, out_name = session.get_inputs()[0].name, session.get_outputs()[0].name
    todo = entries(args.dataset, args.split)
    t_start = time.perf_counter()

    rows = []
    with ThreadPoolExecutor(args.decode_threads) as pool:
        pending: deque = deque()
        source = iter(todo)
        window = args.batch_size * 3
        while True:
            while len(pending) < window:
                entry = next(source, None)
                if entry is None:
                    break
                pending.append(pool.submit(load, entry, size, mean, std))
            if not pending:
                break
            batch = [pending.popleft().result() for _ in range(min(args.batch_size, len(pending)))]
            prob = session.run([out_name], {in_name: np.stack([b[1] for b in batch])})[0][:, 0]
            for (index, _, gt), p in zip(batch, prob):
                if gt is None:
                    continue
                pred = p >= np.float32(args.threshold)
                g = (gt.astype(np.float32) / np.float32(255.0)) >= np.float32(args.threshold)
                tp = np.count_nonzero(pred & g)
                fp = np.count_nonzero(pred & ~g)
                fn = np.count_nonzero(~pred & g)
                rows.append((index, (tp + 1e-6) / (tp + fp + fn + 1e-6), (2 * tp + 1e-6) / (2 * tp + fp + fn + 1e-6)))
    t_end = time.perf_counter()
    if args.csv:
        with open(args.csv, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["index", "iou", "dice"])
            w.writerows(sorted(rows))
    print(json.dumps({
        "images": len(todo), "wall_s": round(t_end - T0, 3), "startup_s": round(t_start - T0, 3),
        "steady_images_per_s": round(len(todo) / (t_end - t_start), 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "mean_dice": float(np.mean([r[2] for r in rows])) if rows else None}))


if __name__ == "__main__":
    main()
