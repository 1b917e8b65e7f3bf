"""Patients: each image's patient from its path (``--patient-by REGEX``) or its DICOM PatientID
(``--patient-by dicom:PatientID``), then each patient's result, computed from the per-image records on rank 0.

Classification (UC11's kidney pipeline, use-case-pipelines cpp/kidney_classification.cpp): a patient's
prediction is the vote of its images. ``majority`` is the pipeline's rule, generalised: the most frequent
predicted class, a tie going to the higher class (for two classes: the mean of the predicted classes >= 0.5
means class 1); ``mean`` averages the images' probabilities. The pipeline then relabels every slice with its
patient's prediction and counts accuracy again: ``slice_accuracy_after_vote``. The patient's true class is its
images' (the most frequent one where they disagree; such patients are counted). Accuracy, balanced accuracy and
the confusion matrix over patients, with bootstrap CIs resampling patients.

Segmentation: a patient's Dice and IoU pool its images' (or slices') pixel counts; the mean over patients is the
headline, with a CI resampling patients.

The key is the whole path's match, never a folder name alone: the kidney data holds ``Pac1`` under both class
folders, two patients that a folder-name key would merge.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .stats import bootstrap_sums, percentile_ci

DICOM_TAG = "dicom:"


def patient_namer(spec: str) -> Callable[[Mapping[str, Any]], str]:
    """A record's patient: the REGEX's first capture group (else its whole match) in the record's location, or a
    DICOM tag of its (first) file; an image with none is a patient of its own, marked ``(no patient)``."""
    if spec.startswith(DICOM_TAG):
        tag = spec[len(DICOM_TAG):]
        cache: dict[str, str | None] = {}

        def by_tag(r: Mapping[str, Any]) -> str:
            path = str(r["location"]).split(";")[0]
            if path not in cache:
                cache[path] = dicom_tag(path, tag)
            value = cache[path]
            return value if value else f"(no patient) {r['location']}"

        return by_tag
    compiled = re.compile(spec)

    def by_path(r: Mapping[str, Any]) -> str:
        m = compiled.search(str(r["location"]))
        if not m:
            return f"(no patient) {r['location']}"
        return m.group(1) if compiled.groups else m.group(0)

    return by_path


def dicom_tag(path: str, keyword: str) -> str | None:
    """A DICOM file's data element by keyword (PatientID), read from its header; None where absent or unreadable."""
    import warnings

    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=[keyword]).get(keyword)
    except Exception:  # not DICOM, damaged: no patient
        return None
    text = str(value).strip() if value is not None else ""
    return text or None


def _groups(records: Sequence[Mapping[str, Any]], patient_of: Callable) -> dict[str, list[Mapping[str, Any]]]:
    by: dict[str, list[Mapping[str, Any]]] = {}
    for r in sorted(records, key=lambda r: r["index"]):  # patients in order of their first image: any N alike
        by.setdefault(patient_of(r), []).append(r)
    return by


def classification_patients(records: Sequence[Mapping[str, Any]], classes: Sequence[str], patient_of: Callable,
                            vote: str, replicates: int, seed: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """summary.json's ``patients`` and patients.csv's rows, for classification records."""
    from .classification import classification_metrics, classification_statistics

    c = len(classes)
    rows: list[dict[str, Any]] = []
    targets, probs = [], []
    relabelled_hits = scored_images = mixed = unmatched = 0
    for patient, recs in _groups(records, patient_of).items():
        scored = [r for r in recs if r["status"] in ("ok", "converted") and r.get("probs") is not None]
        unmatched += patient.startswith("(no patient) ")
        row: dict[str, Any] = {"patient": patient, "images": len(recs), "scored": len(scored)}
        if scored:
            image_targets = np.array([int(r["target"]) for r in scored])
            image_probs = np.array([r["probs"] for r in scored], np.float64)
            votes = np.bincount(image_probs.argmax(axis=1), minlength=c)
            truth = np.bincount(image_targets, minlength=c)
            target = int(c - 1 - np.argmax(truth[::-1]))  # the most frequent; a tie to the higher class
            mixed += int(np.count_nonzero(truth) > 1)
            if vote == "mean":
                p = image_probs.mean(axis=0)
                predicted = int(p.argmax())
            else:
                predicted = int(c - 1 - np.argmax(votes[::-1]))
                p = np.eye(c)[predicted]
            relabelled_hits += int(np.sum(image_targets == predicted))
            scored_images += len(scored)
            targets.append(target)
            probs.append(p)
            row.update(target=classes[target], predicted=classes[predicted], correct=int(target == predicted),
                       votes=" ".join(f"{classes[k]}:{int(v)}" for k, v in enumerate(votes) if v),
                       mixed_labels=int(np.count_nonzero(truth) > 1))
        rows.append(row)
    t = np.asarray(targets, np.int64)
    p = np.asarray(probs, np.float64).reshape(len(targets), c)
    metrics = classification_metrics(t, p, classes)
    keep = ("accuracy", "balanced_accuracy", "macro_f1", "confusion_matrix", "per_class")
    if vote == "mean":
        keep += ("macro_auc",)
    summary: dict[str, Any] = {
        "patients": len(rows), "scored_patients": len(targets), "unmatched_images": unmatched,
        "mixed_label_patients": mixed, "vote": vote,
        "metrics": {k: v for k, v in metrics.items() if k in keep},
        "slice_accuracy_after_vote": relabelled_hits / scored_images if scored_images else None,
    }
    stats = classification_statistics(t, p, c, "patients", replicates, seed)
    if stats:
        summary["statistics"] = {k: v for k, v in stats.items() if k in keep}
    return summary, rows


def segmentation_patients(records: Sequence[Mapping[str, Any]], patient_of: Callable, replicates: int, seed: int
                          ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Each patient's Dice and IoU from its images' pooled counts; their mean over patients, with a CI."""
    rows: list[dict[str, Any]] = []
    dice, iou = [], []
    unmatched = 0
    for patient, recs in _groups(records, patient_of).items():
        scored = [r for r in recs if r.get("tp") is not None]
        unmatched += patient.startswith("(no patient) ")
        row: dict[str, Any] = {"patient": patient, "images": len(recs), "scored": len(scored)}
        if scored:
            tp, fp, fn = (sum(int(r[k]) for r in scored) for k in ("tp", "fp", "fn"))
            d = 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
            j = 1.0 if tp + fp + fn == 0 else tp / (tp + fp + fn)
            dice.append(d)
            iou.append(j)
            row.update(tp=tp, fp=fp, fn=fn, dice=d, iou=j)
        rows.append(row)
    values = np.column_stack([dice, iou]) if dice else np.empty((0, 2))
    summary: dict[str, Any] = {"patients": len(rows), "scored_patients": len(dice), "unmatched_images": unmatched,
                               "metrics": {"mean_dice": float(np.mean(dice)) if dice else None,
                                           "mean_iou": float(np.mean(iou)) if iou else None},
                               "pooling": "a patient's Dice and IoU pool the pixel counts of all its images"}
    if dice and replicates:
        sums = bootstrap_sums(np.column_stack([values, np.ones(len(values))]), replicates, seed, "patients")
        summary["statistics"] = {"mean_dice": {"ci95": percentile_ci(sums[:, 0] / sums[:, 2])},
                                 "mean_iou": {"ci95": percentile_ci(sums[:, 1] / sums[:, 2])}}
    return summary, rows

