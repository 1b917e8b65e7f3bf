"""Evaluation a reviewer accepts: distributions and bootstrap CIs (identical for any N), the ISIC 2018 Task 1 set,
the threshold curve (its 0.3 equals a run at --threshold 0.3, image for image), per-class ROC AUC, average
precision and calibration equal to scikit-learn's, and --group-by's group bootstrap, under a real mpirun."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import mpirun, read_rows, read_summary
from sklearn import metrics as skm

from mpi_infer.outputs.ledger import read_ledgers
from mpi_infer.tasks.classification import average_precision, calibration, classification_metrics, weighted_auc
from mpi_infer.tasks.segmentation import CURVE, confusion, image_metrics, threshold_counts
from mpi_infer.tasks.stats import bootstrap_sums, describe, percentile_ci


def test_threshold_counts_equal_confusion_at_every_threshold():
    rng = np.random.default_rng(0)
    prob = rng.random((5, 24, 31)).astype(np.float32)
    on = np.asarray(CURVE, np.float32)
    prob[0, :19] = on[:, None]  # exactly on the thresholds: >= counts them
    prob[1, :19] = np.nextafter(on, np.float32(0))[:, None]  # one float32 step below: not counted
    prob[2, :19] = np.nextafter(on, np.float32(1))[:, None]
    prob[3, 0, :4] = (0.0, 1.0, 0.9999999, 1e-9)
    mask = rng.choice(np.array([0, 255, 13, 77, 128, 200], np.uint8), size=(5, 24, 31))  # stray values too
    counts = threshold_counts(prob, mask)
    for k, t in enumerate(CURVE):
        tp, fp, fn = confusion(prob, mask, t)
        assert np.array_equal(counts[:, k, 0], tp) and np.array_equal(counts[:, k, 1], fp)
        assert np.array_equal(counts[:, k, 2], fn), t


def test_describe_and_the_isic_set():
    v = np.random.default_rng(1).random(101)
    d = describe(v)
    assert d["n"] == 101 and d["median"] == pytest.approx(np.median(v)) and d["std"] == pytest.approx(v.std(ddof=1))
    assert d["p5"] == pytest.approx(np.percentile(v, 5)) and d["max"] == v.max()
    m = image_metrics([50, 0, 10], [5, 0, 90], [5, 0, 0], [940, 1000, 900])
    assert m["iou"][0] == pytest.approx(50 / 60) and m["thresholded_jaccard"][0] == pytest.approx(50 / 60)
    assert m["thresholded_jaccard"][2] == 0.0  # J = 0.1 < 0.65
    assert m["sensitivity"][0] == pytest.approx(50 / 55) and m["specificity"][0] == pytest.approx(940 / 945)
    assert m["accuracy"][0] == pytest.approx(990 / 1000)
    assert m["iou"][1] == 1.0 and m["sensitivity"][1] == 1.0  # empty ground truth, empty prediction: defined


def test_bootstrap_is_seeded_and_covers_the_mean():
    v = np.random.default_rng(2).random((300, 1))
    sums = np.column_stack([v, np.ones(300)])
    a = bootstrap_sums(sums, 2000, 7, "test")
    b = bootstrap_sums(sums, 2000, 7, "test")
    assert np.array_equal(a, b) and a.shape == (2000, 2)
    lo, hi = percentile_ci(a[:, 0] / a[:, 1])
    assert lo < v.mean() < hi and hi - lo == pytest.approx(2 * 1.96 * v.std() / np.sqrt(300), rel=0.15)
    assert not np.array_equal(a, bootstrap_sums(sums, 2000, 8, "test"))


def test_classification_extras_equal_scikit_learn():
    rng = np.random.default_rng(3)
    n, c = 400, 4
    targets = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c)) + 1.5 * np.eye(c)[targets]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    probs[:20] = np.round(probs[:20], 1)  # ties
    m = classification_metrics(targets, probs, [f"c{k}" for k in range(c)])
    for k in range(c):
        pc = m["per_class"][f"c{k}"]
        assert pc["roc_auc"] == pytest.approx(skm.roc_auc_score(targets == k, probs[:, k]), abs=1e-12)
        assert pc["average_precision"] == pytest.approx(skm.average_precision_score(targets == k, probs[:, k]),
                                                        abs=1e-12)
        tn, fp, fn, tp = skm.confusion_matrix(targets == k, probs.argmax(axis=1) == k).ravel()
        assert pc["sensitivity"] == pytest.approx(tp / (tp + fn)) and pc["specificity"] == pytest.approx(tn / (tn + fp))
    assert m["macro_auc"] == pytest.approx(np.mean([skm.roc_auc_score(targets == k, probs[:, k]) for k in range(c)]))
    clean = probs[20:] / probs[20:].sum(axis=1, keepdims=True)  # sklearn's multiclass form wants rows summing to 1
    again = classification_metrics(targets[20:], clean, [f"c{k}" for k in range(c)])
    assert again["macro_auc"] == pytest.approx(skm.roc_auc_score(targets[20:], clean, multi_class="ovr"))
    roc = m["per_class"]["c0"]["roc"]
    fpr, tpr, _ = skm.roc_curve(targets == 0, probs[:, 0])
    assert np.interp(0.3, roc["fpr"], roc["tpr"]) == pytest.approx(np.interp(0.3, fpr, tpr), abs=0.02)
    # ECE, 15 equal-width bins (lo, hi] of the top-class probability, computed here independently
    conf, hit = probs.max(axis=1), probs.argmax(axis=1) == targets
    edges = np.linspace(0, 1, 16)
    ece = sum(abs(hit[(conf > lo) & (conf <= hi)].mean() - conf[(conf > lo) & (conf <= hi)].mean())
              * ((conf > lo) & (conf <= hi)).sum() / n for lo, hi in zip(edges[:-1], edges[1:])
              if ((conf > lo) & (conf <= hi)).any())
    assert m["calibration"]["ece"] == pytest.approx(ece, abs=1e-12)
    assert calibration(probs, targets)["ece"] == m["calibration"]["ece"]
    w = np.ones((1, n))
    assert weighted_auc(probs[:, 0], targets == 0, w)[0] == pytest.approx(m["per_class"]["c0"]["roc_auc"])
    assert average_precision(probs[:, 1], np.zeros(n, bool)) is None


@pytest.fixture(scope="module")
def stat_runs(synth_small, tmp_path_factory):
    base = tmp_path_factory.mktemp("stats")
    out = {}
    for n in (1, 2, 3):
        d = str(base / f"n{n}")
        proc = mpirun(n, "run", "--dataset", synth_small, "--model", "demo-onnx", "--out", d, "--split", "all",
                      "--quiet", *(["--schedule", "dynamic"] if n == 3 else []))
        assert proc.returncode == 0, proc.stderr
        out[n] = d
    at03 = str(base / "t03")
    assert mpirun(2, "run", "--dataset", synth_small, "--model", "demo-onnx", "--out", at03, "--split", "all",
                  "--quiet", "--threshold", "0.3").returncode == 0
    out["t03"] = at03
    return out


def test_statistics_and_cis_are_identical_for_any_n_and_schedule(stat_runs):
    s = {n: read_summary(stat_runs[n]) for n in (1, 2, 3)}
    for n in (2, 3):
        assert s[n]["statistics"] == s[1]["statistics"]
        assert s[n]["per_split"] == s[1]["per_split"] and s[n]["threshold_curve"] == s[1]["threshold_curve"]
    st = s[1]["statistics"]
    assert set(st) >= {"iou", "dice", "thresholded_jaccard", "sensitivity", "specificity", "accuracy",
                       "global_iou", "global_dice"}
    lo, hi = st["dice"]["ci95"]
    assert lo <= st["dice"]["mean"] <= hi and st["dice"]["mean"] == s[1]["metrics"]["mean_dice"]
    assert st["global_dice"]["ci95"][0] <= s[1]["metrics"]["global_dice"] <= st["global_dice"]["ci95"][1]
    assert s[1]["metrics"]["isic_score"] == st["thresholded_jaccard"]["mean"]
    assert s[1]["bootstrap"] == {"replicates": 2000, "seed": 0, "ci": "95% percentile", "unit": "image"}
    rows = read_rows(stat_runs[1])
    assert {"thresholded_jaccard", "sensitivity", "specificity", "accuracy"} <= set(rows[0])


def test_threshold_curve_at_0_3_equals_a_run_at_0_3_image_for_image(stat_runs):
    k = CURVE.index(0.3)
    curve = {r["index"]: r["curve"] for r in read_ledgers(stat_runs[2])}
    separate = {int(r["index"]): r for r in read_rows(stat_runs["t03"])}
    for index, counts in curve.items():
        tp, fp, fn = counts[3 * k : 3 * k + 3]
        iou = (tp + 1e-6) / (tp + fp + fn + 1e-6)
        assert iou == float(separate[index]["iou"]), index
    s, t = read_summary(stat_runs[2]), read_summary(stat_runs["t03"])
    assert s["threshold_curve"]["mean_dice"][k] == t["metrics"]["mean_dice"]
    assert s["threshold_curve"]["global_iou"][k] == t["metrics"]["global_iou"]
    assert s["threshold_curve"]["mean_dice"][CURVE.index(0.5)] == s["metrics"]["mean_dice"]
    sel = s["threshold_selection"]
    assert sel["picked_on"] == "validation" and sel["threshold"] == s["per_split"]["validation"][
        "threshold_curve"]["best"]["threshold"]


def test_the_ci_is_the_same_after_a_resume_with_another_n(synth_small, stat_runs, tmp_path):
    out = str(tmp_path / "o")
    proc = mpirun(2, "run", "--dataset", synth_small, "--model", "demo-onnx", "--out", out, "--split", "all",
                  "--batch-size", "2", env={"MPI_INFER_FAULT": "kill:rank=1:after=2"})
    assert proc.returncode != 0
    proc = mpirun(3, "run", "--dataset", synth_small, "--model", "demo-onnx", "--out", out, "--split", "all",
                  "--batch-size", "2", "--resume", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert read_summary(out)["statistics"] == read_summary(stat_runs[1])["statistics"]


def test_group_by_resamples_groups_and_reports_each(synth_small, tmp_path):
    out = str(tmp_path / "g")
    # SYN_007000012.jpg: the last digit as a "patient" (10 groups of 1-2 images)
    proc = mpirun(2, "run", "--dataset", synth_small, "--model", "demo-onnx", "--out", out, "--split", "all",
                  "--quiet", "--group-by", r"SYN_\d{8}(\d)\.jpg")
    assert proc.returncode == 0, proc.stderr
    s = read_summary(out)
    assert s["bootstrap"]["unit"] == "group" and s["groups"]["groups"] == 10 and s["groups"]["unmatched_images"] == 0
    assert sum(g["images"] for g in s["groups"]["per_group"].values()) == 13
    assert s["statistics"]["dice"]["mean"] == s["metrics"]["mean_dice"]
    bad = mpirun(1, "run", "--dataset", synth_small, "--model", "demo-onnx", "--out", str(tmp_path / "b"),
                 "--group-by", "no-group")
    assert bad.returncode == 2 and "exactly one capture group" in bad.stderr


def test_classification_cis_under_mpirun(tmp_path):
    from mpi_infer.data.synth import SynthSpec, make_classification_dataset

    data = make_classification_dataset(str(tmp_path / "cls"), SynthSpec(n=30, seed=4))
    outs = []
    for n in (1, 3):
        out = str(tmp_path / f"o{n}")
        assert mpirun(n, "run", "--dataset", data, "--model", "demo-classifier", "--out", out, "--split", "all",
                      "--quiet").returncode == 0
        outs.append(read_summary(out))
    assert outs[0]["statistics"] == outs[1]["statistics"]
    assert set(outs[0]["statistics"]) == {"accuracy", "balanced_accuracy", "macro_f1", "macro_auc"}
    assert "calibration" in outs[0]["metrics"] and outs[0]["metrics"]["macro_auc"] is not None
    with open(os.path.join(tmp_path / "o1", "summary.json")) as fh:
        assert json.load(fh)["metrics"]["per_class"]["nevus"]["roc_auc"] is not None


def boundary_cases():
    """Masks with holes, several components, and edges touching the image border."""
    import cv2

    rng = np.random.default_rng(9)
    cases = []
    for t in range(24):
        g = np.zeros((96, 128), np.uint8)
        for _ in range(1 + t % 3):
            cv2.ellipse(g, (int(rng.integers(10, 118)), int(rng.integers(10, 86))),
                        (int(rng.integers(5, 30)), int(rng.integers(5, 25))), float(rng.uniform(0, 180)), 0, 360, 1, -1)
        if t % 3 == 0:
            g[40:48, 60:70] = 0  # a hole
        if t % 4 == 0:
            g[:, :4] = 1  # on the image's edge
        p = np.roll(g, int(rng.integers(-4, 5)), axis=int(t % 2)).copy()
        if t % 5 == 0:
            p[5:15, 100:120] = 1  # a false component
        cases.append((p, g))
    return cases


def test_boundary_metrics_equal_medpy_and_surface_distance():
    import surface_distance
    from medpy.metric import binary as medpy_binary

    from mpi_infer.tasks.segmentation import boundary_metrics

    for p, g in boundary_cases():
        hd95, assd, nsd = boundary_metrics(p, g, 2.0, "worst")
        assert hd95 == pytest.approx(medpy_binary.hd95(p, g), abs=1e-5)
        assert assd == pytest.approx(medpy_binary.assd(p, g), abs=1e-5)
        dists = surface_distance.compute_surface_distances(g.astype(bool), p.astype(bool), (1.0, 1.0))
        assert nsd == pytest.approx(surface_distance.compute_surface_dice_at_tolerance(dists, 2.0), abs=1e-9)
    empty = np.zeros((96, 128), np.uint8)
    some = boundary_cases()[0][1]
    assert boundary_metrics(empty, empty, 2.0, "worst") == (0.0, 0.0, 1.0)  # both empty: perfect
    diagonal = float(np.hypot(96, 128))
    assert boundary_metrics(empty, some, 2.0, "worst") == (diagonal, diagonal, 0.0)  # never a NaN
    assert boundary_metrics(some, empty, 2.0, "exclude") == (None, None, None)


def test_boundary_metrics_under_mpirun_name_their_policy_and_counts(synth_small, tmp_path):
    outs = []
    for n in (1, 3):
        out = str(tmp_path / f"b{n}")
        proc = mpirun(n, "run", "--dataset", synth_small, "--model", "demo-onnx", "--out", out, "--split", "all",
                      "--boundary-metrics", "--nsd-tolerance", "1.5")
        assert proc.returncode == 0, proc.stderr
        outs.append(read_summary(out))
    assert "boundary (worst): HD95 px" in proc.stdout and "worst case 0" in proc.stdout
    s = outs[0]
    assert outs[1]["statistics"] == s["statistics"]
    assert s["boundary"]["tolerance_px"] == 1.5 and s["boundary"]["empty_policy"] == "worst"
    for key in ("hd95", "assd", "nsd"):
        st = s["statistics"][key]
        assert st["n"] == 13 and st["worst_case_images"] == 0 and st["excluded_images"] == 0
        assert st["ci95"][0] <= st["mean"] <= st["ci95"][1]
    rows = read_rows(str(tmp_path / "b1"))
    assert {"hd95", "assd", "nsd"} <= set(rows[0]) and all(r["nsd"] != "" for r in rows)


def test_score_at_original_equals_an_independent_full_size_computation(synth_small, tmp_path):
    import cv2
    import onnxruntime as ort

    from mpi_infer.data.dataset import load_dataset
    from mpi_infer.models.files import demo_model

    out = str(tmp_path / "o")
    proc = mpirun(2, "run", "--dataset", synth_small, "--model", "demo-onnx", "--out", out, "--split", "all",
                  "--quiet", "--score-at", "original")
    assert proc.returncode == 0, proc.stderr
    s = read_summary(out)
    assert s["score_at"] == "original" and "own size" in s["metric_resolution"]
    ds = load_dataset(synth_small)
    sess = ort.InferenceSession(demo_model("onnx"))
    for r in read_rows(out):
        sample = ds.sample(int(r["index"]))
        bgr = cv2.imread(sample.locations[0], cv2.IMREAD_ANYCOLOR)
        x = cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (192, 192), interpolation=cv2.INTER_LINEAR)
        prob = sess.run(None, {"input": (x.astype(np.float32) * np.float32(1 / 255)).transpose(2, 0, 1)[None]})[0]
        full = cv2.resize(prob[0, 0], (bgr.shape[1], bgr.shape[0]), interpolation=cv2.INTER_LINEAR) >= 0.5
        gt = cv2.imread(sample.label_path, cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255 >= 0.5
        inter, union = np.count_nonzero(full & gt), np.count_nonzero(full | gt)
        assert float(r["iou"]) == pytest.approx((inter + 1e-6) / (union + 1e-6), abs=1e-6), r["index"]
    network = str(tmp_path / "n")
    assert mpirun(1, "run", "--dataset", synth_small, "--model", "demo-onnx", "--out", network, "--split", "all",
                  "--quiet").returncode == 0
    assert read_summary(network)["score_at"] == "network"
    proc = mpirun(1, "run", "--dataset", synth_small, "--model", "demo-onnx", "--out", out, "--split", "all",
                  "--resume")
    assert proc.returncode == 12 and "different score_at" in proc.stderr


def test_classification_group_by(tmp_path):
    from mpi_infer.data.synth import SynthSpec, make_classification_dataset

    data = make_classification_dataset(str(tmp_path / "cls"), SynthSpec(n=24, seed=6))
    out = str(tmp_path / "o")
    assert mpirun(2, "run", "--dataset", data, "--model", "demo-classifier", "--out", out, "--split", "all",
                  "--quiet", "--group-by", r"SYNC_\d{8}(\d)\.jpg").returncode == 0
    s = read_summary(out)
    assert s["bootstrap"]["unit"] == "group" and s["groups"]["groups"] == 10
    assert sum(g["images"] for g in s["groups"]["per_group"].values()) == 24
    assert all(0 <= g["accuracy"] <= 1 for g in s["groups"]["per_group"].values())
    assert s["statistics"]["accuracy"]["ci95"][0] <= s["metrics"]["accuracy"] <= s["statistics"]["accuracy"]["ci95"][1]


def test_every_json_written_is_strict(tmp_path):
    """No NaN or Infinity in summary.json, run.json or a ledger line, even where a statistic is undefined (a
    split without a scored image): strict parsers (jq, JavaScript, Go) read them."""
    from mpi_infer.data.synth import SynthSpec, make_dataset

    data = make_dataset(str(tmp_path / "d"), SynthSpec(n=5, seed=3))
    out = tmp_path / "o"
    assert mpirun(2, "run", "--dataset", data, "--model", "demo", "--out", str(out), "--split", "all",
                  "--boundary-metrics", "--group-by", r"(\d)\.jpg").returncode == 0

    def strict(text: str) -> None:
        json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in JSON"))

    strict((out / "summary.json").read_text())
    strict((out / "run.json").read_text())
    for ledger in (out / "ledger").iterdir():
        for line in ledger.read_text().splitlines():
            strict(line)
