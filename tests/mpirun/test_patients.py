"""--patient-by: each patient's prediction (majority vote, UC11's rule, or mean), patient-level accuracy, balanced
accuracy and confusion matrix with CIs resampling patients, equal to an independent aggregation of per_image.csv,
for any number of ranks; a folder name under two classes stays two patients (the key is the whole path)."""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import mpirun, read_rows, read_summary

from mpi_infer.data.synth import SynthSpec, make_classification_dataset

pytestmark = pytest.mark.mpi
PATIENT = r"(patients/[^/]+/Pac[0-9]+)/"


@pytest.fixture(scope="module")
def patient_set(tmp_path_factory) -> str:
    """30 synthetic lesions filed as patients/<class>/Pac<k>/ (3 images each); Pac1 exists under every class."""
    root = tmp_path_factory.mktemp("patients")
    src = make_classification_dataset(str(root / "src"), SynthSpec(n=30, seed=2))
    doc = yaml.safe_load(Path(src).read_text())
    images = []
    for k, entry in enumerate(doc["images"]):
        folder = root / "patients" / entry["label"] / f"Pac{k // 9}"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / "src" / entry["location"], folder / os.path.basename(entry["location"]))
        images.append({"location": str((folder / os.path.basename(entry["location"])).relative_to(root)),
                       "label": entry["label"]})
    path = root / "dataset.yml"
    path.write_text(yaml.safe_dump({**doc, "images": images, "split": {"test": list(range(len(images)))}}))
    return str(path)


def ledger_probs(out: str) -> dict[int, list[float]]:
    """Each image's probabilities as its rank recorded them (per_image.csv shows the top ones only)."""
    probs = {}
    for name in os.listdir(os.path.join(out, "ledger")):
        with open(os.path.join(out, "ledger", name)) as fh:
            for line in fh:
                r = json.loads(line)
                probs[r["index"]] = r["probs"]
    return probs


def independent(rows: list[dict[str, str]], classes: list[str], vote: str, probs: dict[int, list[float]]) -> dict:
    import re

    by: dict[str, list[dict[str, str]]] = {}
    for r in sorted(rows, key=lambda r: int(r["index"])):
        by.setdefault(re.search(PATIENT, r["location"]).group(1), []).append(r)
    hits, truth_pred = 0, []
    for recs in by.values():
        if vote == "majority":
            counts = Counter(classes.index(r["predicted"]) for r in recs)
            top = max(counts.values())
            predicted = max(k for k, v in counts.items() if v == top)
        else:
            mean = [sum(probs[int(r["index"])][c] for r in recs) / len(recs) for c in range(len(classes))]
            predicted = mean.index(max(mean))
        truths = Counter(classes.index(r["label"]) for r in recs)
        target = max(k for k, v in truths.items() if v == max(truths.values()))
        truth_pred.append((target, predicted))
        hits += sum(classes.index(r["label"]) == predicted for r in recs)
    acc = sum(t == p for t, p in truth_pred) / len(truth_pred)
    recalls = [sum(1 for t, p in truth_pred if t == p == c) / n for c in range(len(classes))
               if (n := sum(1 for t, _ in truth_pred if t == c))]
    cm = [[sum(1 for t, p in truth_pred if t == a and p == b) for b in range(len(classes))] for a in
          range(len(classes))]
    return {"patients": len(by), "accuracy": acc, "balanced_accuracy": sum(recalls) / len(recalls),
            "confusion_matrix": cm, "slice_accuracy_after_vote": hits / len(rows)}


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("vote", ["majority", "mean"])
def test_patient_results_equal_an_independent_aggregation(patient_set, tmp_path, n, vote):
    out = str(tmp_path / "out")
    proc = mpirun(n, "run", "--dataset", patient_set, "--model", "demo-classifier", "--out", out,
                  "--patient-by", PATIENT, "--patient-vote", vote, "--bootstrap", "200")
    assert proc.returncode == 0, proc.stderr
    summary = read_summary(out)
    classes = summary["classes"]
    p = summary["patients"]
    want = independent(read_rows(out), classes, vote, ledger_probs(out))
    folders = {os.path.dirname(r["location"]) for r in read_rows(out)}
    assert p["patients"] == want["patients"] == len(folders) > 4  # PacK under two classes: two patients
    assert p["metrics"]["accuracy"] == pytest.approx(want["accuracy"])
    assert p["metrics"]["balanced_accuracy"] == pytest.approx(want["balanced_accuracy"])
    assert p["metrics"]["confusion_matrix"] == want["confusion_matrix"]
    assert p["slice_accuracy_after_vote"] == pytest.approx(want["slice_accuracy_after_vote"])
    lo, hi = p["statistics"]["accuracy"]["ci95"]
    assert lo <= p["metrics"]["accuracy"] <= hi
    with open(os.path.join(out, "patients.csv"), newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(folders) and sum(int(r["images"]) for r in rows) == 30
    assert f"patients (--patient-by {PATIENT}): {len(folders)} scored of {len(folders)}" in proc.stdout
    if n == 3:  # the same patients' results for any N
        one = str(tmp_path / "one")
        assert mpirun(1, "run", "--dataset", patient_set, "--model", "demo-classifier", "--out", one, "--patient-by",
                      PATIENT, "--patient-vote", vote, "--bootstrap", "200", "--quiet").returncode == 0
        assert read_summary(one)["patients"] == p


def test_patient_results_after_a_kill_and_resume_equal_a_clean_run(patient_set, tmp_path):
    args = ["--dataset", patient_set, "--model", "demo-classifier", "--patient-by", PATIENT, "--bootstrap", "200",
            "--batch-size", "2", "--quiet"]
    clean, resumed = str(tmp_path / "clean"), str(tmp_path / "resumed")
    assert mpirun(2, "run", *args, "--out", clean).returncode == 0
    killed = mpirun(2, "run", *args, "--out", resumed, env={"MPI_INFER_FAULT": "kill:rank=1:after=4"})
    assert killed.returncode != 0
    assert mpirun(3, "run", *args, "--out", resumed, "--resume").returncode == 0
    assert read_summary(resumed)["resumed_images"] > 0
    assert read_summary(resumed)["patients"] == read_summary(clean)["patients"]
