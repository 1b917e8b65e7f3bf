"""The classification task: its head, and its metrics, aggregated on rank 0 from per-image records (never from
per-rank figures).

Per split and overall: accuracy (upstream's ``categorical_accuracy`` is plain accuracy: the share of images
whose top class is the true one), balanced accuracy (the mean of per-class recall over the classes present
in the ground truth), per-class precision, recall, F1 and support, macro and support-weighted F1, the confusion
matrix (rows: true class, columns: predicted) and top-k accuracy; per class also one-vs-rest ROC AUC, average
precision, sensitivity and specificity, the macro AUC, and the expected calibration error (15 equal-width bins
of the top-class probability, with the reliability diagram's bins). The definitions are scikit-learn's
(zero_division=0), and the tests check them against it. Bootstrap 95% CIs (tasks/stats.py) for accuracy,
balanced accuracy, macro F1 and macro AUC: the counting metrics from resampled per-image sums, the AUC from
the same resamples as weights on the once-sorted scores (no re-sorting per replicate).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import ModelError, clip
from .output import OutputSpec, refuse_double_activation, softmax
from .protocol import MAX_ERROR_CHARS, STATUSES, ScoreOptions

SCORED = ("ok", "converted")
CLASSIFICATION_COLUMNS = ("index", "split", "location", "label", "rank", "predicted", "probability",
                          "true_probability", "top_k", "status", "error")
ECE_BINS = 15


def weighted_auc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """One-vs-rest ROC AUC (the Mann-Whitney statistic, ties counting one half) for each row of ``weights``
    ([b, n] per-image weights; a bootstrap replicate's draw counts). NaN where a class or its rest is absent."""
    order = np.argsort(scores, kind="stable")
    s = scores[order]
    starts = np.flatnonzero(np.concatenate([[True], s[1:] != s[:-1]]))  # runs of tied scores
    w = weights[:, order]
    pos = np.add.reduceat(w * positive[order], starts, axis=1)
    neg = np.add.reduceat(w * ~positive[order], starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    num = (pos * (below + 0.5 * neg)).sum(axis=1)
    den = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def descending_counts(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True and false positives at each distinct score taken as the threshold (scores descending, ties together),
    and the position of each threshold's last image in that order."""
    order = np.argsort(-scores, kind="stable")
    s, hit = scores[order], positive[order]
    last = np.flatnonzero(np.concatenate([s[1:] != s[:-1], [True]]))  # end of each run of tied scores
    return np.cumsum(hit)[last], np.cumsum(~hit)[last], last


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """scikit-learn's average precision: sum over thresholds (distinct scores, descending) of the recall step
    times the precision there. None without positives."""
    total = int(positive.sum())
    if total == 0:
        return None
    tp, _, last = descending_counts(scores, positive)
    precision = tp / (last + 1)
    recall = tp / total
    return float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))


def roc_points(scores: np.ndarray, positive: np.ndarray, points: int = 101) -> dict[str, list[float]] | None:
    """The ROC curve (at each distinct score, descending; at most ``points`` of them, evenly picked, ends kept)
    for the report. None where the class or its rest is absent."""
    pos, neg = int(positive.sum()), int((~positive).sum())
    if pos == 0 or neg == 0:
        return None
    tp, fp, _ = descending_counts(scores, positive)
    tpr = np.concatenate([[0.0], tp / pos])
    fpr = np.concatenate([[0.0], fp / neg])
    keep = np.unique(np.linspace(0, len(tpr) - 1, min(points, len(tpr))).round().astype(int))
    return {"fpr": [float(x) for x in fpr[keep]], "tpr": [float(x) for x in tpr[keep]]}


def calibration(probs: np.ndarray, targets: np.ndarray, bins: int = ECE_BINS) -> dict[str, Any]:
    """Expected calibration error of the top-class probability over ``bins`` equal-width bins (lo, hi], and
    each bin's count, mean confidence and accuracy (the reliability diagram)."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == targets
    which = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    conf_sum = np.bincount(which, weights=conf, minlength=bins)
    hit_sum = np.bincount(which, weights=correct.astype(np.float64), minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, conf_sum / count, np.nan)
        accuracy = np.where(count > 0, hit_sum / count, np.nan)
    ece = float(np.nansum(np.abs(accuracy - mean_conf) * count) / max(1, len(conf)))
    return {"ece": ece, "bins": [{"count": int(c), "confidence": None if c == 0 else float(m),
                                  "accuracy": None if c == 0 else float(a)}
                                 for c, m, a in zip(count, mean_conf, accuracy)]}


def counting_metrics(sums: np.ndarray, c: int) -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy and macro F1 from [b, 3C] sums of one-hot (true class, predicted class,
    correct class) columns: what a bootstrap replicate's resampled sums give."""
    support, predicted, tp = sums[:, :c], sums[:, c:2 * c], sums[:, 2 * c:]
    n = support.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, tp / support, 0.0)
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        present = support > 0
        balanced = np.where(present.any(axis=1), (recall * present).sum(axis=1) / present.sum(axis=1), np.nan)
        return {"accuracy": tp.sum(axis=1) / n, "balanced_accuracy": balanced, "macro_f1": f1.mean(axis=1)}


def classification_statistics(targets: np.ndarray, probs: np.ndarray, c: int, key: str, replicates: int,
                              seed: int, units: np.ndarray | None = None) -> dict[str, Any]:
    """Bootstrap 95% CIs of accuracy, balanced accuracy, macro F1 and macro AUC (images, or ``units``)."""
    from .stats import percentile_ci, replicate_weights

    n = len(targets)
    if n == 0 or not replicates:
        return {}
    units = np.arange(n) if units is None else units
    eye = np.eye(c)
    cols = np.column_stack([eye[targets], eye[probs.argmax(axis=1)], eye[targets] * (probs.argmax(axis=1) ==
                                                                                        targets)[:, None]])
    unit_sums = np.zeros((int(units.max()) + 1, cols.shape[1]))
    np.add.at(unit_sums, units, cols)
    reps: dict[str, list[np.ndarray]] = {"accuracy": [], "balanced_accuracy": [], "macro_f1": [], "macro_auc": []}
    for w in replicate_weights(len(unit_sums), replicates, seed, key):
        for name, values in counting_metrics(w @ unit_sums, c).items():
            reps[name].append(values)
        image_w = w[:, units]
        aucs = np.stack([weighted_auc(probs[:, k], targets == k, image_w) for k in range(c)], axis=1)
        defined = np.isfinite(aucs)  # a class absent from a resample has no AUC there
        reps["macro_auc"].append(np.where(defined.any(axis=1), np.where(defined, aucs, 0.0).sum(axis=1)
                                          / np.maximum(defined.sum(axis=1), 1), np.nan))

    return {name: {"ci95": percentile_ci(np.concatenate(v))} for name, v in reps.items()}


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
    tn = n - support - predicted_n + tp
    specificity = np.divide(tn, n - support, out=np.zeros(c), where=(n - support) > 0)
    ones = np.ones((1, n))
    auc = [float(weighted_auc(probs[:, i], targets == i, ones)[0]) for i in range(c)]
    auc = [None if np.isnan(a) else a for a in auc]
    ap = [average_precision(probs[:, i], targets == i) for i in range(c)]
    defined = [a for a in auc if a is not None]
    return {
        "accuracy": float(tp.sum() / n),
        "balanced_accuracy": float(recall[present].mean()),
        "macro_f1": float(f1.mean()),
        "weighted_f1": float((f1 * support).sum() / support.sum()),
        "macro_auc": float(np.mean(defined)) if defined else None,
        "top_k_accuracy": {str(k): float(np.mean(true_rank < k)) for k in (2, 3, 5) if k < c},
        "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                             "support": int(support[i]), "sensitivity": float(recall[i]),
                             "specificity": float(specificity[i]), "roc_auc": auc[i],
                             "average_precision": ap[i], "roc": roc_points(probs[:, i], targets == i)}
                      for i, name in enumerate(classes)},
        "confusion_matrix": cm.tolist(),
        "calibration": calibration(probs, targets),
    }


def aggregate_classification(records: Iterable[Mapping[str, Any]], classes: Sequence[str], key: str = "all",
                             replicates: int = 0, seed: int = 0, group_of: Any = None) -> dict[str, Any]:
    counts = {"selected": 0, "scored": 0, "unscored": 0, "failed": 0, "converted": 0}
    targets, probs, groups = [], [], []
    for r in records:
        counts["selected"] += 1
        if r["status"] in SCORED:
            counts["scored"] += 1
            counts["converted"] += r["status"] == "converted"
            targets.append(int(r["target"]))
            probs.append(r["probs"])
            if group_of is not None:
                groups.append(group_of(r))
        elif r["status"] == "unscored":
            counts["unscored"] += 1
        else:
            counts["failed"] += 1
    t = np.asarray(targets, np.int64)
    p = np.asarray(probs, np.float64).reshape(len(targets), len(classes))
    out = {"images": counts, "metrics": classification_metrics(t, p, classes)}
    units = None
    if group_of is not None and groups:  # resample groups: numbered by first appearance in index order
        ids: dict[str, int] = {}
        units = np.array([ids.setdefault(g, len(ids)) for g in groups], np.int64)
    stats = classification_statistics(t, p, len(classes), key, replicates, seed, units)
    if stats:
        out["statistics"] = stats
    return out


def summarise_classification(records: list[Mapping[str, Any]], split_order: Iterable[str],
                             classes: Sequence[str], replicates: int = 0, seed: int = 0,
                             group_of: Any = None) -> dict[str, Any]:
    records = sorted(records, key=lambda r: r["index"])  # the bootstrap's order: the same for any N
    out = aggregate_classification(records, classes, "all", replicates, seed, group_of)
    by_split: dict[str, list[Mapping[str, Any]]] = {s: [] for s in split_order}
    for r in records:
        by_split.setdefault(r["split"], []).append(r)
    out["per_split"] = {s: aggregate_classification(rs, classes, s, replicates, seed, group_of)
                        for s, rs in by_split.items()}
    return out


def top_k_text(probs: Sequence[float], classes: Sequence[str], k: int = 3) -> str:
    """``name:p;name:p;...`` for the k most probable classes (per_image.csv's top_k)."""
    order = np.argsort(-np.asarray(probs), kind="stable")[:k]
    return ";".join(f"{classes[i]}:{probs[i]:.4f}" for i in order)


class ClassificationHead:
    """Raw [N, C] (or [N, C, 1, 1]) output -> [N, C] float32 class probabilities, C = the dataset's classes."""

    def __init__(self, spec: OutputSpec, classes: list[str]):
        if spec.activation == "sigmoid":
            raise ModelError("--activation sigmoid is for one channel of segmentation logits; a classifier's "
                             "logits take --activation softmax")
        if spec.cls is not None:
            raise ModelError("--class picks a segmentation output channel; a classifier scores every class")
        self.spec, self.classes = spec, classes

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        y = np.asarray(raw, np.float32).reshape(len(raw), -1)
        if self.spec.activation == "softmax":
            y = softmax(y)
        return np.ascontiguousarray(y, np.float32)

    def check(self, raw: np.ndarray, source: str) -> None:
        flat = int(np.prod(raw.shape[1:])) if raw.ndim >= 2 else -1
        if raw.ndim not in (2, 4) or (raw.ndim == 4 and raw.shape[2:] != (1, 1)) or flat != len(self.classes):
            raise ModelError(f"{source} has shape {list(raw.shape)} for two images; the dataset has "
                             f"{len(self.classes)} classes, so expected [N, {len(self.classes)}] class scores")
        refuse_double_activation(np.asarray(raw).reshape(len(raw), -1), self.spec, source)
        probs = self(raw)
        if not (np.all(np.isfinite(probs)) and probs.min() >= 0 and probs.max() <= 1
                and np.allclose(probs.sum(axis=1), 1, atol=1e-3)):
            hint = ("it looks like logits: add --activation softmax" if self.spec.activation == "none"
                    else "the output is not finite after the softmax")
            raise ModelError(f"{source}: class scores are not probabilities on probe images (each in [0, 1], "
                             f"summing to 1); {hint}")


def classification_row(r: Mapping[str, Any], classes: list[str]) -> dict[str, Any]:
    probs, target, predicted = r.get("probs"), r.get("target"), r.get("predicted")
    return {**r, "label": "" if target is None else classes[target],
            "predicted": "" if predicted is None else classes[predicted],
            "probability": None if probs is None else probs[predicted],
            "true_probability": None if probs is None or target is None else probs[target],
            "top_k": "" if probs is None else top_k_text(probs, classes)}


class ClassificationTask:
    """The classification task behind the protocol of tasks/__init__.py."""

    name = "classification"

    def blank_record(self, loaded: Any, rank: int) -> dict[str, Any]:
        item = loaded.item
        return {"index": item.index, "split": item.split, "location": ";".join(item.locations), "rank": rank,
                "target": item.target, "predicted": None, "probs": None, "status": loaded.status,
                "error": clip("; ".join(loaded.notes), MAX_ERROR_CHARS)}

    def score_batch(self, batch: Any, probs: np.ndarray, records: list[dict[str, Any]], profile: Any,
                    options: Any) -> list[str]:
        for j, k in enumerate(batch.rows):  # probs: [N, C] class probabilities
            records[k].update(predicted=int(np.argmax(probs[j])), probs=[float(p) for p in probs[j]])
        return []

    def head(self, spec: OutputSpec, profile: Any, classes: list[str]) -> ClassificationHead:
        return ClassificationHead(spec, classes)

    def summarise(self, records: list[Mapping[str, Any]], splits: list[str], classes: list[str], profile: Any,
                  options: ScoreOptions, group_of: Any) -> dict[str, Any]:
        out = summarise_classification(records, splits, classes, options.bootstrap, options.seed, group_of)
        return {"task": "classification", "classes": list(classes), **out,
                "accuracy_note": "upstream's categorical_accuracy is plain accuracy (top-1)"}

    def check_record(self, record: Mapping[str, Any], classes: list[str]) -> str | None:
        if record.get("status") not in STATUSES:
            return f"status {clip(repr(record.get('status')), 40)}: not one mpi_infer writes"
        target = record.get("target")
        if target is not None and not (type(target) is int and 0 <= target < len(classes)):
            return f"target {clip(repr(target), 40)}: expected a class number 0..{len(classes) - 1} or null"
        if record["status"] == "failed":
            return None
        probs, predicted = record.get("probs"), record.get("predicted")
        if not (isinstance(probs, list) and len(probs) == len(classes)
                and all(type(p) in (int, float) and math.isfinite(p) and 0 <= p <= 1 for p in probs)
                and abs(sum(probs) - 1) <= 1e-3):
            return f"probs: expected {len(classes)} probabilities in [0, 1] summing to 1"
        if predicted != int(np.argmax(probs)):
            return f"predicted {clip(repr(predicted), 40)}: not the most probable class of its probs"
        return None

    def group_row(self, records: list[Mapping[str, Any]]) -> dict[str, Any]:
        scored = [r for r in records if r["status"] in SCORED]
        hits = sum(r["predicted"] == r["target"] for r in scored)
        return {"images": len(records), "scored": len(scored), "accuracy": hits / len(scored) if scored else None}

    def csv_columns(self, records: list[Mapping[str, Any]]) -> tuple[str, ...]:
        return CLASSIFICATION_COLUMNS

    def csv_row(self, record: Mapping[str, Any], classes: list[str]) -> Mapping[str, Any]:
        return classification_row(record, classes)


TASK = ClassificationTask()
