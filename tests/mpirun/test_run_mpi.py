"""The distributed run under a real mpirun: same per-image scores for every N, exact counts, and
results equal to an independent in-process computation."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import onnxruntime as ort
import pytest
from conftest import mpirun

from mpi_infer.data.dataset import load_dataset
from mpi_infer.models.files import demo_model
from mpi_infer.stages.stack import pyecvl_available

pytestmark = pytest.mark.mpi


def rows(out_dir) -> list[dict[str, str]]:
    with open(os.path.join(out_dir, "per_image.csv"), newline="") as fh:
        return list(csv.DictReader(fh))


def summary(out_dir) -> dict:
    with open(os.path.join(out_dir, "summary.json")) as fh:
        return json.load(fh)


@pytest.fixture(scope="module")
def runs(synth_small, tmp_path_factory):
    """One run per world size: 1, 2, 3 and 20 (more ranks than the 13 images)."""
    base = tmp_path_factory.mktemp("runs")
    out = {}
    for n in (1, 2, 3, 20):
        d = str(base / f"n{n}")
        proc = mpirun(n, "run", "--dataset", synth_small, "--model", "demo-onnx", "--out", d, "--split", "all",
                      "--batch-size", "4", "--progress-interval", "0.2")
        assert proc.returncode == 0, proc.stderr
        out[n] = (d, proc)
    return out


def test_every_world_size_gives_identical_per_image_scores(runs):
    reference = rows(runs[1][0])
    assert [int(r["index"]) for r in reference] == list(range(13))  # dataset order, every image once
    for n, (d, _) in runs.items():
        got = rows(d)
        assert [(r["index"], r["split"], r["location"], r["status"]) for r in got] == \
               [(r["index"], r["split"], r["location"], r["status"]) for r in reference]
        for a, b in zip(got, reference):
            assert abs(float(a["iou"]) - float(b["iou"])) <= 1e-9
            assert abs(float(a["dice"]) - float(b["dice"])) <= 1e-9
        assert {int(r["rank"]) for r in got} <= set(range(n))


def test_summary_counts_and_contract(runs):
    for n, (d, proc) in runs.items():
        s = summary(d)
        assert s["images"] == {"selected": 13, "scored": 13, "unscored": 0, "failed": 0, "converted": 0}
        assert s["world_size"] == n
        assert set(s["per_split"]) == {"training", "validation", "test"}
        assert sum(v["images"]["selected"] for v in s["per_split"].values()) == 13
        for key in ("mean_iou", "mean_dice", "global_iou", "global_dice"):
            assert 0 <= s["metrics"][key] <= 1
        for key in ("hosts", "backend", "profile", "threshold", "model_sha256", "dataset_sha256", "timings"):
            assert key in s
        assert s["profile"]["size"] == [192, 192] and s["profile"]["interpolation"] == "linear"
        assert s["backend"]["engine"] == "onnx"  # auto: ONNX Runtime computes
        assert s["backend"]["loader"] == ("ecvl" if pyecvl_available() else "opencv")  # ECVL loads where it can
        assert "loader ecvl (auto: pyecvl imports)" in proc.stderr or not pyecvl_available()
        assert len(s["timings"]["per_rank"]) == n
        assert "mean Dice" in proc.stdout  # the one-screen table
        assert "[rank 0] progress: 13/13" in proc.stderr


def test_ranks_with_empty_shards_took_part(runs):
    s = summary(runs[20][0])
    per_rank = {r["rank"]: r["images"] for r in s["timings"]["per_rank"]}
    assert len(per_rank) == 20 and sum(per_rank.values()) == 13
    assert sum(1 for v in per_rank.values() if v == 0) >= 7


def independent_scores(dataset_path: str, model_path: str) -> dict[int, tuple[float, float]]:
    """The same metrics computed here with plain OpenCV + ONNX Runtime, one image at a time."""
    ds = load_dataset(dataset_path)
    sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    out = {}
    for i in range(len(ds)):
        s = ds.sample(i)
        img = cv2.cvtColor(cv2.imread(s.locations[0], cv2.IMREAD_ANYCOLOR), cv2.COLOR_BGR2RGB)
        img = cv2.resize(img, (192, 192), interpolation=cv2.INTER_LINEAR)
        x = (img.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
        prob = sess.run(None, {"input": x})[0][0, 0]
        gt = cv2.resize(cv2.imread(s.label_path, cv2.IMREAD_GRAYSCALE), (192, 192),
                        interpolation=cv2.INTER_NEAREST).astype(np.float32) / 255.0
        p, g = prob >= 0.5, gt >= 0.5
        inter, union = float((p & g).sum()), float((p | g).sum())
        out[i] = ((inter + 1e-6) / (union + 1e-6), (2 * inter + 1e-6) / (p.sum() + g.sum() + 1e-6))
    return out


def test_results_equal_an_in_process_computation(runs, synth_small):
    want = independent_scores(synth_small, demo_model("onnx"))
    for r in rows(runs[3][0]):
        iou, dice = want[int(r["index"])]
        assert abs(float(r["iou"]) - iou) <= 1e-9
        assert abs(float(r["dice"]) - dice) <= 1e-9
    s = summary(runs[3][0])
    assert s["metrics"]["mean_iou"] == pytest.approx(np.mean([v[0] for v in want.values()]), abs=1e-12)


def test_dry_run_prints_plan_without_loading_model(synth_small, tmp_path):
    proc = mpirun(3, "run", "--dataset", synth_small, "--model", str(tmp_path / "no-such-model.onnx"),
                  "--out", str(tmp_path / "o"), "--split", "all", "--dry-run", "--shard-by", "images")
    assert proc.returncode == 0, proc.stderr
    assert "plan: 13 image(s) in 3 shard(s) by images" in proc.stdout
    assert "rank    2:        5 image(s)  (training 3, validation 1, test 1)" in proc.stdout
    assert not (tmp_path / "o").exists()


def test_bin_model_gives_the_same_scores_as_its_onnx(runs, synth_small, tmp_path):
    d = str(tmp_path / "bin")
    proc = mpirun(2, "run", "--dataset", synth_small, "--model", "demo", "--arch", "segnet", "--out", d,
                  "--split", "all")
    assert proc.returncode == 0, proc.stderr
    cached = [f for f in os.listdir(os.path.join(d, ".cache")) if f.endswith(".onnx")]
    assert len(cached) == 1  # converted once, by rank 0, keyed by content hash
    for a, b in zip(rows(d), rows(runs[1][0])):
        assert abs(float(a["dice"]) - float(b["dice"])) <= 1e-6


def test_plain_single_process_without_mpirun(synth_small, tmp_path):
    d = str(tmp_path / "single")
    proc = subprocess.run([sys.executable, "-m", "mpi_infer", "run", "--dataset", synth_small, "--model",
                           "demo-onnx", "--out", d, "--save-masks"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    s = summary(d)
    assert s["splits"] == ["test"] and s["images"]["selected"] == 3  # default split: test
    masks = sorted(os.listdir(os.path.join(d, "masks")))
    assert len(masks) == 3
    ds = load_dataset(synth_small)
    for name in masks:
        index = int(name.split("_")[0])
        m = cv2.imread(os.path.join(d, "masks", name), cv2.IMREAD_UNCHANGED)
        img = cv2.imread(ds.sample(index).locations[0])
        assert m.shape == img.shape[:2]  # original size
        assert set(np.unique(m)) <= {0, 255}


def test_images_without_masks_are_predicted_and_unscored(synth_small, tmp_path):
    ds = load_dataset(synth_small)
    text = "images:\n" + "".join(f"  - {ds.sample(i).locations[0]}\n" for i in range(4))
    text += f"  - location: {ds.sample(4).locations[0]}\n    label: {ds.sample(4).label_path}\n"
    text += "split:\n  test: [0, 1, 2, 3, 4]\n"
    p = tmp_path / "nolabels.yml"
    p.write_text(text)
    d = str(tmp_path / "o")
    proc = mpirun(2, "run", "--dataset", str(p), "--model", "demo-onnx", "--out", d, "--save-masks")
    assert proc.returncode == 0, proc.stderr
    s = summary(d)
    assert s["images"] == {"selected": 5, "scored": 1, "unscored": 4, "failed": 0, "converted": 0}
    assert len(os.listdir(os.path.join(d, "masks"))) == 5
    assert [r["status"] for r in rows(d)] == ["unscored"] * 4 + ["ok"]
