"""Loaders x engines: what needs no pyecvl is tested always; the real DLDataset and EDDL paths run where pyecvl
and pyeddl import (a DeepHealth image or the user's own install; MPI_INFER_REQUIRE_ECVL=1 requires them there),
and skip saying why elsewhere, CI included."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mpi_infer.data.dataset import build_dataset, dump_document, load_dataset
from mpi_infer.data.worklist import WorkItem
from mpi_infer.data.yamltext import parse_yaml_text
from mpi_infer.engines.eddl import gpu_flags
from mpi_infer.errors import ConfigError
from mpi_infer.loaders.ecvl import NOLABEL, augmentation_spec, batch_plan, shard_document
from mpi_infer.profiles import get_profile
from mpi_infer.stages.stack import Stack, choose_stack, ecvl_available, pyecvl_available


def test_shard_yaml_for_dldataset(tmp_path):
    items = [WorkItem(7, "test", ("/d/a.jpg",), "/d/a_gt.png"), WorkItem(2, "test", ("/d/b.jpg",), None),
             WorkItem(9, "validation", ("/d/c.jpg",), "/d/c_gt.png"), WorkItem(3, "test", ("/d/e.jpg",), "/d/e.png")]
    doc, splits = shard_document(items, "shard")
    assert splits == ["masked", NOLABEL]  # two splits at most; masked images first (DLDataset sizes from #0)
    assert doc["split"] == {"masked": [0, 1, 2], NOLABEL: [3]}
    path = tmp_path / "shard.yml"
    path.write_text(dump_document(doc))
    ds = load_dataset(str(path))  # a valid ECVL dataset, with absolute paths
    assert ds.sample(0).locations == ("/d/a.jpg",) and ds.sample(0).label_path == "/d/a_gt.png"
    assert ds.sample(3).label_path is None and ds.sample(3).locations == ("/d/b.jpg",)
    assert build_dataset(parse_yaml_text(dump_document(doc), "x"), str(path)).task == "segmentation"


@pytest.mark.parametrize("name", ["segnet-192", "unet-224", "cpp-512"])
def test_ecvl_resizes_and_numpy_normalises_as_the_profile_says(name):
    import numpy as np

    from mpi_infer.loaders.opencv import normalise, to_tensor

    p = get_profile(name)
    assert augmentation_spec(p) == [("AugResizeDim", ([p.width, p.height], p.interpolation))]  # dims are [W, H]
    img = np.random.default_rng(0).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    x = normalise(img.transpose(2, 0, 1)[None].astype(np.float32), p)  # as ImageToTensor gives it
    assert np.array_equal(x, to_tensor([img], p))  # the OpenCV loader's arithmetic, bit for bit
    want = img.astype(np.float64) / 255
    if p.mean is not None:
        want = (want - np.array(p.mean)) / np.array(p.std)
    assert np.abs(x[0].transpose(1, 2, 0) - want).max() < 1e-5


def test_gpu_pick_is_local_rank_mod_visible():
    assert gpu_flags(0, 2) == [1, 0] and gpu_flags(3, 2) == [0, 1] and gpu_flags(5, 4) == [0, 1, 0, 0]
    with pytest.raises(ConfigError):
        gpu_flags(0, 0)


def test_tail_is_a_short_batch_not_dropped():
    assert batch_plan(600, 8) == [8] * 75
    assert batch_plan(150, 24) == [24] * 6 + [6]  # upstream's LoadBatch loop lost these 6
    assert batch_plan(3, 8) == [3] and batch_plan(0, 8) == []


def test_backend_is_shorthand_for_the_pure_pairs():
    for backend, pair in (("onnx", ("opencv", "onnx")), ("ecvl", ("ecvl", "eddl"))):
        if backend == "ecvl" and not ecvl_available():
            continue
        stack = choose_stack(backend=backend, model="m.onnx")
        assert (stack.loader, stack.engine) == pair and stack.name == backend
    with pytest.raises(ConfigError, match="shorthand"):
        choose_stack("opencv", "auto", backend="onnx")
    assert Stack("ecvl", "onnx", "", "").name == "ecvl+onnx"


def test_auto_picks_ecvl_loading_and_onnx_compute_and_says_why():
    stack = choose_stack(model="m.bin")
    assert stack.engine == "onnx" and stack.engine_why == "auto: the .bin converts to ONNX for ONNX Runtime"
    if pyecvl_available():
        assert (stack.loader, stack.loader_why) == ("ecvl", "auto: pyecvl imports")
    else:
        assert (stack.loader, stack.loader_why) == ("opencv", "auto: pyecvl not installed")


@pytest.mark.skipif(ecvl_available(), reason="pyecvl and pyeddl are installed here")
def test_without_the_stack_ecvl_choices_are_configuration_errors(synth_small, tmp_path):
    with pytest.raises(ConfigError, match="needs pyecvl"):
        choose_stack("ecvl")
    with pytest.raises(ConfigError, match="needs pyeddl"):
        choose_stack(engine="eddl")
    proc = subprocess.run([sys.executable, "-m", "mpi_infer", "run", "--dataset", synth_small, "--model", "demo",
                           "--out", str(tmp_path / "o"), "--backend", "ecvl"], capture_output=True, text=True)
    assert proc.returncode == 12
    assert "needs pyecvl" in proc.stderr
