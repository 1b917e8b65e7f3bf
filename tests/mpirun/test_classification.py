"""Classification, distributed like segmentation: exactly-once records identical for any N, metrics equal to
scikit-learn's, the shipped demo classifier, ONNX classifiers with logits, multi-label refused, and the report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import mpirun
from conftest import read_rows as rows
from conftest import read_summary as summary

from mpi_infer.data.dataset import load_dataset
from mpi_infer.data.synth import CLASSES, SynthSpec, make_classification_dataset
from mpi_infer.models.classifiers import (
    build_classifier_onnx,
    classifier_from_records,
    random_classifier,
    records_from_classifier,
)
from mpi_infer.stages.stack import pyecvl_available
from mpi_infer.tasks.classification import classification_metrics

LOADERS = ["opencv", "ecvl"] if pyecvl_available() else ["opencv"]


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_equal_scikit_learn(seed):
    from sklearn import metrics as sk

    rng = np.random.default_rng(seed)
    c = 5
    targets = rng.integers(0, c - 1, 200)  # class 4 never occurs in the ground truth
    probs = rng.dirichlet(np.ones(c), 200)
    probs[np.arange(200), targets] += rng.uniform(0, 0.6, 200)  # better than chance
    probs /= probs.sum(axis=1, keepdims=True)
    got = classification_metrics(targets, probs, [f"c{i}" for i in range(c)])
    pred = probs.argmax(axis=1)
    labels = list(range(c))
    assert got["accuracy"] == pytest.approx(sk.accuracy_score(targets, pred), abs=1e-12)
    assert got["balanced_accuracy"] == pytest.approx(sk.balanced_accuracy_score(targets, pred), abs=1e-12)
    assert got["macro_f1"] == pytest.approx(sk.f1_score(targets, pred, labels=labels, average="macro",
                                                        zero_division=0), abs=1e-12)
    assert got["weighted_f1"] == pytest.approx(sk.f1_score(targets, pred, labels=labels, average="weighted",
                                                           zero_division=0), abs=1e-12)
    p, r, f, s = sk.precision_recall_fscore_support(targets, pred, labels=labels, zero_division=0)
    for i in range(c):
        pc = got["per_class"][f"c{i}"]
        assert (pc["precision"], pc["recall"], pc["f1"], pc["support"]) == pytest.approx((p[i], r[i], f[i], s[i]))
    assert got["confusion_matrix"] == sk.confusion_matrix(targets, pred, labels=labels).tolist()
    for k in (2, 3):
        assert got["top_k_accuracy"][str(k)] == pytest.approx(
            sk.top_k_accuracy_score(targets, probs, k=k, labels=labels), abs=1e-12)


@pytest.fixture(scope="module")
def cls_data(tmp_path_factory) -> str:
    """17 images of the three synthetic classes, two of them without a label (predicted only)."""
    root = tmp_path_factory.mktemp("cls")
    path = make_classification_dataset(str(root), SynthSpec(n=17, seed=11))
    text = Path(path).read_text()
    ds = load_dataset(path)
    for i in (3, 12):
        line = f"    label: {CLASSES[ds.sample(i).label[0]]}\n"
        start = text.index(f"SYNC_011{i:06d}.jpg")
        text = text[:start] + text[start:].replace(line, "", 1)
    with open(path, "w") as fh:
        fh.write(text)
    return path


@pytest.fixture(scope="module")
def cls_runs(cls_data, tmp_path_factory):
    base = tmp_path_factory.mktemp("cls-runs")
    out = {}
    for model in ("demo-classifier", "demo-classifier-onnx"):
        for loader in LOADERS:
            for n in (1, 2, 3):
                d = str(base / f"{model}-{loader}-{n}")
                proc = mpirun(n, "run", "--dataset", cls_data, "--model", model, "--out", d, "--split", "all",
                              "--batch-size", "4", "--loader", loader)
                assert proc.returncode == 0, proc.stderr
                out[(model, loader, n)] = (d, proc)
    return out


def test_records_are_identical_for_every_n_loader_and_model_file(cls_runs):
    ref = rows(cls_runs[("demo-classifier", "opencv", 1)][0])
    assert [int(r["index"]) for r in ref] == list(range(17))
    for key, (d, proc) in cls_runs.items():
        got = rows(d)
        assert [(r["index"], r["split"], r["label"], r["predicted"], r["status"]) for r in got] == \
               [(r["index"], r["split"], r["label"], r["predicted"], r["status"]) for r in ref], key
        for a, b in zip(got, ref):
            assert abs(float(a["probability"]) - float(b["probability"])) <= 1e-5
        assert "task: classification, 3 classes (nevus, melanoma, keratosis)" in proc.stderr
        assert "accuracy" in proc.stdout


def test_summary_counts_metrics_and_unlabelled_images(cls_runs):
    d, _ = cls_runs[("demo-classifier", "opencv", 2)]
    s = summary(d)
    assert s["task"] == "classification" and s["classes"] == list(CLASSES)
    assert s["images"] == {"selected": 17, "scored": 15, "unscored": 2, "failed": 0, "converted": 0}
    assert s["profile"]["name"] == "lenet-64" and s["arch"] == "lenet"
    assert sum(sum(row) for row in s["metrics"]["confusion_matrix"]) == 15
    got = {int(r["index"]): r for r in rows(d)}
    assert got[3]["status"] == got[12]["status"] == "unscored" and got[3]["label"] == "" and got[3]["predicted"]
    assert s["metrics"]["accuracy"] >= 0.8
    assert sum(v["images"]["selected"] for v in s["per_split"].values()) == 17


def test_report_for_a_classification_run(cls_runs, tmp_path):
    import shutil
    import subprocess
    import sys

    d = str(tmp_path / "run")
    shutil.copytree(cls_runs[("demo-classifier", "opencv", 2)][0], d)
    proc = subprocess.run([sys.executable, "-m", "mpi_infer", "report", d], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    page = Path(d, "report.html").read_text()
    for fid in ("confusion", "per-class", "worst", "ranks"):
        assert f"id='{fid}'" in page
    assert "balanced accuracy" in page


def test_demo_classifier_is_accurate_on_a_fresh_seed(tmp_path):
    path = make_classification_dataset(str(tmp_path / "fresh"), SynthSpec(n=120, seed=4242))
    out = str(tmp_path / "o")
    proc = mpirun(2, "run", "--dataset", path, "--model", "demo-classifier-onnx", "--out", out, "--split", "all")
    assert proc.returncode == 0, proc.stderr
    assert summary(out)["metrics"]["accuracy"] >= 0.9


def test_shipped_onnx_classifier_is_what_convert_makes_of_the_bin():
    from mpi_infer.models.eddl_bin import read_records
    from mpi_infer.models.files import demo_model

    net = classifier_from_records(read_records(demo_model("bin", "demo_lenet")), "lenet")
    with open(demo_model("onnx", "demo_lenet"), "rb") as fh:
        assert fh.read() == build_classifier_onnx(net, 64, 64, name="demo_lenet").SerializeToString()


def logits_classifier(path: str) -> str:
    """The demo LeNet without its final Softmax: class logits."""
    from mpi_infer.models.files import demo_model

    model = onnx.load(demo_model("onnx", "demo_lenet"))
    softmax = next(n for n in model.graph.node if n.op_type == "Softmax")
    model.graph.node.remove(softmax)
    for n in model.graph.node:
        if "output" in n.output:
            raise AssertionError
    model.graph.output[0].name = softmax.input[0]
    onnx.save(model, path)
    return path


def test_onnx_classifier_with_logits(cls_data, cls_runs, tmp_path):
    model = logits_classifier(str(tmp_path / "logits.onnx"))
    proc = mpirun(2, "run", "--dataset", cls_data, "--model", model, "--out", str(tmp_path / "a"), "--split", "all",
                  "--profile", "lenet-64")
    assert proc.returncode == 11 and "it looks like logits: add --activation softmax" in proc.stderr
    out = str(tmp_path / "b")
    proc = mpirun(2, "run", "--dataset", cls_data, "--model", model, "--out", out, "--split", "all",
                  "--profile", "lenet-64", "--activation", "softmax")
    assert proc.returncode == 0, proc.stderr
    ref = rows(cls_runs[("demo-classifier", "opencv", 1)][0])
    for a, b in zip(rows(out), ref):
        assert a["predicted"] == b["predicted"] and abs(float(a["probability"]) - float(b["probability"])) < 1e-5


def test_multi_label_and_mask_labels_are_refused(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    for label, needle in (("[nevus, melanoma]", "images[1].label: 2 classes (a multi-label dataset)"),
                          ("masks/x.png", "images[1].label: 'masks/x.png' is not one of the classes")):
        (tmp_path / "d.yml").write_text(f"classes: [nevus, melanoma]\nimages:\n  - {{location: a.jpg, label: 0}}\n"
                                        f"  - {{location: a.jpg, label: {label}}}\nsplit: {{test: [0, 1]}}\n")
        proc = mpirun(2, "run", "--dataset", str(tmp_path / "d.yml"), "--model", "demo-classifier", "--out",
                      str(tmp_path / "o"))
        assert proc.returncode == 10, proc.stderr
        assert needle in proc.stderr


def test_a_classifier_whose_classes_do_not_match_the_dataset(cls_data, tmp_path):
    from mpi_infer.models.eddl_bin import write_records

    net = random_classifier("lenet", [4, 4], [8], 5, 64, 64)
    path = str(tmp_path / "five.bin")
    write_records(path, records_from_classifier(net))
    proc = mpirun(1, "run", "--dataset", cls_data, "--model", path, "--out", str(tmp_path / "o"), "--profile",
                  "lenet-64")
    assert proc.returncode == 11 and "the dataset has 3 classes, so expected [N, 3]" in proc.stderr
    proc = mpirun(1, "run", "--dataset", cls_data, "--model", path, "--out", str(tmp_path / "o2"))
    assert proc.returncode == 11 and "pick the matching --profile or --size" in proc.stderr  # vgg16-224 default


def test_classification_resume_after_a_crash_with_another_n(cls_data, tmp_path):
    out = str(tmp_path / "o")
    proc = mpirun(2, "run", "--dataset", cls_data, "--model", "demo-classifier", "--out", out, "--split", "all",
                  "--batch-size", "2", env={"MPI_INFER_FAULT": "raise:rank=1:after=4"})
    assert proc.returncode != 0
    proc = mpirun(3, "run", "--dataset", cls_data, "--model", "demo-classifier", "--out", out, "--split", "all",
                  "--resume")
    assert proc.returncode == 0, proc.stderr
    s = summary(out)
    assert s["images"]["selected"] == 17 and s["resumed_images"] >= 4
    assert [int(r["index"]) for r in rows(out)] == list(range(17))
