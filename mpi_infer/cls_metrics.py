"""Classification metrics, aggregated on rank 0 from per-image records (never from per-rank figures).

Per split and overall: accuracy (upstream's ``categorical_accuracy`` is plain accuracy: the share of images
whose top class is the true one), balanced accuracy (the mean of per-class recall over the classes present
in the ground truth), per-class precision, recall, F1 and support, macro and support-weighted F1, the confusion
matrix (rows: true class, columns: predicted) and top-k accuracy. The definitions are scikit-learn's
(zero_division=0), and the tests check them against it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

SCORED = ("ok", "converted")


def classification_metrics(targets: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """targets [n] true class indices; probs [n, C] probabilities."""
    n, c = len(targets), len(classes)
    if n == 0:
        return {"accuracy": None, "balanced_accuracy": None, "macro_f1": None, "weighted_f1": None,
                "top_k_accuracy": {}, "per_class": {}, "confusion_matrix": [[0] * c for _ in range(c)]}
    predicted = probs.argmax(axis=1)
    cm = np.zeros((c, c), np.int64)
    np.add.at(cm, (targets, predicted), 1)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    predicted_n = cm.sum(axis=0).astype(np.float64)
    precision = np.divide(tp, predicted_n, out=np.zeros(c), where=predicted_n > 0)
    recall = np.divide(tp, support, out=np.zeros(c), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(c), where=(precision + recall) > 0)
    present = support > 0
    # rank of the true class among the probabilities (0 = top); ties broken as argsort does
    order = np.argsort(-probs, axis=1, kind="stable")
    true_rank = np.argmax(order == targets[:, None], axis=1)
    return {
        "accuracy": float(tp.sum() / n),
        "balanced_accuracy": float(recall[present].mean()),
        "macro_f1": float(f1.mean()),
        "weighted_f1": float((f1 * support).sum() / support.sum()),
        "top_k_accuracy": {str(k): float(np.mean(true_rank < k)) for k in (2, 3, 5) if k < c},
        "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                             "support": int(support[i])} for i, name in enumerate(classes)},
        "confusion_matrix": cm.tolist(),
    }


def aggregate_classification(records: Iterable[Mapping[str, Any]], classes: Sequence[str]) -> dict[str, Any]:
    counts = {"selected": 0, "scored": 0, "unscored": 0, "failed": 0, "converted": 0}
    targets, probs = [], []
    for r in records:
        counts["selected"] += 1
        if r["status"] in SCORED:
            counts["scored"] += 1
            counts["converted"] += r["status"] == "converted"
            targets.append(int(r["target"]))
            probs.append(r["probs"])
        elif r["status"] == "unscored":
            counts["unscored"] += 1
        else:
            counts["failed"] += 1
    t = np.asarray(targets, np.int64)
    p = np.asarray(probs, np.float64).reshape(len(targets), len(classes))
    return {"images": counts, "metrics": classification_metrics(t, p, classes)}


def summarise_classification(records: list[Mapping[str, Any]], split_order: Iterable[str],
                             classes: Sequence[str]) -> dict[str, Any]:
    out = aggregate_classification(records, classes)
    by_split: dict[str, list[Mapping[str, Any]]] = {s: [] for s in split_order}
    for r in records:
        by_split.setdefault(r["split"], []).append(r)
    out["per_split"] = {s: aggregate_classification(rs, classes) for s, rs in by_split.items()}
    return out


def top_k_text(probs: Sequence[float], classes: Sequence[str], k: int = 3) -> str:
    """``name:p;name:p;...`` for the k most probable classes (per_image.csv's top_k)."""
    order = np.argsort(-np.asarray(probs), kind="stable")[:k]
    return ";".join(f"{classes[i]}:{probs[i]:.4f}" for i in order)
