"""The DeepHealth production path against the real pyecvl 1.3.0 / pyeddl 1.3.1 (ECVL 1.0.3, EDDL 1.1b).

They run wherever pyecvl and pyeddl import (a site's DeepHealth image, or the user's own install); there
MPI_INFER_REQUIRE_ECVL=1 makes a skip a failure. Elsewhere, CI included, each test skips saying why.
Nothing here fakes pyecvl or pyeddl."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from conftest import mpirun, need_ecvl
from conftest import read_rows as rows
from conftest import read_summary as summary

from mpi_infer.data.dataset import load_dataset
from mpi_infer.models.classifiers import build_classifier_onnx, classifier_from_records, records_from_classifier
from mpi_infer.models.eddl_bin import read_records, write_records
from mpi_infer.models.files import demo_model
from mpi_infer.models.segnet import build_onnx, forward_numpy, layers_from_records, random_layers, records_from_layers

pytestmark = [pytest.mark.mpi, pytest.mark.usefixtures("ecvl_stack")]
PAIRS = [("opencv", "onnx"), ("ecvl", "onnx"), ("ecvl", "eddl"), ("opencv", "eddl")]


def eddl_build(net, init_weights: bool):
    from pyeddl import eddl

    eddl.build(net, eddl.adam(0.001), ["binary_cross_entropy"], ["mean_squared_error"], eddl.CS_CPU(2), init_weights)
    eddl.set_mode(net, 0)
    return net


def eddl_forward(net, x: np.ndarray) -> np.ndarray:
    from pyeddl import eddl
    from pyeddl.tensor import Tensor

    eddl.forward(net, b=len(x))
    eddl.forward(net, [Tensor.fromarray(np.ascontiguousarray(x, np.float32))])
    return np.array(eddl.getOutput(eddl.getOut(net)[0]), copy=True)


def segnet_in_pyeddl(widths: list[int], size: int, bn: bool = False):
    """SegNet written out with plain pyeddl calls (UCP python/models.py), independently of mpi_infer's builder."""
    from pyeddl import eddl

    in_ = eddl.Input([3, size, size])
    x, k = in_, 0
    for block, n in enumerate((2, 2, 3, 3, 3, 3, 3, 3, 2, 1)):
        if block >= 5:
            x = eddl.UpSampling2D(x, [2, 2])
        for _ in range(n):
            x = eddl.Conv2D(x, widths[k], [3, 3], [1, 1], "same")
            x = eddl.ReLu(eddl.BatchNormalization(x, True) if bn else x)
            k += 1
        if block < 5:
            x = eddl.MaxPool2D(x, [2, 2], [2, 2], "none")
    out = eddl.Sigmoid(eddl.Conv2D(x, widths[k], [3, 3], [1, 1], "same"))
    return eddl.Model([in_], [out])


def seeded_segnet(widths: list[int], size: int, bn: bool, folder) -> object:
    """A SegNet in pyeddl with He-scaled random weights (and BN statistics away from 0/1) loaded by eddl.load:
    EDDL's own initialisation leaves a 26-conv net's output at 0.5 +- 1e-6, where any two engines agree."""
    from pyeddl import eddl

    net = eddl_build(segnet_in_pyeddl(widths, size, bn=bn), True)
    seeded = os.path.join(str(folder), f"seeded-{len(widths)}-{widths[0]}-{int(bn)}.bin")
    write_records(seeded, records_from_layers(random_layers(widths, bn=bn, seed=5)))
    eddl.load(net, seeded, "bin")
    eddl.set_mode(net, 0)
    return net, seeded


@pytest.fixture(scope="module")
def pair_runs(synth_small, tmp_path_factory):
    """The shipped .bin on every loader x engine pair at N = 1, 2, 3 (batch 4: every shard has a short tail)."""
    need_ecvl()
    base = tmp_path_factory.mktemp("pairs")
    out = {}
    for loader, engine in PAIRS:
        for n in (1, 2, 3):
            d = str(base / f"{loader}-{engine}-{n}")
            proc = mpirun(n, "run", "--dataset", synth_small, "--model", "demo", "--out", d, "--split", "all",
                          "--batch-size", "4", "--loader", loader, "--engine", engine, timeout=300)
            assert proc.returncode == 0, proc.stderr
            out[(loader, engine, n)] = d
    return out


def reference_scores(dataset_path: str) -> dict[int, tuple[float, float]]:
    """Upstream's way, in plain pyecvl + pyeddl: DLDataset (resize linear, /255), SegNet built in pyeddl,
    eddl.load of the .bin, forward in test mode, BinaryIoU-style scores at network resolution."""
    from pyecvl import ecvl

    ds = load_dataset(dataset_path)
    chain = ecvl.SequentialAugmentationContainer([ecvl.AugResizeDim([192, 192], ecvl.InterpolationType.linear),
                                                  ecvl.AugToFloat32(255, divisor_gt=255)])
    splits = list(ds.splits)
    d = ecvl.DLDataset(dataset_path, 1, ecvl.DatasetAugmentations([chain] * len(splits)), ecvl.ColorType.RGB,
                       ecvl.ColorType.GRAY)
    net = eddl_build(segnet_in_pyeddl([w.shape[0] for w in read_records(demo_model("bin"))[::2]], 192), True)
    from pyeddl import eddl
    from pyeddl.tensor import Tensor

    eddl.load(net, demo_model("bin"), "bin")
    eddl.set_mode(net, 0)
    out = {}
    for s, name in enumerate(splits):
        d.SetSplit(s)
        d.ResetBatch(s, False)
        x, y = Tensor([1, 3, 192, 192]), Tensor([1, 1, 192, 192])
        for index in d.GetSplit():
            d.LoadBatch(x, y)
            prob = eddl_forward(net, np.array(x))[0, 0]
            p, g = prob >= 0.5, np.array(y)[0, 0] >= 0.5
            inter, union = float((p & g).sum()), float((p | g).sum())
            out[int(index)] = ((inter + 1e-6) / (union + 1e-6), (2 * inter + 1e-6) / (p.sum() + g.sum() + 1e-6))
        assert name in ds.splits
    return out


def test_every_pair_and_every_n_gives_the_same_scores_as_plain_pyecvl_pyeddl(pair_runs, synth_small):
    want = reference_scores(synth_small)
    assert sorted(want) == list(range(13))
    for (loader, engine, n), d in pair_runs.items():
        got = rows(d)
        assert [int(r["index"]) for r in got] == list(range(13)), (loader, engine, n)
        for r in got:
            iou, dice = want[int(r["index"])]
            assert r["status"] == "ok"
            assert abs(float(r["iou"]) - iou) <= 1e-6, (loader, engine, n, r)
            assert abs(float(r["dice"]) - dice) <= 1e-6, (loader, engine, n, r)
        s = summary(d)
        assert (s["backend"]["loader"], s["backend"]["engine"]) == (loader, engine)
        assert s["images"]["scored"] == 13 and s["world_size"] == n


def test_backend_shorthand_names_the_pure_pairs(pair_runs):
    assert summary(pair_runs[("ecvl", "eddl", 2)])["backend"]["backend"] == "ecvl"
    assert summary(pair_runs[("opencv", "onnx", 2)])["backend"]["backend"] == "onnx"
    assert summary(pair_runs[("ecvl", "onnx", 2)])["backend"]["backend"] == "ecvl+onnx"


def test_dynamic_schedule_with_the_ecvl_loader_and_the_eddl_engine(pair_runs, synth_small, tmp_path):
    d = str(tmp_path / "dyn")
    proc = mpirun(3, "run", "--dataset", synth_small, "--model", "demo", "--out", d, "--split", "all",
                  "--batch-size", "2", "--schedule", "dynamic", "--backend", "ecvl", timeout=300)
    assert proc.returncode == 0, proc.stderr
    ref = {r["index"]: r for r in rows(pair_runs[("ecvl", "eddl", 1)])}
    for r in rows(d):
        assert abs(float(r["dice"]) - float(ref[r["index"]]["dice"])) <= 1e-6


def test_shipped_onnx_imports_into_eddl_and_scores_as_the_bin(pair_runs, synth_small, tmp_path):
    d = str(tmp_path / "onnx-in-eddl")
    proc = mpirun(2, "run", "--dataset", synth_small, "--model", "demo-onnx", "--out", d, "--split", "all",
                  "--engine", "eddl", timeout=300)
    assert proc.returncode == 0, proc.stderr
    ref = {r["index"]: r for r in rows(pair_runs[("ecvl", "eddl", 1)])}
    for r in rows(d):
        assert abs(float(r["iou"]) - float(ref[r["index"]]["iou"])) <= 1e-6
    assert summary(d)["backend"]["arch"] == "onnx-import"


@pytest.mark.parametrize("bn", [False, True], ids=["segnet", "segnet-bn"])
def test_eddl_saved_full_width_segnet_converts_to_the_same_probabilities(bn, tmp_path):
    """A full-width SegNet(-BN) saved by real eddl.save: our ONNX conversion's probabilities equal EDDL's
    forward."""
    from pyeddl import eddl

    from mpi_infer.models.segnet import segnet_widths

    size = 32
    net, seeded = seeded_segnet(segnet_widths(), size, bn, tmp_path)
    path = str(tmp_path / "segnet.bin")
    eddl.save(net, path, "bin")
    if not bn:
        assert os.path.getsize(path) == 117_711_580  # reference 4: the full SegNet record stream
    assert Path(path).read_bytes() == Path(seeded).read_bytes()  # EDDL writes the very bytes our writer does
    x = np.random.default_rng(1).random((3, 3, size, size), dtype=np.float32)
    want = eddl_forward(net, x)
    arch = "segnet-bn" if bn else "segnet"
    model = build_onnx(layers_from_records(read_records(path), arch), size, size)
    got = ort.InferenceSession(model.SerializeToString()).run(None, {"input": x})[0]
    assert np.abs(got - want).max() <= 1e-4
    assert float(want.std()) > 0.01  # a live output, not a saturated or constant one


def test_a_bin_our_writer_produced_loads_in_real_eddl(tmp_path):
    from pyeddl import eddl

    from mpi_infer.models.segnet import segnet_widths

    layers = random_layers(segnet_widths(8), seed=3)
    path = str(tmp_path / "ours.bin")
    write_records(path, records_from_layers(layers))
    net = eddl_build(segnet_in_pyeddl(segnet_widths(8), 64), True)
    eddl.load(net, path, "bin")
    eddl.set_mode(net, 0)
    x = np.random.default_rng(2).random((2, 3, 64, 64), dtype=np.float32)
    assert np.abs(eddl_forward(net, x) - forward_numpy(layers, x)).max() <= 1e-4


def test_eddl_exported_onnx_runs_on_both_engines(tmp_path):
    """eddl.save_net_to_onnx_file's graph: the ONNX engine and the EDDL engine (its importer) agree."""
    from pyeddl import eddl

    from mpi_infer.engines.eddl import EddlEngine
    from mpi_infer.engines.onnx import OnnxEngine
    from mpi_infer.models.segnet import segnet_widths
    from mpi_infer.profiles import get_profile
    from mpi_infer.tasks.output import OutputSpec
    from mpi_infer.tasks.segmentation import SegmentationHead

    net, _ = seeded_segnet(segnet_widths(8), 64, True, tmp_path)
    path = str(tmp_path / "eddl.onnx")
    eddl.save_net_to_onnx_file(net, path)
    profile = get_profile("segnet-192", size=(64, 64))
    x = np.random.default_rng(4).random((3, 3, 64, 64), dtype=np.float32)
    want = eddl_forward(net, x)[:, 0]
    by_onnx = OnnxEngine(path, profile, SegmentationHead(OutputSpec(), profile), threads=1).predict(x)
    by_eddl = EddlEngine(path, profile, SegmentationHead(OutputSpec(), profile), threads=1).predict(x)
    assert np.abs(by_onnx - want).max() <= 1e-4
    assert np.abs(by_eddl - want).max() <= 1e-4
    assert float(want.std()) > 0.01


def test_corrupt_onnx_on_the_eddl_engine_is_a_model_error_not_a_crash(synth_small, tmp_path):
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"\x08\x07 this is not a protobuf model" * 10)
    proc = mpirun(2, "run", "--dataset", synth_small, "--model", str(bad), "--out", str(tmp_path / "o"),
                  "--engine", "eddl")
    assert proc.returncode == 11, proc.stderr
    assert f"{bad}: EDDL cannot parse this ONNX file" in proc.stderr
    assert proc.stderr.count("cannot parse") == 1  # reported once, by rank 0
    assert not (tmp_path / "o").exists() or not os.listdir(tmp_path / "o")


def test_gpu_on_a_cpu_only_eddl_is_a_configuration_error(synth_small, tmp_path):
    env = {"CUDA_VISIBLE_DEVICES": "0"}  # pretend a GPU is visible: EDDL's CPU build must still refuse
    proc = mpirun(1, "run", "--dataset", synth_small, "--model", "demo", "--out", str(tmp_path / "o"),
                  "--engine", "eddl", "--gpu", env=env)
    assert proc.returncode == 12, proc.stderr
    assert "--gpu: this EDDL build cannot use a GPU" in proc.stderr
    proc = mpirun(1, "run", "--dataset", synth_small, "--model", "demo", "--out", str(tmp_path / "o2"),
                  "--engine", "eddl", "--gpu", env={"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 12 and "no GPU is visible" in proc.stderr


def test_both_loaders_agree_with_mean_std(synth_small, tmp_path):
    """The unet-224 recipe's mean/std, at the demo model's size, linear: both loaders give the same scores.
    (With cubic they need not: pip's OpenCV 5.0 and the Debian OpenCV 4.6 that ECVL links differ by one grey
    level on about 5% of pixels after INTER_CUBIC on uint8; the README says so.)"""
    got = {}
    for loader in ("ecvl", "opencv"):
        d = str(tmp_path / loader)
        proc = mpirun(2, "run", "--dataset", synth_small, "--model", "demo-onnx", "--out", d, "--split", "all",
                      "--profile", "unet-224", "--size", "192", "192", "--interp", "linear", "--loader", loader)
        assert proc.returncode == 0, proc.stderr
        got[loader] = rows(d)
        assert summary(d)["profile"]["mean"] == [0.6681, 0.5301, 0.5247]
    for a, b in zip(got["ecvl"], got["opencv"]):
        assert a["index"] == b["index"] and abs(float(a["dice"]) - float(b["dice"])) <= 1e-6


@pytest.fixture()
def awkward_dataset(synth_small, tmp_path):
    """13 images: two without masks, one undecodable, one truncated PNG, one JPEG cut inside its scan."""
    root = tmp_path / "awkward"
    shutil.copytree(os.path.dirname(synth_small), root)
    ds = load_dataset(str(root / "dataset.yml"))
    s = [ds.sample(i) for i in range(len(ds))]
    with open(s[1].locations[0], "wb") as fh:
        fh.write(b"\xff\xd8 not really a jpeg")  # ECVL's loader thread would std::terminate on it
    png, jpg = Path(s[2].label_path), Path(s[3].locations[0])
    png.write_bytes(png.read_bytes()[: png.stat().st_size // 2])  # truncated PNG mask
    jpg.write_bytes(jpg.read_bytes()[: int(jpg.stat().st_size * 0.8)])  # decodes with grey rows, as in ECVL
    text = (root / "dataset.yml").read_text()
    for k in (5, 9):  # drop two masks: predicted only
        line = f"\n    label: {os.path.relpath(s[k].label_path, root)}"
        assert line in text
        text = text.replace(line, "")
    (root / "dataset.yml").write_text(text)
    return str(root / "dataset.yml")


@pytest.mark.parametrize("n", [1, 2, 3])
def test_ecvl_loader_isolates_bad_files_keeps_the_tail_and_unmasked_images(awkward_dataset, tmp_path, n):
    results = {}
    for loader in ("ecvl", "opencv"):
        d = str(tmp_path / loader)
        proc = mpirun(n, "run", "--dataset", awkward_dataset, "--model", "demo", "--out", d, "--split", "all",
                      "--batch-size", "3", "--loader", loader)
        assert proc.returncode == 3, proc.stderr  # partial: the run went on
        results[loader] = {int(r["index"]): r for r in rows(d)}
    got = results["ecvl"]
    assert sorted(got) == list(range(13))
    assert got[1]["status"] == "failed" and "cannot be decoded" in got[1]["error"]
    assert got[2]["status"] == "failed" and "truncated PNG" in got[2]["error"]
    assert got[3]["status"] == "ok"
    assert got[5]["status"] == got[9]["status"] == "unscored"
    for i, r in got.items():  # the same statuses and scores as our OpenCV loader
        assert r["status"] == results["opencv"][i]["status"], (i, r, results["opencv"][i])
        if r["dice"]:
            assert abs(float(r["dice"]) - float(results["opencv"][i]["dice"])) <= 1e-6


@pytest.mark.parametrize("arch", ["vgg16", "lenet"])
def test_eddl_saved_classifiers_convert_to_the_same_probabilities(arch, tmp_path):
    """A narrow VGG16 and LeNet built in pyeddl (the use case's layer pattern), He-scaled weights loaded and
    then saved by real eddl.save: our ONNX conversion's class probabilities equal EDDL's forward."""
    from pyeddl import eddl

    from mpi_infer.models.classifiers import classifier_eddl, random_classifier

    size = 64 if arch == "lenet" else 32
    widths = [8, 16] if arch == "lenet" else [4, 4, 8, 8, 8, 8, 8, 16, 16, 16, 16, 16, 16]
    seed_net = random_classifier(arch, widths, [32] if arch == "lenet" else [24, 24], 8, size, size, seed=9)
    seeded = str(tmp_path / "seeded.bin")
    write_records(seeded, records_from_classifier(seed_net))
    in_ = eddl.Input([3, size, size])
    net = eddl.Model([in_], [classifier_eddl(in_, seed_net)])
    eddl.build(net, eddl.adam(0.001), ["softmax_cross_entropy"], ["categorical_accuracy"], eddl.CS_CPU(2), True)
    eddl.load(net, seeded, "bin")
    eddl.set_mode(net, 0)
    path = str(tmp_path / f"{arch}.bin")
    eddl.save(net, path, "bin")
    assert Path(path).read_bytes() == Path(seeded).read_bytes()  # EDDL's layout is our writer's
    x = np.random.default_rng(3).random((4, 3, size, size), dtype=np.float32)
    want = eddl_forward(net, x)
    model = build_classifier_onnx(classifier_from_records(read_records(path), arch), size, size)
    got = ort.InferenceSession(model.SerializeToString()).run(None, {"input": x})[0]
    assert got.shape == (4, 8) and np.abs(got - want).max() <= 1e-4
    assert float(want.std()) > 0.01


def test_classification_on_the_eddl_engine_equals_the_onnx_engine(tmp_path):
    from mpi_infer.data.synth import SynthSpec, make_classification_dataset

    data = make_classification_dataset(str(tmp_path / "data"), SynthSpec(n=11, seed=3))
    got = {}
    for loader, engine in PAIRS:
        d = str(tmp_path / f"{loader}-{engine}")
        proc = mpirun(2, "run", "--dataset", data, "--model", "demo-classifier", "--out", d, "--split", "all",
                      "--loader", loader, "--engine", engine, "--batch-size", "3", timeout=300)
        assert proc.returncode == 0, proc.stderr
        got[(loader, engine)] = rows(d)
    ref = got[("opencv", "onnx")]
    for key, rs in got.items():
        for a, b in zip(rs, ref):
            assert (a["index"], a["label"], a["predicted"]) == (b["index"], b["label"], b["predicted"]), key
            assert abs(float(a["probability"]) - float(b["probability"])) <= 1e-4, key
