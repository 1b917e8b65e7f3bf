"""Several models in one pass (--model repeated, --ensemble, --tta), under real mpirun: each model's per-image
results equal its own single-model run, the ensemble equals an average of the models' outputs computed here with
ONNX Runtime, resume after a crash with another N gives the same files, and the comparisons are the same for
any N."""

from __future__ import annotations

import os

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import mpirun, read_rows, read_summary
from onnx import numpy_helper

from mpi_infer.data.synth import SynthSpec, make_classification_dataset, make_dataset
from mpi_infer.models.files import demo_model

pytestmark = pytest.mark.mpi
SCORES = ("index", "split", "status", "iou", "dice", "thresholded_jaccard", "sensitivity", "specificity")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_dataset(str(tmp_path_factory.mktemp("mm")), SynthSpec(n=15, seed=21))


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Two real ONNX models besides the demo: its last bias shifted, so their masks differ."""
    folder = tmp_path_factory.mktemp("models")
    out = {}
    for name, shift in (("low", -1.5), ("high", 1.0)):
        m = onnx.load(demo_model("onnx"))
        for init in m.graph.initializer:
            if init.name == "conv25.bias":
                init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + np.float32(shift), init.name))
        path = str(folder / f"{name}.onnx")
        onnx.save(m, path)
        out[name] = path
    return out


def run(n: int, data: str, out: str, *models: str, extra: tuple[str, ...] = (), env=None):
    args = ["run", "--dataset", data, "--out", out, "--split", "all", "--quiet", "--batch-size", "4"]
    for m in models:
        args += ["--model", m]
    return mpirun(n, *args, *extra, env=env, timeout=180)


def by_model(rows: list[dict[str, str]]) -> dict[str, list[tuple]]:
    out: dict[str, list[tuple]] = {}
    for r in rows:
        out.setdefault(r["model"], []).append(tuple(r[k] for k in SCORES))
    return out


@pytest.fixture(scope="module")
def one_rank(data, variants, tmp_path_factory) -> dict:
    out = str(tmp_path_factory.mktemp("one") / "o")
    assert run(1, data, out, "demo", f"low={variants['low']}", f"high={variants['high']}").returncode == 0
    return read_summary(out)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_each_model_equals_its_own_run(data, variants, one_rank, tmp_path, n):
    out = str(tmp_path / "o")
    proc = run(n, data, out, "demo", f"low={variants['low']}", f"high={variants['high']}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_rows(out)
    assert [(r["index"], r["model"]) for r in rows] == [(str(i), m) for i in range(15) for m in ("demo", "low", "high")]
    got = by_model(rows)
    for name, path in (("demo", "demo"), ("low", variants["low"]), ("high", variants["high"])):
        single = str(tmp_path / f"single-{name}")
        assert run(1, data, single, path).returncode == 0
        assert got[name] == [tuple(r[k] for k in SCORES) for r in read_rows(single)], name
    s = read_summary(out)
    assert list(s["models"]) == ["demo", "low", "high"]
    assert s["metrics"] == s["models"]["demo"]["metrics"]  # the top level is the first model's
    assert s["best_model"]["metric"] == "mean_dice" and s["best_model"]["all"] in s["models"]
    assert len(s["comparison"]) == 3 and all("verdict" in c for c in s["comparison"])
    assert len({r["dice"] for r in rows if r["index"] == "0"}) == 3  # the three models really differ
    assert s["comparison"] == one_rank["comparison"]  # the paired CIs: the same for any N


def _preprocess(path: str, size: int = 192) -> np.ndarray:
    """The segnet-192 recipe written out here: decode, resize (linear), RGB, /255, NCHW."""
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    small = cv2.resize(bgr, (size, size), interpolation=cv2.INTER_LINEAR)
    rgb = cv2.cvtColor(small, cv2.COLOR_BGR2RGB).astype(np.float32) * np.float32(1 / 255)
    return rgb.transpose(2, 0, 1)[None]


def test_the_ensemble_is_the_mean_of_the_models_outputs(data, variants, tmp_path):
    out = str(tmp_path / "o")
    proc = run(2, data, out, f"low={variants['low']}", f"high={variants['high']}", extra=("--ensemble", "mean"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [r for r in read_rows(out) if r["model"] == "ensemble"]
    sessions = [ort.InferenceSession(variants[k], providers=["CPUExecutionProvider"]) for k in ("low", "high")]
    for r in rows:
        x = _preprocess(r["location"])
        prob = np.mean([s.run(None, {s.get_inputs()[0].name: x})[0][0, 0] for s in sessions], axis=0)
        gt = cv2.resize(cv2.imread(r["label"], cv2.IMREAD_GRAYSCALE), (192, 192), interpolation=cv2.INTER_NEAREST)
        p, g = prob >= 0.5, gt >= 128
        dice = 2 * (p & g).sum() / (p.sum() + g.sum()) if (p.sum() + g.sum()) else 1.0
        assert abs(float(r["dice"]) - dice) < 1e-6, r["index"]
    s = read_summary(out)
    assert list(s["models"]) == ["low", "high", "ensemble"]
    assert s["models"]["ensemble"]["combines"] == {"how": "mean", "models": ["low", "high"]}


def test_resume_after_a_crash_with_another_n_gives_the_same_files(data, variants, tmp_path):
    models = ("demo", f"low={variants['low']}")
    out = str(tmp_path / "o")
    proc = run(2, data, out, *models, extra=("--ensemble", "mean"), env={"MPI_INFER_FAULT": "kill:rank=1:after=4"})
    assert proc.returncode != 0
    again = run(3, data, out, *models, extra=("--ensemble", "mean", "--resume"))
    assert again.returncode == 0, again.stderr[-3000:]
    clean = str(tmp_path / "clean")
    assert run(1, data, clean, *models, extra=("--ensemble", "mean")).returncode == 0
    strip = [{k: v for k, v in r.items() if k != "rank"} for r in read_rows(out)]
    assert strip == [{k: v for k, v in r.items() if k != "rank"} for r in read_rows(clean)]
    assert read_summary(out)["comparison"] == read_summary(clean)["comparison"]
    refused = run(2, data, out, "demo", extra=("--resume",))  # another model set: refused, naming it
    assert refused.returncode == 12 and "models" in refused.stderr


def test_tta_flip_adds_an_uncertainty_and_is_the_same_for_any_n(data, tmp_path):
    outs = []
    for n in (1, 2):
        out = str(tmp_path / f"o{n}")
        proc = run(n, data, out, "demo", extra=("--tta", "flip", "--report"))
        assert proc.returncode == 0, proc.stderr[-3000:]
        outs.append(read_rows(out))
    assert "uncertainty" in outs[0][0] and "model" not in outs[0][0]
    values = [float(r["uncertainty"]) for r in outs[0] if r["uncertainty"]]
    assert values and all(v >= 0 for v in values) and max(values) > 0
    assert [{k: v for k, v in r.items() if k != "rank"} for r in outs[0]] == \
        [{k: v for k, v in r.items() if k != "rank"} for r in outs[1]]
    with open(os.path.join(str(tmp_path / "o1"), "report.html")) as fh:
        assert "Least certain images" in fh.read()


def test_models_from_a_folder_or_glob_and_bad_model_sets(data, variants, tmp_path):
    folder = os.path.dirname(variants["low"])
    out = str(tmp_path / "o")
    proc = run(2, data, out, folder, extra=("--report",))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list(read_summary(out)["models"]) == ["high", "low"]  # sorted file names, named by stem
    with open(os.path.join(out, "report.html")) as fh:
        page = fh.read()
    assert "models-scatter" in page and ("beats" in page or "score the same" in page)
    dup = run(1, data, str(tmp_path / "d"), variants["low"], variants["low"])
    assert dup.returncode == 2 and "given twice" in dup.stderr
    glob_ = run(1, data, str(tmp_path / "g"), os.path.join(folder, "*.onnx"), extra=("--dry-run",))
    assert glob_.returncode == 0, glob_.stderr
    m = onnx.load(variants["low"])  # a model for another input size: refused before inference, naming it
    m.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 224
    m.graph.input[0].type.tensor_type.shape.dim[3].dim_value = 224
    wrong = str(tmp_path / "wrong.onnx")
    onnx.save(m, wrong)
    bad = run(2, data, str(tmp_path / "b"), "demo", f"big={wrong}")
    assert bad.returncode == 11 and "model big" in bad.stderr, bad.stderr[-2000:]
    vote = run(1, data, str(tmp_path / "v"), "demo", f"low={variants['low']}", extra=("--ensemble", "vote"))
    assert vote.returncode == 12 and "classification" in vote.stderr


def test_classification_models_and_a_vote(tmp_path_factory, tmp_path):
    data = make_classification_dataset(str(tmp_path_factory.mktemp("cls")), SynthSpec(n=12, seed=4))
    out = str(tmp_path / "o")
    proc = run(2, data, out, "demo-classifier", "demo-classifier-onnx",
               extra=("--ensemble", "vote", "--tta", "flip", "--report"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_rows(out)
    assert [r["model"] for r in rows[:3]] == ["demo-classifier", "demo-classifier-onnx", "ensemble"]
    s = read_summary(out)
    assert s["best_model"]["metric"] == "accuracy" and "correct" in s["comparison"][0]
    for i in range(0, len(rows), 3):  # the same network twice: the vote is unanimous
        assert rows[i]["predicted"] == rows[i + 1]["predicted"] == rows[i + 2]["predicted"]
    assert all(r["uncertainty"] != "" for r in rows if r["model"] != "ensemble")
    with open(os.path.join(out, "report.html")) as fh:
        assert "Models (accuracy)" in fh.read()


def test_a_torn_ledger_reruns_the_image_for_every_model_exactly_once(data, variants, tmp_path):
    """A crash mid-write can leave one model's record of an image without the others': on --resume that image
    is re-run for every model, and each (image, model) is counted once."""
    models = ("demo", f"low={variants['low']}")
    out = str(tmp_path / "o")
    assert run(2, data, out, *models).returncode == 0
    clean = [{k: v for k, v in r.items() if k != "rank"} for r in read_rows(out)]
    ledger = os.path.join(out, "ledger", "attempt-000-rank-00001.jsonl")
    with open(ledger) as fh:
        lines = fh.readlines()
    with open(ledger, "w") as fh:  # the last image's second record torn away
        fh.writelines(lines[:-1])
    for name in ("summary.json", "per_image.csv"):
        os.unlink(os.path.join(out, name))
    again = run(3, data, out, *models, extra=("--resume",))
    assert again.returncode == 0, again.stderr[-3000:]
    s = read_summary(out)
    assert s["timings"]["images_this_attempt"] == 1 and s["resumed_images"] == 14
    assert [{k: v for k, v in r.items() if k != "rank"} for r in read_rows(out)] == clean
