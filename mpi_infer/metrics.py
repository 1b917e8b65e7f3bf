"""Per-image IoU/Dice (the upstream definitions) and their aggregation from per-image records.

Upstream (UCP python/utils.py Evaluator; reference/ecvl.md 5.1): at network resolution, binarise the
prediction and the ground truth (scaled to [0, 1]) with ``>= threshold``; IoU = (|P&G| + eps) /
(|P|G| + eps), Dice = (2|P&G| + eps) / (|P| + |G| + eps), eps = 1e-6. So an empty ground truth with an
empty prediction scores 1.0, and with any predicted pixel about 0. "MIoU" is the mean over images.

Aggregation always starts from the per-image records, never from per-rank means: the mean over images
and the global (pooled) IoU/Dice from summed pixel counts, per split and overall.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

EPS = 1e-6
EMPTY_GT_POLICY = ("upstream: an image whose ground truth and prediction are both empty scores 1.0; "
                   "empty ground truth with any predicted pixel scores about 0")
SCORED = ("ok", "converted")


def confusion(prob: np.ndarray, mask: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-image (tp, fp, fn) pixel counts.

    prob: [N, H, W] probabilities at network resolution. mask: [N, H, W] uint8 0..255 ground truth.
    """
    pred = prob >= np.float32(threshold)
    gt = (mask.astype(np.float32) / np.float32(255.0)) >= np.float32(threshold)
    tp = np.count_nonzero(pred & gt, axis=(1, 2)).astype(np.int64)
    fp = np.count_nonzero(pred & ~gt, axis=(1, 2)).astype(np.int64)
    fn = np.count_nonzero(~pred & gt, axis=(1, 2)).astype(np.int64)
    return tp, fp, fn


def iou_dice(tp: Any, fp: Any, fn: Any) -> tuple[Any, Any]:
    """IoU and Dice from counts (scalars or arrays), with upstream's eps."""
    tp = np.asarray(tp, np.float64)
    fp = np.asarray(fp, np.float64)
    fn = np.asarray(fn, np.float64)
    iou = (tp + EPS) / (tp + fp + fn + EPS)
    dice = (2 * tp + EPS) / (2 * tp + fp + fn + EPS)
    return iou, dice


def aggregate(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Counts and metrics for a set of per-image records (dicts with status, tp, fp, fn, iou, dice)."""
    counts = {"selected": 0, "scored": 0, "unscored": 0, "failed": 0, "converted": 0}
    ious: list[float] = []
    dices: list[float] = []
    tp = fp = fn = 0
    for r in records:
        counts["selected"] += 1
        status = r["status"]
        if status in SCORED:
            counts["scored"] += 1
            counts["converted"] += status == "converted"
            ious.append(float(r["iou"]))
            dices.append(float(r["dice"]))
            tp += int(r["tp"])
            fp += int(r["fp"])
            fn += int(r["fn"])
        elif status == "unscored":
            counts["unscored"] += 1
        else:
            counts["failed"] += 1
    n = counts["scored"]
    g_iou, g_dice = iou_dice(tp, fp, fn)
    metrics = {
        # fsum is exactly rounded, so the means do not depend on the order records arrive in
        "mean_iou": math.fsum(ious) / n if n else None,
        "mean_dice": math.fsum(dices) / n if n else None,
        "global_iou": float(g_iou) if n else None,
        "global_dice": float(g_dice) if n else None,
        "tp": tp, "fp": fp, "fn": fn,
    }
    return {"images": counts, "metrics": metrics}


def summarise(records: list[Mapping[str, Any]], split_order: Iterable[str]) -> dict[str, Any]:
    """Overall and per-split aggregates, splits in the given (file) order."""
    out = aggregate(records)
    by_split: dict[str, list[Mapping[str, Any]]] = {s: [] for s in split_order}
    for r in records:
        by_split.setdefault(r["split"], []).append(r)
    out["per_split"] = {s: aggregate(rs) for s, rs in by_split.items()}
    return out
