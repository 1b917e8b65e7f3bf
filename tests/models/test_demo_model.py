"""The shipped demo model: small, both formats agree, and good on a synthetic set it never saw."""

from __future__ import annotations

import os

import numpy as np

from mpi_infer.data.dataset import load_dataset
from mpi_infer.data.synth import SynthSpec, make_dataset
from mpi_infer.data.worklist import WorkItem
from mpi_infer.engines.onnx import OnnxEngine
from mpi_infer.models.eddl_bin import read_records
from mpi_infer.models.files import demo_model
from mpi_infer.models.segnet import build_onnx, layers_from_records
from mpi_infer.profiles import get_profile
from mpi_infer.stages.runner import run_items
from mpi_infer.tasks.output import OutputSpec
from mpi_infer.tasks.segmentation import SegmentationHead, aggregate


def test_demo_model_files_are_small_and_the_same_network():
    onnx_path, bin_path = demo_model("onnx"), demo_model("bin")
    assert os.path.getsize(onnx_path) < 2 * 1024 * 1024
    assert os.path.getsize(bin_path) < 2 * 1024 * 1024
    layers = layers_from_records(read_records(bin_path), "segnet")
    rebuilt = build_onnx(layers, 192, 192, name="demo_segnet").SerializeToString()
    with open(onnx_path, "rb") as fh:
        assert fh.read() == rebuilt  # the shipped ONNX is exactly what `convert` makes of the .bin


def test_demo_model_reaches_dice_085_on_a_fresh_seed(tmp_path):
    path = make_dataset(str(tmp_path / "fresh"), SynthSpec(n=48, seed=4242))
    ds = load_dataset(path)
    items = [WorkItem(i, "all", ds.sample(i).locations, ds.sample(i).label_path) for i in range(len(ds))]
    profile = get_profile("segnet-192")
    backend = OnnxEngine(demo_model("onnx"), profile, SegmentationHead(OutputSpec(), profile), threads=2)
    records = run_items(items, backend.predict, profile, batch_size=8)
    summary = aggregate(records)
    assert summary["images"]["scored"] == 48
    assert summary["metrics"]["mean_dice"] >= 0.85, summary
    assert np.isfinite(summary["metrics"]["global_iou"])
