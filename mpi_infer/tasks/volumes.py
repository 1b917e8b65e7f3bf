"""Per-volume scores (``per_volume.csv``, summary.json's ``volumes``): each volume's 3D Dice and IoU pool the pixel
counts of all its slices at the network's resolution, as challenge scorers (and nnU-Net's evaluation) score a
volume; the mean over volumes with a bootstrap CI resampling volumes. DeepHealth's own pipelines report the mean
over slices (per_image.csv's rows), which stays the headline."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .stats import bootstrap_sums, percentile_ci


def volume_results(records: Sequence[Mapping[str, Any]], replicates: int, seed: int
                   ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """summary.json's ``volumes`` block and per_volume.csv's rows, from slice records (those with ``volume``)."""
    by: dict[int, list[Mapping[str, Any]]] = {}
    for r in sorted((r for r in records if "slice" in r), key=lambda r: r["index"]):
        by.setdefault(int(r["volume"]), []).append(r)
    rows: list[dict[str, Any]] = []
    dice, iou = [], []
    for volume, recs in sorted(by.items()):
        scored = [r for r in recs if r.get("tp") is not None]
        row: dict[str, Any] = {"volume": volume, "location": recs[0]["location"], "split": recs[0]["split"],
                               "slices": len(recs), "scored_slices": len(scored),
                               "failed_slices": sum(r["status"] == "failed" for r in recs)}
        if scored and len(scored) == len(recs):  # a volume with a slice missing has no honest 3D score
            tp, fp, fn = (sum(int(r[k]) for r in scored) for k in ("tp", "fp", "fn"))
            d = 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
            j = 1.0 if tp + fp + fn == 0 else tp / (tp + fp + fn)
            row.update(tp=tp, fp=fp, fn=fn, dice_3d=d, iou_3d=j,
                       mean_slice_dice=float(np.mean([float(r["dice"]) for r in scored])))
            dice.append(d)
            iou.append(j)
        rows.append(row)
    block: dict[str, Any] = {
        "volumes": len(rows), "scored_volumes": len(dice),
        "metrics": {"mean_dice_3d": float(np.mean(dice)) if dice else None,
                    "mean_iou_3d": float(np.mean(iou)) if iou else None},
        "definition": "a volume's Dice and IoU pool the pixel counts of all its slices at the network's resolution; "
                      "a volume with an unscored or failed slice has none",
    }
    if dice and replicates:
        sums = bootstrap_sums(np.column_stack([dice, iou, np.ones(len(dice))]), replicates, seed, "volumes")
        block["statistics"] = {"mean_dice_3d": {"ci95": percentile_ci(sums[:, 0] / sums[:, 2])},
                               "mean_iou_3d": {"ci95": percentile_ci(sums[:, 1] / sums[:, 2])}}
    return block, rows
