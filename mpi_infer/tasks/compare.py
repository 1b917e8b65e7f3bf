"""Several models on the same images: which is best per split, and paired comparisons a reviewer accepts.

For every pair of models (the ensemble included) the per-image differences of the headline metrics (Dice and
IoU; for classification, whether the predicted class is right) over the images both scored, their mean with a
paired percentile-bootstrap 95% CI (images resampled together for both models, seeded as every other CI here:
the same for any number of ranks) and the counts of images where each model is better or they tie.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import combinations
from typing import Any

import numpy as np

from .stats import bootstrap_sums, percentile_ci

HEADLINE = {"segmentation": ("mean_dice", ("dice", "iou")), "classification": ("accuracy", ("correct",))}


def _value(r: Mapping[str, Any], metric: str) -> float | None:
    if metric == "correct":
        if r.get("predicted") is None or r.get("target") is None:
            return None
        return 1.0 if r["predicted"] == r["target"] else 0.0
    v = r.get(metric)
    return None if v is None else float(v)


def best_models(models: Mapping[str, Mapping[str, Any]], task: str) -> dict[str, Any]:
    """The best model by the task's headline metric, overall and per split (ties: the first given)."""
    metric = HEADLINE[task][0]

    def pick(get: Any) -> str | None:
        scored = [(v, n) for n, m in models.items() if (v := get(m)) is not None]
        return max(scored, key=lambda t: t[0])[1] if scored else None

    splits = next(iter(models.values()), {}).get("per_split", {})
    return {"metric": metric, "all": pick(lambda m: m["metrics"].get(metric)),
            "per_split": {s: pick(lambda m, s=s: m["per_split"].get(s, {}).get("metrics", {}).get(metric))
                          for s in splits}}


def paired(a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]], metric: str, replicates: int, seed: int,
           key: str) -> dict[str, Any]:
    """Mean of a - b per image (both scored, matched by index), its paired bootstrap CI, and who wins where."""
    vb = {r["index"]: _value(r, metric) for r in b}
    pairs = sorted((r["index"], x, vb[r["index"]]) for r in a
                   if (x := _value(r, metric)) is not None and vb.get(r["index"]) is not None)
    d = np.array([x - y for _, x, y in pairs], np.float64)
    n = int(d.size)
    out: dict[str, Any] = {"n": n, "mean_difference": math.fsum(d) / n if n else None, "ci95": [None, None],
                           "first_better": int((d > 0).sum()), "second_better": int((d < 0).sum()),
                           "ties": int((d == 0).sum())}
    if n and replicates:
        out["ci95"] = percentile_ci(bootstrap_sums(d[:, None], replicates, seed, key)[:, 0] / n)
    return out


def comparisons(by_model: Mapping[str, Sequence[Mapping[str, Any]]], task: str, replicates: int, seed: int
                ) -> list[dict[str, Any]]:
    """Every pair, in the order the models were given; a one-line verdict on the headline metric."""
    metrics = HEADLINE[task][1]
    out = []
    for first, second in combinations(list(by_model), 2):
        row: dict[str, Any] = {"first": first, "second": second}
        for m in metrics:
            row[m] = paired(by_model[first], by_model[second], m, replicates, seed, f"compare|{first}|{second}|{m}")
        row["verdict"] = verdict(first, second, metrics[0], row[metrics[0]])
        out.append(row)
    return out


def verdict(first: str, second: str, metric: str, p: Mapping[str, Any]) -> str:
    label = {"dice": "Dice", "iou": "IoU", "correct": "accuracy"}[metric]
    mean, (lo, hi) = p["mean_difference"], p["ci95"]
    if mean is None:
        return f"{first} vs {second}: no image scored by both"
    if p["first_better"] == p["second_better"] == 0:
        return f"{first} and {second} score the same {label} on all {p['n']} images"
    winner, loser = (first, second) if mean >= 0 else (second, first)
    if mean < 0 and lo is not None:  # the CI of winner - loser
        lo, hi = -hi, -lo
    ci = f" [{lo:+.4f}, {hi:+.4f}]" if lo is not None else ""
    sure = ("the CI excludes 0" if lo is not None and (lo > 0 or hi < 0) else
            "the CI includes 0: no clear winner" if lo is not None else "no CI (--bootstrap 0)")
    return (f"{winner} beats {loser} by {abs(mean):.4f} mean {label}{ci} over {p['n']} images "
            f"({p['first_better']} / {p['second_better']} / {p['ties']} better / worse / tied for {first}); {sure}")
