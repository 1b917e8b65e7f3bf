"""The pyecvl/pyeddl backend. What needs no pyecvl is tested always; the real DLDataset + EDDL run is
tested only where pyecvl and pyeddl import (the DeepHealth images), and skips saying why elsewhere."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mpi_infer.backends import choose_backend, ecvl_available
from mpi_infer.backends.ecvl import NOLABEL, augmentation_spec, batch_plan, gpu_flags, shard_document
from mpi_infer.dataset import build_dataset, dump_document, load_dataset, parse_yaml_text
from mpi_infer.errors import ConfigError
from mpi_infer.loader import WorkItem
from mpi_infer.profiles import get_profile

NO_ECVL = "pyecvl and pyeddl are not installed (they need the ECVL/EDDL C++ libraries; DeepHealth image only)"


def test_shard_yaml_for_dldataset(tmp_path):
    items = [WorkItem(7, "test", ("/d/a.jpg",), "/d/a_gt.png"), WorkItem(2, "test", ("/d/b.jpg",), None),
             WorkItem(9, "validation", ("/d/c.jpg",), "/d/c_gt.png"), WorkItem(3, "test", ("/d/e.jpg",), "/d/e.png")]
    doc, splits = shard_document(items, "shard")
    assert splits == ["test", "test" + NOLABEL, "validation"]
    assert doc["split"] == {"test": [0, 3], "test" + NOLABEL: [1], "validation": [2]}
    path = tmp_path / "shard.yml"
    path.write_text(dump_document(doc))
    ds = load_dataset(str(path))  # a valid ECVL dataset, with absolute paths
    assert ds.sample(0).locations == ("/d/a.jpg",) and ds.sample(0).label_path == "/d/a_gt.png"
    assert ds.sample(1).label_path is None
    assert build_dataset(parse_yaml_text(dump_document(doc), "x"), str(path)).task == "segmentation"


@pytest.mark.parametrize("name", ["segnet-192", "unet-224", "cpp-512"])
def test_augmentations_follow_the_profile(name):
    p = get_profile(name)
    spec = augmentation_spec(p)
    assert spec[0] == ("AugResizeDim", ([p.width, p.height], p.interpolation))  # ECVL dims are [W, H]
    assert spec[1] == ("AugToFloat32", (255, 255))
    if p.mean is None:
        assert len(spec) == 2
    else:
        assert spec[2] == ("AugNormalize", (list(p.mean), list(p.std)))


def test_gpu_pick_is_local_rank_mod_visible():
    assert gpu_flags(0, 2) == [1, 0] and gpu_flags(3, 2) == [0, 1] and gpu_flags(5, 4) == [0, 1, 0, 0]
    with pytest.raises(ConfigError):
        gpu_flags(0, 0)


def test_tail_is_a_short_batch_not_dropped():
    assert batch_plan(600, 8) == [8] * 75
    assert batch_plan(150, 24) == [24] * 6 + [6]  # upstream's LoadBatch loop lost these 6
    assert batch_plan(3, 8) == [3] and batch_plan(0, 8) == []


@pytest.mark.skipif(ecvl_available(), reason="pyecvl is installed here")
def test_auto_falls_back_to_onnx_and_says_why(synth_small, tmp_path):
    assert choose_backend("auto") == ("onnx", "auto: pyecvl/pyeddl not installed, using ONNX Runtime")
    with pytest.raises(ConfigError, match="needs pyecvl and pyeddl"):
        choose_backend("ecvl")
    proc = subprocess.run([sys.executable, "-m", "mpi_infer", "run", "--dataset", synth_small, "--model", "demo",
                           "--out", str(tmp_path / "o"), "--backend", "ecvl"], capture_output=True, text=True)
    assert proc.returncode == 12
    assert "needs pyecvl and pyeddl" in proc.stderr


@pytest.mark.skipif(not ecvl_available(), reason=NO_ECVL)
@pytest.mark.parametrize("model", ["demo", "demo-onnx"])
def test_ecvl_backend_matches_onnx(model, synth_small, tmp_path):
    from conftest import mpirun

    from mpi_infer.results import read_per_image_csv

    outs = {}
    for backend in ("ecvl", "onnx"):
        out = str(tmp_path / backend)
        proc = mpirun(2, "run", "--dataset", synth_small, "--model", model, "--out", out, "--split", "all",
                      "--backend", backend, "--batch-size", "4")
        assert proc.returncode == 0, proc.stderr
        outs[backend] = read_per_image_csv(os.path.join(out, "per_image.csv"))
    assert len(outs["ecvl"]) == len(outs["onnx"]) == 13
    for a, b in zip(outs["ecvl"], outs["onnx"]):
        assert a["index"] == b["index"] and a["status"] == b["status"]
        assert abs(float(a["dice"]) - float(b["dice"])) < 0.01  # EDDL vs ONNX Runtime float paths
